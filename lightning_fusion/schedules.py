"""Learning-rate schedules by name (``optim.schedule``): SCHEDULES maps a name to a builder.

A builder takes the optimizer, the optim config and the Lightning Trainer and returns Lightning's
``lr_scheduler`` dict. Lengths come from the Trainer when the optimizer is built
(``trainer.max_epochs``, ``trainer.estimated_stepping_batches``), so a run resumed with a larger
``max_epochs`` stretches its schedule to the new end instead of replaying the old one.

* ``plateau``: ReduceLROnPlateau on ``val/loss`` (factor ``plateau_factor``, patience
  ``plateau_patience``), stepped per epoch; needs no length, so it suits early stopping.
* ``cosine``: linear warm-up over ``warmup_epochs`` from ~0 to ``lr``, then half a cosine to 0 at the
  last step (Loshchilov & Hutter, SGDR, 2017; warm-up: Goyal et al., 2017); stepped per batch.
* ``onecycle``: torch's OneCycleLR (Smith & Topin, 2019), peak ``lr`` at 30% of the steps, Adam's
  beta1 cycled inversely; stepped per batch.
* ``step``: the rate times ``step_gamma`` at each of ``step_milestones`` (fractions of max_epochs, e.g.
  0.5 and 0.75 as in He et al., 2016); stepped per epoch.

Parameter groups added during training (two-phase fine-tuning, :mod:`lightning_fusion.fit.warmup`)
join the schedule where it stands: their own rate is scaled by the same factor from then on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

from lightning_fusion.registry import Registry

SCHEDULES: Registry[Callable[..., dict[str, Any]]] = Registry("learning-rate schedule")


class FactorSchedule(LRScheduler):
    """Every group's rate = its initial rate × :meth:`factor` (step); a group added later starts from its own rate.

    ``derived`` names attributes computed from the Trainer at construction: loading a resumed run's
    state keeps them, so the schedule follows the new run length.
    """

    derived: tuple[str, ...] = ()

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        scale = self.factor(self.last_epoch)
        return [group.setdefault("initial_lr", group["lr"]) * scale for group in self.optimizer.param_groups]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        kept = {name: getattr(self, name) for name in self.derived}
        super().load_state_dict(state_dict)
        self.__dict__.update(kept)


class WarmupCosine(FactorSchedule):
    """Linear warm-up over ``warmup_steps`` (factor 1/W, 2/W, ... 1), then cosine from 1 to 0 at ``total_steps``."""

    derived = ("warmup_steps", "total_steps")

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps, self.total_steps = warmup_steps, max(total_steps, 1)
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class MilestoneSteps(FactorSchedule):
    """Factor ``gamma ** (milestones passed)``; milestones in epochs."""

    derived = ("milestones",)

    def __init__(self, optimizer: Optimizer, milestones: list[int], gamma: float) -> None:
        self.milestones, self.gamma = milestones, gamma
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        return self.gamma ** sum(step >= m for m in self.milestones)


class ResumableOneCycle(OneCycleLR):
    """torch's OneCycleLR that keeps the length derived now when a resumed run's state is loaded, and
    schedules a group added later with that group's rate as its peak."""

    def get_lr(self) -> list[float]:
        first = self.optimizer.param_groups[0]
        for group in self.optimizer.param_groups:
            if "max_lr" not in group:
                group["max_lr"] = group["lr"]
                group["initial_lr"] = group["lr"] / first["max_lr"] * first["initial_lr"]
                group["min_lr"] = group["lr"] / first["max_lr"] * first["min_lr"]
                for key in ("max_momentum", "base_momentum"):
                    if key in first:
                        group[key] = first[key]
        return super().get_lr()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        kept = {name: getattr(self, name) for name in ("total_steps", "_schedule_phases")}
        super().load_state_dict(state_dict)
        self.__dict__.update(kept)


def steps_per_epoch(trainer: Any) -> int:
    """Optimizer steps in one epoch, from the Trainer's own count over the whole run."""
    return max(1, int(trainer.estimated_stepping_batches) // max(1, int(trainer.max_epochs)))


@SCHEDULES.register("plateau", interval="epoch")
def plateau(optimizer: Optimizer, optim: Any, trainer: Any) -> dict[str, Any]:
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience
    )
    return {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"}


@SCHEDULES.register("cosine", interval="step")
def cosine(optimizer: Optimizer, optim: Any, trainer: Any) -> dict[str, Any]:
    per_epoch = steps_per_epoch(trainer)
    total = int(trainer.estimated_stepping_batches)
    scheduler = WarmupCosine(optimizer, warmup_steps=optim.warmup_epochs * per_epoch, total_steps=total)
    return {"scheduler": scheduler, "interval": "step"}


@SCHEDULES.register("onecycle", interval="step")
def onecycle(optimizer: Optimizer, optim: Any, trainer: Any) -> dict[str, Any]:
    total = max(1, int(trainer.estimated_stepping_batches))
    scheduler = ResumableOneCycle(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
    return {"scheduler": scheduler, "interval": "step"}


@SCHEDULES.register("step", interval="epoch")
def step(optimizer: Optimizer, optim: Any, trainer: Any) -> dict[str, Any]:
    epochs = int(trainer.max_epochs)
    milestones = sorted({max(1, round(fraction * epochs)) for fraction in optim.step_milestones})
    return {"scheduler": MilestoneSteps(optimizer, milestones, optim.step_gamma), "interval": "epoch"}


def build_schedule(optimizer: Optimizer, optim: Any, trainer: Any) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` dict for ``optim.schedule``."""
    return SCHEDULES.get(optim.schedule)(optimizer, optim, trainer)
