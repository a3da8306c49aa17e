"""Learning-rate schedules: the rate Lightning's LearningRateMonitor sees each epoch follows each formula."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor

from lightning_fusion.config import OptimConfig
from lightning_fusion.schedules import MilestoneSteps, ResumableOneCycle, WarmupCosine
from tests.tiny import MemoryLogger, TinyModule, loader

LR, EPOCHS, STEPS = 0.01, 4, 4  # 40 samples in batches of 10: 4 optimizer steps per epoch


def _epoch_rates(optim: OptimConfig) -> list[float]:
    logger = MemoryLogger()
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=logger,
        callbacks=[LearningRateMonitor(logging_interval="epoch")],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(TinyModule(optim), loader(), loader(seed=1))
    return [value for _, value in logger.history["lr-AdamW"]]


def _cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _onecycle(step: int, total: int) -> float:
    peak, start, end = LR, LR / 25, LR / 25 / 1e4  # torch's defaults: div_factor 25, final_div_factor 1e4
    rise_end = 0.3 * total - 1
    if step <= rise_end:
        low, high, fraction = start, peak, step / rise_end
    else:
        low, high, fraction = peak, end, (step - rise_end) / (total - 1 - rise_end)
    return high + (low - high) / 2 * (math.cos(math.pi * fraction) + 1)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("cosine", [_cosine(e * STEPS, STEPS, EPOCHS * STEPS) for e in range(EPOCHS)]),
        ("onecycle", [_onecycle(e * STEPS, EPOCHS * STEPS) for e in range(EPOCHS)]),
        ("step", [LR, LR, LR * 0.1, LR * 0.01]),  # milestones at 50% and 75% of 4 epochs
    ],
)
def test_rate_per_epoch_follows_the_schedule(schedule, expected):
    rates = _epoch_rates(OptimConfig(lr=LR, schedule=schedule, warmup_epochs=1))
    assert rates == pytest.approx(expected, rel=1e-6)


def _optimizer(lr: float = LR) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


@pytest.mark.parametrize(
    "build",
    [
        lambda opt: WarmupCosine(opt, warmup_steps=2, total_steps=10),
        lambda opt: MilestoneSteps(opt, [3, 6], 0.1),
        lambda opt: ResumableOneCycle(opt, max_lr=LR, total_steps=10),
    ],
    ids=["cosine", "step", "onecycle"],
)
def test_a_group_added_later_follows_the_schedule_from_its_own_rate(build):
    """Two-phase fine-tuning adds a parameter group mid-run: it must be scheduled, at its own scale."""
    optimizer = _optimizer()
    scheduler = build(optimizer)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": LR / 10})
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        first, added = (group["lr"] for group in optimizer.param_groups)
        assert added == pytest.approx(first / 10, rel=1e-6)


def test_a_resumed_run_keeps_the_length_derived_from_its_new_max_epochs():
    """Resuming with a larger max_epochs: the loaded state must not bring the old run's end back."""
    old_optimizer = _optimizer()
    old = WarmupCosine(old_optimizer, warmup_steps=2, total_steps=10)
    old_cycle = ResumableOneCycle(_optimizer(), max_lr=LR, total_steps=10)
    for _ in range(8):
        old_optimizer.step()
        old.step()
        old_cycle.optimizer.step()
        old_cycle.step()
    new = WarmupCosine(_optimizer(), warmup_steps=2, total_steps=20)
    new.load_state_dict(old.state_dict())
    assert (new.last_epoch, new.total_steps) == (8, 20)
    new_cycle = ResumableOneCycle(_optimizer(), max_lr=LR, total_steps=20)
    new_cycle.load_state_dict(old_cycle.state_dict())
    for _ in range(10):  # past the old total of 10: OneCycleLR itself would raise here
        new_cycle.optimizer.step()
        new_cycle.step()
    assert new_cycle.total_steps == 20
