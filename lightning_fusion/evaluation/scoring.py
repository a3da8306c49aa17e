"""What a tested model's predictions say, with their uncertainty: the glue between :mod:`~lightning_fusion.evaluation`
and a run.

:func:`evaluate` turns test labels and probabilities (and, for temperature scaling, validation
ones) into bootstrap intervals, calibration figures, ROC / precision-recall curves and decision
curves (net benefit, :mod:`lightning_fusion.evaluation.decision_curve`);
:func:`log_evaluation` records them in an MLflow run:

- metrics ``test/<metric>_ci_low`` / ``test/<metric>_ci_high`` for accuracy, balanced accuracy,
  macro F1 and AUROC; ``test/ece``, ``test/brier``; with temperature scaling also
  ``test/temperature``, ``test/ece_calibrated``, ``test/brier_calibrated``;
- ``roc.png``, ``pr.png``, ``decision_curve.png``, ``reliability.png`` and their points in
  ``curves.json`` (keys ``roc``, ``pr``, ``decision``) / ``calibration.json``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from lightning_fusion.config import EvaluationConfig
from lightning_fusion.evaluation import (
    Interval,
    bootstrap_intervals,
    brier_score,
    exact_accuracy_interval,
    expected_calibration_error,
)
from lightning_fusion.evaluation.calibration import apply_temperature, fit_temperature, reliability_bins
from lightning_fusion.evaluation.decision_curve import decision_curve_figure, decision_curves


@dataclass
class Evaluation:
    """Intervals, calibration and curves of one model's test predictions."""

    intervals: dict[str, Interval]
    ece: float
    brier: float
    reliability: dict[str, list[float]]
    curves: dict[str, dict[str, dict[str, Any]]]  # roc|pr|decision → class → points
    n_test: int
    exact_accuracy: Interval | None = None  # Clopper–Pearson: informative even when every patient is right
    temperature: float | None = None
    calibrated: dict[str, float] = field(default_factory=dict)  # ece, brier after temperature scaling

    def metrics(self, stage: str = "test") -> dict[str, float]:
        values = {}
        for name, interval in self.intervals.items():
            values[f"{stage}/{name}_ci_low"] = interval.low
            values[f"{stage}/{name}_ci_high"] = interval.high
        if self.exact_accuracy is not None:
            values[f"{stage}/accuracy_exact_ci_low"] = self.exact_accuracy.low
            values[f"{stage}/accuracy_exact_ci_high"] = self.exact_accuracy.high
        values[f"{stage}/ece"] = self.ece
        values[f"{stage}/brier"] = self.brier
        if self.temperature is not None:
            values[f"{stage}/temperature"] = self.temperature
            values |= {f"{stage}/{k}_calibrated": v for k, v in self.calibrated.items()}
        return {k: float(v) for k, v in values.items() if np.isfinite(v)}


def evaluate(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    config: EvaluationConfig,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> Evaluation:
    """Bootstrap intervals, calibration and curves of test ``probs`` ``(N, K)``.

    ``val`` (validation labels, probabilities) is needed for ``config.temperature_scaling``: the
    temperature is fitted on it alone and then applied to the test probabilities.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    intervals = bootstrap_intervals(labels, probs, config.bootstrap_resamples, config.bootstrap_seed, config.confidence)
    bins = reliability_bins(labels, probs, config.calibration_bins)
    evaluation = Evaluation(
        intervals=intervals,
        ece=expected_calibration_error(labels, probs, config.calibration_bins),
        brier=brier_score(labels, probs),
        reliability={k: np.nan_to_num(v, nan=-1.0).tolist() for k, v in bins.items()},
        curves=_curves(labels, probs, classes),
        n_test=len(labels),
        exact_accuracy=exact_accuracy_interval(labels, probs.argmax(axis=1), config.confidence),
    )
    if config.temperature_scaling:
        if val is None:
            raise ValueError("temperature scaling needs the validation predictions")
        temperature = fit_temperature(*val)
        scaled = apply_temperature(probs, temperature)
        evaluation.temperature = temperature
        evaluation.calibrated = {
            "ece": expected_calibration_error(labels, scaled, config.calibration_bins),
            "brier": brier_score(labels, scaled),
        }
    return evaluation


def _curves(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, dict[str, list]]]:
    """One-vs-rest ROC and precision-recall points per class present with both outcomes; decision curves."""
    curves: dict[str, dict[str, dict[str, Any]]] = {
        "roc": {},
        "pr": {},
        "decision": decision_curves(labels, probs, classes),
    }
    for k, name in enumerate(classes):
        positive = labels == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, thresholds = roc_curve(positive, probs[:, k])
        curves["roc"][name] = {
            "fpr": fpr.tolist(),
            "tpr": tpr.tolist(),
            "thresholds": np.nan_to_num(thresholds, posinf=1.0).tolist(),
            "auc": float(auc(fpr, tpr)),
        }
        precision, recall, pr_thresholds = precision_recall_curve(positive, probs[:, k])
        curves["pr"][name] = {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "thresholds": pr_thresholds.tolist(),
            "prevalence": float(positive.mean()),
        }
    return curves


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
def roc_figure(evaluation: Evaluation) -> Figure:
    figure, axes = plt.subplots(figsize=(5, 4.6))
    for name, points in evaluation.curves["roc"].items():
        axes.plot(points["fpr"], points["tpr"], label=f"{name} (AUC {points['auc']:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(
        xlabel="False positive rate", ylabel="True positive rate", title=f"ROC, one vs rest (n={evaluation.n_test})"
    )
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def pr_figure(evaluation: Evaluation) -> Figure:
    figure, axes = plt.subplots(figsize=(5, 4.6))
    for name, points in evaluation.curves["pr"].items():
        line = axes.step(points["recall"], points["precision"], where="post", label=name)[0]
        axes.axhline(points["prevalence"], color=line.get_color(), linestyle=":", linewidth=1)
    axes.set(xlabel="Recall", ylabel="Precision", ylim=(0, 1.05), title="Precision-recall (dotted: prevalence)")
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return figure


def decision_figure(evaluation: Evaluation) -> Figure:
    title = f"Decision curves (n={evaluation.n_test}; treat when P ≥ threshold)"
    return decision_curve_figure({"model": evaluation.curves.get("decision", {})}, title)


def reliability_figure(evaluation: Evaluation) -> Figure:
    bins = {k: np.asarray(v) for k, v in evaluation.reliability.items()}
    used = bins["count"] > 0
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 5.4), height_ratios=(3, 1), sharex=True)
    width = bins["upper"] - bins["lower"]
    top.bar(
        bins["lower"][used],
        bins["accuracy"][used],
        width=width[used],
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    top.set(
        ylabel="Accuracy", ylim=(0, 1), title=f"Reliability (ECE {evaluation.ece:.3f}, Brier {evaluation.brier:.3f})"
    )
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(bins["lower"], bins["count"], width=width, align="edge", edgecolor="black", color="grey")
    bottom.set(xlabel="Top-class confidence", ylabel="Patients", xlim=(0, 1))
    figure.tight_layout()
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def log_evaluation(logger: Any, evaluation: Evaluation, stage: str = "test", prefix: str = "") -> dict[str, bytes]:
    """Metrics (``<stage>/...``), figures and the points behind them (artifact names start with
    ``prefix``), into the logger's run; returns the figures as PNG bytes."""
    logger.log_metrics(evaluation.metrics(stage))
    logger.log_dict({k: vars(v) for k, v in evaluation.intervals.items()}, f"{prefix}intervals.json")
    logger.log_dict(evaluation.curves, f"{prefix}curves.json")
    logger.log_dict(
        {
            "ece": evaluation.ece,
            "brier": evaluation.brier,
            "bins": evaluation.reliability,
            "temperature": evaluation.temperature,
            "calibrated": evaluation.calibrated,
        },
        f"{prefix}calibration.json",
    )
    images = {}
    figures = [("roc.png", roc_figure), ("pr.png", pr_figure)]
    if evaluation.curves.get("decision"):  # some class with both outcomes among the patients
        figures.append(("decision_curve.png", decision_figure))
    for name, build in [*figures, ("reliability.png", reliability_figure)]:
        figure = build(evaluation)
        logger.log_figure(figure, prefix + name)
        images[prefix + name] = png_bytes(figure)
        plt.close(figure)
    return images
