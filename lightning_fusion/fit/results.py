"""What a run returns: the best checkpoint's :class:`Predictions`, the :class:`FitResult`, the run's tags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_fusion.config import (
    ExperimentConfig,
)
from lightning_fusion.data.kinds import KINDS


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
    """``cnn`` / ``ann`` / ``signal`` for one modality of that kind (its ``unimodal_model``), ``fusion`` for several."""
    if len(kinds) > 1:
        return "fusion"
    return KINDS.get(kinds[0]).unimodal_model if kinds[0] in KINDS else kinds[0]


IMBALANCED_RATIO = 1.5  # largest / smallest training class at or above which a split is called imbalanced


def class_balance_tags(config: ExperimentConfig, train_counts: dict[str, int]) -> dict[str, str]:
    """How the run handles its training split's class balance: ``lf.class_ratio`` (largest / smallest
    class), ``lf.imbalanced`` and ``lf.class_balancing`` (``class_weights`` | ``balanced_sampler`` | ``none``)."""
    counts = [n for n in train_counts.values() if n > 0]
    ratio = max(counts) / min(counts) if counts else 1.0
    balancing = (
        "balanced_sampler"
        if config.data.sampler == "balanced"
        else ("class_weights" if config.optim.class_weights else "none")
    )
    return {
        "lf.class_ratio": f"{ratio:.2f}",
        "lf.imbalanced": str(ratio >= IMBALANCED_RATIO).lower(),
        "lf.class_balancing": balancing,
    }


def class_balance_line(tags: dict[str, str], train_counts: dict[str, int]) -> str:
    """One line for the printed summary: the training classes and what the loss or sampler does about them."""
    counts = " / ".join(f"{name} {n}" for name, n in train_counts.items())
    state = "imbalanced" if tags.get("lf.imbalanced") == "true" else "balanced"
    action = {
        "class_weights": "class-weighted loss (inverse training frequency)",
        "balanced_sampler": "balanced sampler (each class drawn equally often)",
        "none": "no class balancing",
    }[tags.get("lf.class_balancing", "none")]
    return f"train classes {counts} ({state}, largest/smallest {tags.get('lf.class_ratio')}): {action}"


def run_tags(config: ExperimentConfig, dataset: str, kinds: list[str]) -> dict[str, str]:
    model = config.model
    backbones = [b for m in model.modalities if (b := getattr(model.encoders[m].options, "backbone", None))]
    return {
        "lf.model_kind": model_kind(kinds),
        "lf.fusion": model.fusion.name if len(model.modalities) > 1 else "none",
        "lf.backbone": ",".join(backbones) or "none",
        "lf.dataset": dataset,
        "lf.modalities": ",".join(model.modalities),
        "lf.experiment": config.name,
    }
