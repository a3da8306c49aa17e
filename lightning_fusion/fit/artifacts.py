"""What a tested run keeps in MLflow: summary, splits, predictions, intervals, curves, report, explanations."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix

from lightning_fusion.config import (
    EvaluationConfig,
)
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.evaluation.presence import presence_pattern_metrics, presence_patterns
from lightning_fusion.evaluation.report import presence_section, robustness_section, run_report
from lightning_fusion.evaluation.robustness import robustness_figure
from lightning_fusion.evaluation.scoring import evaluate, log_evaluation, png_bytes
from lightning_fusion.evaluation.threshold import THRESHOLDED_METRICS, OperatingPoint, operating_point_metrics
from lightning_fusion.fit.checkpoints import AtomicCheckpointIO
from lightning_fusion.fit.results import Predictions
from lightning_fusion.lit import CHECKPOINT_KEY, FusionLitModule
from lightning_fusion.metrics import confusion_matrix_figure, report_table
from lightning_fusion.tracking import RunLogger


def _log_fusion_weights(logger: RunLogger, module: FusionLitModule) -> None:
    weights = module.model.fusion.overall_weights()  # late_weighted: the tested (best) checkpoint's weights
    if weights is not None:
        logger.log_metrics({f"fusion/weight/{m}": w for m, w in weights.items()})
        logger.log_dict(weights, "fusion_weights.json")


def log_tested_model(
    logger: RunLogger,
    classes: list[str],
    test: Predictions,
    summary: dict[str, Any],
    evaluation: EvaluationConfig,
    val: Predictions | None = None,
    title: str = "",
    point: OperatingPoint | None = None,
    present: Mapping[str, np.ndarray] | None = None,
    modalities: Sequence[str] = (),
    robustness: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, float]:
    """Everything a tested model's run keeps of its test set; returns the interval, calibration and (binary)
    operating-point metrics.

    Data summary and splits, predictions, confusion matrix, per-class report (classes decided at
    ``point`` for a binary model), bootstrap intervals, calibration, ROC / PR / decision curves,
    thresholded metrics at 0.5 and at ``point``, and ``report.html`` with all of it. With ``present``
    (the test patients' presence flags of ``modalities``, in ``test`` order) and some patient lacking a
    modality, also the metrics per presence pattern (``presence_metrics.json`` and a report section). With
    ``robustness`` (rows of :func:`~lightning_fusion.evaluation.robustness.robustness_curve`), ``robustness.csv``,
    ``robustness.png`` and a report section.
    """
    log_data_summary(logger, summary)
    predicted = point.predict(test.probs) if point is not None else test.probs.argmax(axis=1)
    images = log_test_predictions(logger, classes, test.labels, test.probs, test.patient_ids, predicted)
    at_point = operating_point_metrics(point, test.labels, test.probs) if point is not None else {}
    logger.log_metrics(at_point)
    result = evaluate(
        test.labels, test.probs, classes, evaluation, (val.labels, val.probs) if val is not None else None
    )
    images |= log_evaluation(logger, result)
    other: dict[str, Any] = {"accuracy, exact binomial (Clopper-Pearson)": result.exact_accuracy}
    other |= {"ECE": result.ece, "Brier": result.brier} | (
        {"temperature (fitted on val)": result.temperature}
        | {f"{k} after temperature": v for k, v in result.calibrated.items()}
        if result.temperature is not None
        else {}
    )
    if point is not None:
        where = "fitted on validation" if point.fitted_on == "validation" else "fixed"
        other[f"decision threshold on P({point.positive_class}), {point.method} ({where})"] = point.threshold
        for name in THRESHOLDED_METRICS:
            other[f"{name} at 0.5 / at the threshold"] = (
                f"{at_point[f'test/at_0.5/{name}']:.3f} / {at_point[f'test/at_threshold/{name}']:.3f}"
            )
    extra = []
    if present and not all(np.asarray(flags, dtype=bool).all() for flags in present.values()):
        patterns = presence_patterns(present, list(modalities) or sorted(present), len(test.labels))
        rows = presence_pattern_metrics(
            test.labels,
            test.probs,
            patterns,
            classes,
            evaluation.bootstrap_resamples,
            evaluation.bootstrap_seed,
            evaluation.confidence,
        )
        logger.log_dict(
            [row | {"intervals": {m: vars(i) for m, i in row["intervals"].items()}} for row in rows],
            "presence_metrics.json",
        )
        extra.append(("Test metrics by presence pattern", presence_section(rows, evaluation.confidence)))
    if robustness:
        logger.log_frame_csv(pd.DataFrame(list(robustness)), "robustness.csv")
        figure = robustness_figure(robustness, len(test.labels))
        logger.log_figure(figure, "robustness.png")
        extra.append(("Robustness to a missing modality", robustness_section(robustness, png_bytes(figure))))
        plt.close(figure)
    logger.log_text(
        run_report(
            title,
            summary,
            result.intervals,
            other,
            images,
            evaluation.confidence,
            subtitle=f"MLflow run {logger.run_id}",
            extra_sections=extra,
        ),
        "report.html",
    )
    return result.metrics() | at_point


def log_operating_point(logger: RunLogger, point: OperatingPoint, checkpoint: str) -> None:
    """The operating point as the run's param ``operating_point.threshold`` and ``operating_point.json``, and in
    the best checkpoint (``lightning_fusion.operating_point``), which predict, serving and the web page read."""
    logger.log_params({"operating_point.threshold": point.threshold, "operating_point.method": point.method})
    logger.log_dict(point.to_dict(), "operating_point.json")
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state[CHECKPOINT_KEY]["operating_point"] = point.to_dict()
        AtomicCheckpointIO().save_checkpoint(state, checkpoint)  # a kill mid-write keeps the old file


def log_explanations(logger: RunLogger, module: FusionLitModule, datamodule: MultimodalDataModule, count: int) -> None:
    """``explanations/`` artifacts of the first ``count`` test patients, with the tested (best) weights."""
    from lightning_fusion.explain.files import explain_patients
    from lightning_fusion.predict.trained_model import feature_names

    test = datamodule.datasets["test"]
    ids = test.patient_ids[:count]
    arrays = {m: test.arrays[m][: len(ids)] for m in module.modalities}
    present = {m: flags[: len(ids)] for m, flags in test.present.items() if m in module.modalities} or None
    names = feature_names(datamodule.preprocessors)
    with tempfile.TemporaryDirectory() as folder:
        explain_patients(module, ids, arrays, names, Path(folder), present)
        logger.log_folder(folder, "explanations")


def log_data_summary(logger: RunLogger, summary: dict[str, Any]) -> None:
    """``data_summary.json`` (counts, exclusions, fitted preprocessing) and ``splits.json`` (patient ids)."""
    logger.log_dict({k: v for k, v in summary.items() if k != "splits"}, "data_summary.json")
    logger.log_dict(summary["splits"], "splits.json")


def log_test_predictions(
    logger: RunLogger,
    classes: list[str],
    y_true: np.ndarray,
    probs: np.ndarray,
    patient_ids: np.ndarray,
    predicted: np.ndarray | None = None,
) -> dict[str, bytes]:
    """Confusion matrix (JSON + PNG), per-class report and ``test_predictions.csv`` of a tested model;
    ``predicted`` class indices (default: the most probable class)."""
    y_pred = probs.argmax(axis=1) if predicted is None else predicted
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    logger.log_dict(
        {"classes": classes, "rows": "true", "columns": "predicted", "matrix": matrix}, "confusion_matrix.json"
    )
    figure = confusion_matrix_figure(matrix, classes)
    logger.log_figure(figure, "confusion_matrix.png")
    image = png_bytes(figure)
    plt.close(figure)
    text, table = report_table(y_true, y_pred, classes)
    logger.log_text(text, "classification_report.txt")
    logger.log_dict(table, "classification_report.json")
    frame = pd.DataFrame(
        {"patient_id": patient_ids, "true": np.asarray(classes)[y_true], "predicted": np.asarray(classes)[y_pred]}
    )
    for i, cls in enumerate(classes):
        frame[f"prob_{cls}"] = probs[:, i]
    logger.log_frame_csv(frame, "test_predictions.csv")
    return {"confusion_matrix.png": image}
