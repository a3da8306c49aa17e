"""A tiny LightningModule and loader for tests of training machinery (schedules, checkpoints, averaging)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from lightning_fusion.config import OptimConfig
from lightning_fusion.schedules import build_schedule


class TinyModule(L.LightningModule):
    """A linear classifier on random data; ``scripted`` (epoch → {metric: value}) replaces the real val metrics."""

    def __init__(self, optim: OptimConfig | None = None, scripted: dict[int, dict[str, float]] | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.optim = optim or OptimConfig()
        self.scripted = scripted
        self.validated: list[torch.Tensor] = []  # the weights each validation epoch saw

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.layer(x), y)
        if batch_idx == 0 and not self.trainer.sanity_checking:
            self.validated.append(self.layer.weight.detach().clone())
        if self.scripted is None:
            self.log("val/loss", loss)
        else:
            self.log_dict(self.scripted[self.current_epoch])

    def test_step(self, batch, batch_idx):
        self.log("test/loss", torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.optim.lr)
        return {"optimizer": optimizer, "lr_scheduler": build_schedule(optimizer, self.optim, self.trainer)}


class MemoryLogger(Logger):
    """Every logged metric in memory: ``history[name]`` = [(step, value), ...]."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[tuple[int, float]]] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics, step=None) -> None:
        for key, value in metrics.items():
            self.history.setdefault(key, []).append((step, float(value)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def loader(samples: int = 40, batch_size: int = 10, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 4, generator=generator)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=batch_size)
