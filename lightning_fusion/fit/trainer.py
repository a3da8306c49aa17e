"""The Lightning Trainer of a run: precision, checkpoint and early stopping on ``trainer.monitor``, LR logging,
backbone warm-up, weight averaging."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint

from lightning_fusion.config import (
    ModelConfig,
    OptimConfig,
    TrainerConfig,
)
from lightning_fusion.config.schema import MONITORED
from lightning_fusion.fit.averaging import weight_averaging
from lightning_fusion.fit.warmup import BackboneWarmup
from lightning_fusion.tracking import RunLogger


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
    return max((int(getattr(model.encoders[m].options, "warmup_epochs", 0)) for m in model.modalities), default=0)


def build_trainer(
    trainer: TrainerConfig,
    logger: RunLogger,
    checkpoint_dir: Path,
    model: ModelConfig | None = None,
    extra_callbacks: list[Callback] | None = None,
    optim: OptimConfig | None = None,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Lightning Trainer; with ``model``, a backbone warm-up adds :class:`BackboneWarmup`; with ``optim``,
    ``weight_averaging`` adds :class:`~lightning_fusion.fit.averaging.AveragedWeights`.

    During a warm-up early stopping cannot end the run (``min_epochs`` = warm-up + 1; the callback
    restarts the patience when it unfreezes).
    """
    mode = MONITORED[trainer.monitor]
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best-epoch{epoch:02d}",
        monitor=trainer.monitor,
        mode=mode,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    callbacks = [
        checkpoint,
        EarlyStopping(monitor=trainer.monitor, mode=mode, patience=trainer.early_stopping_patience),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    warmup = warmup_epochs(model)
    if warmup > 0:  # before LearningRateMonitor, which logs the new parameter group in the same epoch-start hook
        callbacks.insert(0, BackboneWarmup())
    averaging = weight_averaging(optim)
    if averaging is not None:  # before the checkpoint, so the averaged weights are validated and saved
        callbacks.insert(0, averaging)
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
            benchmark=trainer.cudnn_benchmark if trainer.cudnn_benchmark is not None else not trainer.deterministic,
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
