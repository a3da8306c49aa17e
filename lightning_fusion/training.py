"""One training run from a resolved config: data → model → Lightning Trainer → test → MLflow.

Order matters for honesty: the data is read, validated, split and preprocessed, and the model is
built, *before* an MLflow run exists, so bad input leaves no run behind; once the run exists, any
error marks it FAILED. The test set is evaluated once, with the best checkpoint on ``val/loss``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from sklearn.metrics import confusion_matrix

from lightning_fusion.callbacks import BackboneWarmup
from lightning_fusion.config import (
    EvaluationConfig,
    ExperimentConfig,
    ModelConfig,
    TrainerConfig,
    flatten,
    to_dict,
    to_yaml,
)
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.evaluation import evaluate, log_evaluation, png_bytes
from lightning_fusion.lit import FusionLitModule
from lightning_fusion.metrics import confusion_matrix_figure, report_table
from lightning_fusion.report import run_report
from lightning_fusion.tracking import RunLogger, create_run_logger, resolve_tracking_uri

log = logging.getLogger(__name__)

_KIND_OF_UNIMODAL = {"image": "cnn", "vector": "ann", "signal": "signal"}


@dataclass
class Predictions:
    """Class probabilities of one split, one row per sample in dataset order (``index`` ascending)."""

    patient_ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray], patient_ids: list[str]) -> Predictions:
        order = np.argsort(outputs["index"])
        if not np.array_equal(outputs["index"][order], np.arange(len(patient_ids))):
            raise RuntimeError(f"predictions cover {len(order)} samples, the split has {len(patient_ids)}")
        return cls(np.asarray(patient_ids), outputs["label"][order], outputs["probs"][order].astype(np.float64))


@dataclass
class FitResult:
    """What a finished run produced."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    test_metrics: dict[str, float]
    best_checkpoint: str
    data_summary: dict[str, Any]
    tags: dict[str, str]
    # the best checkpoint's probabilities: "test" (rank 0, when tested), "val" with keep_predictions
    predictions: dict[str, Predictions] | None = None
    seconds: float = 0.0
    epochs: int = 0  # epochs trained
    model_logged: bool = False  # the pyfunc model is the run's ``model`` artifact


def model_kind(kinds: list[str]) -> str:
    """``cnn`` / ``ann`` / ``signal`` for one modality of that kind, ``fusion`` for several."""
    return _KIND_OF_UNIMODAL.get(kinds[0], kinds[0]) if len(kinds) == 1 else "fusion"


def run_tags(config: ExperimentConfig, dataset: str, kinds: list[str]) -> dict[str, str]:
    model = config.model
    backbones = [model.encoders[m].get("backbone") for m in model.modalities if model.encoders[m].get("backbone")]
    return {
        "lf.model_kind": model_kind(kinds),
        "lf.fusion": model.fusion["name"] if len(model.modalities) > 1 else "none",
        "lf.backbone": ",".join(backbones) or "none",
        "lf.dataset": dataset,
        "lf.modalities": ",".join(model.modalities),
        "lf.experiment": config.name,
    }


def auto_precision(trainer: TrainerConfig) -> str:
    """bf16 mixed precision on a GPU that supports it, full fp32 otherwise."""
    if trainer.precision:
        return trainer.precision
    wants_gpu = trainer.accelerator in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def warmup_epochs(model: ModelConfig | None) -> int:
    """The longest backbone warm-up (``warmup_epochs``) among the model's encoders; 0 when none has one."""
    if model is None:
        return 0
    return max((int(model.encoders[m].get("warmup_epochs", 0)) for m in model.modalities), default=0)


def build_trainer(
    trainer: TrainerConfig,
    logger: RunLogger,
    checkpoint_dir: Path,
    model: ModelConfig | None = None,
    extra_callbacks: list[Callback] | None = None,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Lightning Trainer; with ``model``, a backbone warm-up adds :class:`BackboneWarmup`.

    During a warm-up early stopping cannot end the run (``min_epochs`` = warm-up + 1; the callback
    restarts the patience when it unfreezes).
    """
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best-epoch{epoch:02d}",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    callbacks = [
        checkpoint,
        EarlyStopping(monitor="val/loss", mode="min", patience=trainer.early_stopping_patience),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    warmup = warmup_epochs(model)
    if warmup > 0:  # before LearningRateMonitor, which logs the new parameter group in the same epoch-start hook
        callbacks.insert(0, BackboneWarmup())
    callbacks += extra_callbacks or []
    return (
        L.Trainer(
            max_epochs=trainer.max_epochs,
            min_epochs=min(warmup + 1, trainer.max_epochs) if warmup > 0 else None,
            accelerator=trainer.accelerator,
            devices=trainer.devices,
            strategy=trainer.strategy,
            num_nodes=trainer.num_nodes,
            precision=auto_precision(trainer),
            deterministic=trainer.deterministic,
            gradient_clip_val=trainer.gradient_clip_val,
            fast_dev_run=trainer.fast_dev_run,
            limit_train_batches=trainer.limit_train_batches,
            log_every_n_steps=trainer.log_every_n_steps,
            logger=logger,
            callbacks=callbacks,
            enable_progress_bar=sys.stderr.isatty(),
            enable_model_summary=False,
        ),
        checkpoint,
    )


def fit(
    config: ExperimentConfig,
    datamodule: MultimodalDataModule | None = None,
    parent_run_id: str | None = None,
    keep_predictions: bool = False,
    run_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
    callbacks: list[Callback] | None = None,
    run_test: bool = True,
) -> FitResult:
    """Train, test on the best checkpoint, and record everything in one MLflow run.

    Args:
        datamodule: a data module already set up with (at least) the model's modalities, shared by
            several models so that they see the same patients and split (``compare``); by default
            one is built for the model's modalities.
        parent_run_id: record the run as a child of this MLflow run (tag ``mlflow.parentRunId``).
        keep_predictions: also return the best checkpoint's validation probabilities (one process
            only); its test probabilities are always returned.
        callbacks: extra Lightning callbacks (e.g. Optuna's pruning callback).
        run_test: ``False`` stops after training and validation (sweep trials: tuning never looks
            at the test set); the run then holds validation metrics and the best checkpoint only.
    """
    started = time.perf_counter()
    L.seed_everything(config.seed, workers=True)
    if datamodule is None:
        datamodule = MultimodalDataModule(config.data, config.model.modalities)
        datamodule.prepare_data()
        datamodule.setup("fit")  # bad input stops here: no run exists yet
    missing = [m for m in config.model.modalities if m not in datamodule.modalities]
    if missing:
        raise ValueError(f"the data module has no modality {missing} (it has {datamodule.modalities})")
    specs = {m: s for m, s in datamodule.specs.items() if m in config.model.modalities}
    module = FusionLitModule(
        to_dict(config),
        {m: {"kind": s.kind, "shape": list(s.shape)} for m, s in specs.items()},
        datamodule.classes,
        datamodule.class_weights,
    )
    module.preprocessing = {
        m: state for m, state in datamodule.preprocessing_state().items() if m in config.model.modalities
    }
    module.data_splits = {name: list(ids) for name, ids in datamodule.splits.items()}
    summary = datamodule.summary() | {"modalities": list(config.model.modalities)}
    tags = run_tags(config, summary["dataset"], [specs[m].kind for m in config.model.modalities])
    tags |= extra_tags or {}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    logger = create_run_logger(config.tracking, run_name or f"{config.name}-{tags['lf.model_kind']}", tags)
    predictions: dict[str, Predictions] | None = None
    model_logged = False
    # Only rank 0 has an MLflow run; ModelCheckpoint broadcasts rank 0's folder to the other ranks.
    staging = Path(config.tracking.artifact_root).expanduser() / ".staging" / (logger.run_id or "not-rank-zero")
    try:
        logger.log_params(flatten(to_dict(config)))
        logger.log_text(to_yaml(config), "config.yaml")
        trainer, checkpoint = build_trainer(config.trainer, logger, staging, config.model, callbacks)
        trainer.fit(module, datamodule=datamodule)
        best = checkpoint.best_model_path
        test_metrics: dict[str, float] = {}
        if run_test:
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
            val = None
            if keep_predictions or config.evaluation.temperature_scaling:  # every process (predict is collective)
                val = _val_predictions(trainer, module, datamodule, best)
            if trainer.is_global_zero:
                kinds = f"{tags['lf.model_kind']} ({tags['lf.modalities']}, fusion {tags['lf.fusion']})"
                test = Predictions.from_outputs(module.test_predictions, datamodule.datasets["test"].patient_ids)
                predictions = {"test": test} | ({"val": val} if val is not None else {})
                _log_fusion_weights(logger, module)
                test_metrics |= log_tested_model(
                    logger,
                    module.classes,
                    test,
                    summary,
                    config.evaluation,
                    val,
                    title=f"{config.name}: {kinds}",
                )
                if config.evaluation.explain_patients:
                    log_explanations(logger, module, datamodule, config.evaluation.explain_patients)
        elif trainer.is_global_zero:  # a sweep trial: validation only
            log_data_summary(logger, summary)
        if trainer.is_global_zero and best and config.tracking.log_checkpoint:
            logger.log_file(best, "checkpoints")
        if trainer.is_global_zero and best and run_test and config.tracking.log_model:
            from lightning_fusion.serving import log_pyfunc

            log_pyfunc(logger, best)
            model_logged = True
        logger.close("success")
    except BaseException:
        logger.close("failed")
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()  # only if no other run is staging there
    return FitResult(
        run_id=logger.run_id or "",
        experiment_id=logger.experiment_id,
        tracking_uri=resolve_tracking_uri(config.tracking.tracking_uri),
        test_metrics=test_metrics,
        best_checkpoint=Path(best).name if best else "",
        data_summary=summary,
        tags=tags,
        predictions=predictions,
        seconds=time.perf_counter() - started,
        epochs=trainer.current_epoch,
        model_logged=model_logged,
    )


def _val_predictions(
    trainer: L.Trainer, module: FusionLitModule, datamodule: MultimodalDataModule, best: str
) -> Predictions:
    """Validation probabilities of the tested (best) checkpoint."""
    if trainer.world_size > 1:
        raise RuntimeError(
            "validation predictions (compare, evaluation.temperature_scaling) need a single-process run: "
            "set trainer.devices 1"
        )
    outputs = trainer.predict(module, dataloaders=datamodule.val_dataloader(), ckpt_path=best or None)
    val = {k: torch.cat([o[k] for o in outputs]).cpu().numpy() for k in ("index", "probs", "label")}
    return Predictions.from_outputs(val, datamodule.datasets["val"].patient_ids)


def _log_fusion_weights(logger: RunLogger, module: FusionLitModule) -> None:
    fusion = module.model.fusion
    if hasattr(fusion, "modality_weights"):  # late_weighted: the weights of the tested (best) checkpoint
        weights = fusion.modality_weights()
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
) -> dict[str, float]:
    """Everything a tested model's run keeps of its test set; returns the interval and calibration metrics.

    Data summary and splits, predictions, confusion matrix, per-class report, bootstrap intervals,
    calibration, ROC / PR curves, and ``report.html`` with all of it.
    """
    log_data_summary(logger, summary)
    images = log_test_predictions(logger, classes, test.labels, test.probs, test.patient_ids)
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
    logger.log_text(
        run_report(
            title,
            summary,
            result.intervals,
            other,
            images,
            evaluation.confidence,
            subtitle=f"MLflow run {logger.run_id}",
        ),
        "report.html",
    )
    return result.metrics()


def log_explanations(logger: RunLogger, module: FusionLitModule, datamodule: MultimodalDataModule, count: int) -> None:
    """``explanations/`` artifacts of the first ``count`` test patients, with the tested (best) weights."""
    from lightning_fusion.explain_files import explain_patients
    from lightning_fusion.inference import feature_names

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
    logger: RunLogger, classes: list[str], y_true: np.ndarray, probs: np.ndarray, patient_ids: np.ndarray
) -> dict[str, bytes]:
    """Confusion matrix (JSON + PNG), per-class report and ``test_predictions.csv`` of a tested model."""
    y_pred = probs.argmax(axis=1)
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
