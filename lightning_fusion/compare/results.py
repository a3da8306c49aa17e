"""What a comparison returns: one :class:`ComparedModel` per model and the :class:`ComparisonResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lightning_fusion.evaluation import Interval
from lightning_fusion.fit.results import Predictions


@dataclass
class ComparedModel:
    """One row of the comparison."""

    name: str  # "cnn (image)", "ann (tabular)", "fusion concat", "fusion stacking"
    kind: str  # cnn | ann | signal | fusion
    fusion: str  # "none" for unimodal models
    modalities: list[str]
    how: str  # "trained" or "procedure on <base models>"
    run_id: str
    metrics: dict[str, float]  # test metrics from the model's test probabilities (same code for every model)
    intervals: dict[str, Interval]  # bootstrap intervals of the same metrics
    test: Predictions
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ComparisonResult:
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    models: list[ComparedModel]
    table: pd.DataFrame
    paired: pd.DataFrame  # each fusion against each unimodal model: McNemar and AUROC difference
    test_patients: int
    cv: int | None = None  # K when the figures are pooled out-of-fold predictions
    shapley: pd.DataFrame | None = None  # compare --subsets: each modality's Shapley values with interval bounds
    subset_scores: pd.DataFrame | None = None  # compare --subsets: every subset's scores, from the empty set up

    def best(self, unimodal: bool = False) -> ComparedModel:
        """The model with the highest test balanced accuracy among the fusions (or the unimodal models)."""
        pool = [m for m in self.models if (m.kind != "fusion") == unimodal]
        return max(pool, key=lambda m: m.metrics["balanced_accuracy"])
