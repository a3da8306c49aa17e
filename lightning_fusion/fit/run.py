"""One training run from a resolved config: data → model → Lightning Trainer → test → MLflow.

Order matters for honesty: the data is read, validated, split and preprocessed, and the model is
built, *before* an MLflow run exists, so bad input leaves no run behind; once the run exists, any
error marks it FAILED. The test set is evaluated once, with the best checkpoint on ``trainer.monitor``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lightning_fusion.config import (
    ExperimentConfig,
    flatten,
    to_dict,
    to_yaml,
)
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.fit.artifacts import _log_fusion_weights, log_data_summary, log_explanations, log_tested_model
from lightning_fusion.fit.results import FitResult, Predictions, class_balance_tags, run_tags
from lightning_fusion.fit.trainer import build_trainer
from lightning_fusion.lit import FusionLitModule
from lightning_fusion.tracking import create_run_logger, resolve_tracking_uri

log = logging.getLogger(__name__)


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
        config,
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
    tags |= class_balance_tags(config, summary["counts"]["train"])
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
        trainer, checkpoint = build_trainer(config.trainer, logger, staging, config.model, callbacks, config.optim)
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
            from lightning_fusion.predict.serving import log_pyfunc

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
