"""One training run from a resolved config: data → model → Lightning Trainer → test → MLflow.

Order matters for honesty: the data is read, validated, split and preprocessed, and the model is
built, *before* an MLflow run exists, so bad input leaves no run behind; once the run exists, any
error marks it FAILED. The test set is evaluated once, with the best checkpoint on ``trainer.monitor``.

A stop signal (SIGTERM, SIGINT; :mod:`lightning_fusion.fit.signals`) ends the run KILLED, its
``last.ckpt`` (the last completed epoch) and best checkpoint logged under ``resume/``; ``fit
--resume`` (:mod:`lightning_fusion.fit.resume`) continues it in the same run. Several processes
(:mod:`lightning_fusion.fit.ranks`): every one reads the data; only global rank 0 creates the run,
once all of them have, and the others learn its id from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
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
from lightning_fusion.data.datamodule import MultimodalDataModule, restore_preprocessors
from lightning_fusion.errors import DataError
from lightning_fusion.evaluation.threshold import operating_point
from lightning_fusion.fit import ranks, signals
from lightning_fusion.fit.artifacts import (
    _log_fusion_weights,
    log_data_summary,
    log_explanations,
    log_operating_point,
    log_tested_model,
)
from lightning_fusion.fit.results import FitResult, Predictions, class_balance_tags, run_tags
from lightning_fusion.fit.resume import LAST, RESUME_ARTIFACTS, ResumePoint, staging_folder
from lightning_fusion.fit.robustness import tested_robustness, wants_robustness
from lightning_fusion.fit.trainer import build_trainer
from lightning_fusion.lit import FusionLitModule
from lightning_fusion.tracking import RunLogger, create_run_logger, resolve_tracking_uri

log = logging.getLogger(__name__)


@signals.StopSignals()
def fit(
    config: ExperimentConfig,
    datamodule: MultimodalDataModule | None = None,
    parent_run_id: str | None = None,
    keep_predictions: bool = False,
    run_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
    callbacks: list[Callback] | None = None,
    run_test: bool = True,
    resume: ResumePoint | None = None,
    on_run: Callable[[str], None] | None = None,
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
        resume: continue this stopped run (``fit --resume``; ``config`` is ``resume.config``): its
            split, fitted preprocessing and network come from its checkpoint, and it is logged to.
        on_run: called on rank 0 with the run id once the run exists (``fit`` in a SLURM job keeps
            it for a requeue).

    Raises:
        RunInterrupted: a stop signal ended the run (KILLED, resumable).
    """
    started = time.perf_counter()
    ranks.check_launcher()
    L.seed_everything(config.seed, workers=True)
    accelerator = config.trainer.accelerator
    with ranks.together("data", accelerator):  # bad input on any process stops every one: no run exists yet
        if datamodule is None:
            fitted = restore_preprocessors(config.data, resume.preprocessing, resume.checkpoint) if resume else None
            datamodule = MultimodalDataModule(
                config.data, config.model.modalities, resume.splits if resume else None, fitted
            )
            datamodule.prepare_data()
            datamodule.setup("fit")
        missing = [m for m in config.model.modalities if m not in datamodule.modalities]
        if missing:
            raise ValueError(f"the data module has no modality {missing} (it has {datamodule.modalities})")
        specs = {m: s for m, s in datamodule.specs.items() if m in config.model.modalities}
        plain_specs = {m: {"kind": s.kind, "shape": list(s.shape)} for m, s in specs.items()}
        if resume:
            _check_resumed_data(resume, plain_specs, datamodule.classes)
            module = resume.build_module()
        else:
            module = FusionLitModule(config, plain_specs, datamodule.classes, datamodule.class_weights)
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
    name = run_name or f"{config.name}-{tags['lf.model_kind']}"
    with ranks.together("store", accelerator):  # a store rank 0 cannot open stops every rank (tracking error)
        logger = create_run_logger(config.tracking, name, tags, resume.run_id if resume else None)
    predictions: dict[str, Predictions] | None = None
    model_logged = False
    # Only rank 0 writes checkpoints; ModelCheckpoint broadcasts rank 0's folder to the other ranks.
    staging = staging_folder(config.tracking, "not-rank-zero")
    run_id, checkpoint, keep_staging = "", None, False
    try:
        # Rank 0 creates (or re-opens) the run; the other processes learn its id, and open no store.
        run_id = ranks.from_rank_zero("run", lambda: _open_run(logger, resume), accelerator) or ""
        module.run = {"id": run_id}
        if ranks.is_global_zero():
            staging = staging_folder(config.tracking, run_id)
        if on_run is not None and ranks.is_global_zero():
            on_run(run_id)
        if resume is None:
            logger.log_params(flatten(to_dict(config)))
            logger.log_text(to_yaml(config), "config.yaml")
        trainer, checkpoint = build_trainer(config.trainer, logger, staging, config.model, callbacks, config.optim)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.checkpoint if resume else None, weights_only=True)
        signals.raise_if_received()  # a signal in the last step: Lightning ended the loop without stopping
        best = checkpoint.best_model_path
        test_metrics: dict[str, float] = {}
        if run_test:
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            signals.raise_if_received()
            test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
            val = None
            fitted_threshold = config.evaluation.threshold != "fixed" and len(module.classes) == 2
            if keep_predictions or config.evaluation.temperature_scaling or fitted_threshold:  # every process
                val = _val_predictions(trainer, module, datamodule, best)  # (predict is collective)
            if trainer.is_global_zero:
                kinds = f"{tags['lf.model_kind']} ({tags['lf.modalities']}, fusion {tags['lf.fusion']})"
                test = Predictions.from_outputs(module.test_predictions, datamodule.datasets["test"].patient_ids)
                predictions = {"test": test} | ({"val": val} if val is not None else {})
                _log_fusion_weights(logger, module)
                point = operating_point(
                    module.classes, (val.labels, val.probs) if val is not None else None, config.evaluation
                )
                if point is not None:
                    log_operating_point(logger, point, best)
                robustness = (
                    tested_robustness(trainer, module, datamodule, config.seed) if wants_robustness(module) else None
                )
                test_metrics |= log_tested_model(
                    logger,
                    module.classes,
                    test,
                    summary,
                    config.evaluation,
                    val,
                    title=f"{config.name}: {kinds}",
                    point=point,
                    present=datamodule.datasets["test"].present,
                    modalities=config.model.modalities,
                    robustness=robustness,
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
    except BaseException as error:
        signals.closing()
        # The last completed epoch is kept under resume/ (KILLED by a signal, or FAILED: a dead DDP
        # rank, a full disk, a lost store can be resumed too). Not logged (the store cannot be
        # reached, the disk is full): it stays in the staging folder, where --resume looks first.
        kept = _keep_for_resume(logger, staging, checkpoint)
        keep_staging = kept is None and (staging / LAST).is_file()
        kept = kept or (str(staging / LAST) if keep_staging else None)
        signum = signals.stop_signal(error)
        if signum is None:
            _close(logger, "failed", run_id)
            raise
        _close(logger, "killed", run_id)
        raise signals.RunInterrupted(signum, run_id or None, kept) from error
    finally:
        if not keep_staging:
            shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()  # only if no other run is staging there
    return FitResult(
        run_id=run_id,
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


def _open_run(logger: RunLogger, resume: ResumePoint | None) -> str:
    """Rank 0: the new run's id (creating it), or the resumed run's, marked RUNNING again."""
    run_id = logger.open()
    if resume is None:
        return run_id
    logger.reopen()
    client = logger.experiment
    count = int(client.get_run(run_id).data.tags.get("lf.resumed", "0")) + 1
    client.set_tag(run_id, "lf.resumed", str(count))
    client.set_tag(run_id, f"lf.resume.{count}.epochs_done", str(resume.epoch + 1))
    if resume.changes:
        client.set_tag(run_id, f"lf.resume.{count}.changes", json.dumps(resume.changes))
    log.info("resuming run %s after %d completed epochs", run_id, resume.epoch + 1)
    return run_id


def _close(logger: RunLogger, status: str, run_id: str) -> bool:
    """Close the run on the way out of an error or a stop; ``False`` (logged) when the store cannot be told."""
    try:
        logger.close(status)
    except Exception as err:
        log.error("could not mark run %s %s (%s): it stays RUNNING in the store", run_id, status.upper(), err)
        return False
    return True


def _check_resumed_data(resume: ResumePoint, specs: dict[str, dict], classes: list[str]) -> None:
    """The data, read again with the run's split and fitted preprocessing, must still be what the run trained on."""
    if classes != list(resume.hparams["classes"]):
        raise DataError(f"the data's classes {classes} are not the resumed run's {resume.hparams['classes']}")
    if specs != resume.hparams["specs"]:
        raise DataError(f"the data's modality shapes {specs} are not the resumed run's {resume.hparams['specs']}")


def _keep_for_resume(logger: RunLogger, staging: Path, checkpoint) -> str | None:
    """Rank 0 of a stopped or failed run: log ``last.ckpt`` and the best checkpoint under ``resume/``; the
    artifact path, or ``None`` when there is none (stopped in the first epoch) or it could not be logged."""
    last = staging / LAST
    if not ranks.is_global_zero() or not last.is_file():
        return None
    best = Path(checkpoint.best_model_path) if checkpoint is not None and checkpoint.best_model_path else None
    try:
        logger.log_file(last, RESUME_ARTIFACTS)
        if best is not None and best.is_file() and best != last:
            logger.log_file(best, RESUME_ARTIFACTS)
    except Exception as err:  # the store is gone or the disk is full: the staging folder keeps them
        log.error("could not log the checkpoint to resume from (%s); it stays in %s", err, staging)
        return None
    return f"runs:/{logger.run_id}/{RESUME_ARTIFACTS}/{LAST}"


def _val_predictions(
    trainer: L.Trainer, module: FusionLitModule, datamodule: MultimodalDataModule, best: str
) -> Predictions:
    """Validation probabilities of the tested (best) checkpoint."""
    if trainer.world_size > 1:
        raise RuntimeError(
            "validation predictions (compare, evaluation.temperature_scaling, a fitted evaluation.threshold) need a "
            "single-process run: set trainer.devices 1"
        )
    outputs = trainer.predict(module, dataloaders=datamodule.val_dataloader(), ckpt_path=best or None)
    val = {k: torch.cat([o[k] for o in outputs]).cpu().numpy() for k in ("index", "probs", "label")}
    return Predictions.from_outputs(val, datamodule.datasets["val"].patient_ids)
