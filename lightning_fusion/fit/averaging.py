"""Weight averaging (``optim.weight_averaging``) on Lightning's own ``WeightAveraging`` callback.

* ``ema``: an exponential moving average of the weights (and BatchNorm statistics) after every
  optimiser step, with decay ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates, the warm-up
  of TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` and timm's ``ModelEmaV3``: a short run
  of a few hundred steps still averages recent weights instead of staying near the first ones.
* ``swa``: stochastic weight averaging (Izmailov et al., 2018), the equal average of the weights at
  the end of every epoch from ``swa_start × max_epochs`` on (taken as validation starts, so the
  average validated is the one saved), the training schedule unchanged.

Lightning's callback validates with the averaged weights and saves them as the checkpoint's
``state_dict`` (the raw ones under ``current_model_state``), so the monitored metric, the chosen
checkpoint, the test and every model logged from it are the averaged model. This subclass adds
what a run needs beyond that: before the first average exists (SWA's early epochs) the raw weights
are validated and saved, and loading the best checkpoint to test or predict keeps its averaged
weights (the base class would put the raw ones back).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


def ema_with_warmup(decay: float):
    """``multi_avg_fn`` of ``AveragedModel``: floating tensors lerp towards the model by ``1 - decay_n``;
    integer buffers (BatchNorm's batch counts) take the model's value."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        step_decay = min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - step_decay)
        else:
            for kept, new in zip(averaged, current):
                kept.copy_(new)

    return update


class AveragedWeights(WeightAveraging):
    """``kind`` ``ema`` (every step, ``decay``) or ``swa`` (every epoch from ``start_fraction`` of max_epochs)."""

    def __init__(self, kind: str, decay: float = 0.999, start_fraction: float = 0.75) -> None:
        super().__init__(**({"multi_avg_fn": ema_with_warmup(decay)} if kind == "ema" else {}))
        self.kind, self.start_fraction = kind, start_fraction
        self.start_epoch = 0
        self._swapped = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.start_epoch = math.floor(self.start_fraction * int(trainer.max_epochs))
        super().setup(trainer, pl_module, stage)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        # SWA's epoch update happens in on_validation_epoch_start instead: Lightning validates and saves
        # the checkpoint around on_train_epoch_end, so an update there would save an average one epoch
        # newer than the one validated
        return self.kind == "ema" and step_idx is not None

    @property
    def averaged(self) -> bool:
        """Whether an average exists yet (AveragedModel's first update copies the weights)."""
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if self.kind == "swa" and fitting and epoch >= self.start_epoch and self._latest_update_epoch < epoch:
            self._average_model.update_parameters(pl_module)  # this epoch's weights join the average
            self._latest_update_epoch = epoch
        self._swapped = self.averaged
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.averaged:
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.averaged:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resuming: restore both; testing: keep the averaged state_dict
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def weight_averaging(optim: Any) -> AveragedWeights | None:
    """The callback ``optim.weight_averaging`` asks for, or ``None``."""
    if optim is None or optim.weight_averaging == "none":
        return None
    return AveragedWeights(optim.weight_averaging, optim.ema_decay, optim.swa_start)
