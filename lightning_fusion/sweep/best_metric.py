"""The best validation value of the study metric over one fit: what a trial reports to Optuna."""

from __future__ import annotations

import math

import lightning as L


class BestMetric(L.Callback):
    """The best value of ``monitor`` over the validation epochs of one fit (sanity check excluded)."""

    def __init__(self, monitor: str, direction: str) -> None:
        self.monitor, self.maximize = monitor, direction == "maximize"
        self.best: float | None = None
        self.epochs = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(f"study metric {self.monitor!r} was not logged; logged: {sorted(trainer.callback_metrics)}")
        value = float(value)
        self.epochs = trainer.current_epoch + 1
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.monitor} is {value} at epoch {trainer.current_epoch}")
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value
