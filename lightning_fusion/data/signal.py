"""1-D signal normalisation fitted on training patients only (z-score per lead by default)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_fusion.config import SignalConfig

_EPS = 1e-6


class SignalPreprocessor:
    """Fit on the training signals ``(N, leads, samples)``; transform any signals to ``float32``."""

    def __init__(self, options: SignalConfig) -> None:
        self.options = options
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.leads: list[str] | None = None
        self.shape: tuple[int, int] | None = None

    def fit(self, train: np.ndarray, leads: Sequence[str] | None = None) -> SignalPreprocessor:
        """Learn the normalisation from ``train`` (training patients only)."""
        if train.ndim != 3 or len(train) == 0:
            raise ValueError(f"expected training signals (N, leads, samples), got shape {train.shape}")
        self.shape = (int(train.shape[1]), int(train.shape[2]))
        self.leads = list(leads) if leads is not None else None
        mode = self.options.normalise
        if mode == "lead":
            self.mean = train.mean(axis=(0, 2), dtype=np.float64)
            self.std = train.std(axis=(0, 2), dtype=np.float64)
        elif mode == "global":
            self.mean = np.full(train.shape[1], train.mean(dtype=np.float64))
            self.std = np.full(train.shape[1], train.std(dtype=np.float64))
        return self

    def transform(self, signals: np.ndarray) -> np.ndarray:
        """Normalise ``(N, leads, samples)`` signals with the fitted state."""
        if self.shape is None:
            raise RuntimeError("SignalPreprocessor.transform called before fit")
        if signals.ndim != 3 or tuple(signals.shape[1:]) != self.shape:
            raise ValueError(f"expected signals (N, {self.shape[0]}, {self.shape[1]}), got shape {signals.shape}")
        signals = signals.astype(np.float64)
        if self.options.normalise == "sample":
            mean = signals.mean(axis=2, keepdims=True)
            std = signals.std(axis=2, keepdims=True)
            return ((signals - mean) / np.maximum(std, _EPS)).astype(np.float32)
        if self.mean is None or self.std is None:  # "none"
            return signals.astype(np.float32)
        mean, std = self.mean[None, :, None], np.maximum(self.std, _EPS)[None, :, None]
        return ((signals - mean) / std).astype(np.float32)

    def state(self) -> dict[str, Any]:
        """The fitted state for a checkpoint (plain data)."""
        if self.shape is None:
            raise RuntimeError("SignalPreprocessor.state called before fit")
        return {
            "shape": list(self.shape),
            "leads": self.leads,
            "mean": None if self.mean is None else self.mean.tolist(),
            "std": None if self.std is None else self.std.tolist(),
        }

    @classmethod
    def from_state(cls, options: SignalConfig, state: dict[str, Any]) -> SignalPreprocessor:
        restored = cls(options)
        restored.shape = (int(state["shape"][0]), int(state["shape"][1]))
        restored.leads = state["leads"]
        restored.mean = None if state["mean"] is None else np.asarray(state["mean"], dtype=np.float64)
        restored.std = None if state["std"] is None else np.asarray(state["std"], dtype=np.float64)
        return restored

    def summary(self) -> dict[str, Any]:
        """The fitted state as plain data (for the run's artifacts)."""
        if self.shape is None:
            return {}
        names = self.leads or [f"lead_{i}" for i in range(self.shape[0])]
        summary: dict[str, Any] = {"normalise": self.options.normalise, "leads": names, "samples": self.shape[1]}
        if self.mean is not None and self.std is not None:
            summary["mean"] = dict(zip(names, self.mean.tolist()))
            summary["std"] = dict(zip(names, self.std.tolist()))
        return summary
