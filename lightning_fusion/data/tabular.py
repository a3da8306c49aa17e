"""Tabular preprocessing fitted on training patients only: impute → (indicators) → z-score → select.

A thin wrapper over a scikit-learn pipeline that keeps feature names and checks its input, so a
column that is not numeric or has no training values is an error naming it, not a silent fill.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import skops.io
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from lightning_fusion.config import TabularConfig
from lightning_fusion.errors import DataError

# What skops reports as "untrusted" for the pipeline built below: a numpy dtype and the selection score.
_TRUSTED_TYPES = {"numpy.dtype", "sklearn.feature_selection._univariate_selection.f_classif"}


class TabularPreprocessor:
    """Fit on the training rows of a feature table; transform any rows to ``float32`` arrays."""

    def __init__(self, options: TabularConfig) -> None:
        self.options = options
        self.pipeline: Pipeline | None = None
        self.input_columns: list[str] = []
        self.output_columns: list[str] = []

    def fit(self, train: pd.DataFrame, train_labels: np.ndarray, source: str = "tabular") -> TabularPreprocessor:
        """Fit imputation, scaling and selection on ``train`` (rows = training patients only)."""
        _check_numeric(train, source)
        empty = [c for c in train.columns if train[c].isna().all()]
        if empty:
            raise DataError(f"{source}: columns with no value in any training patient: {empty}; drop them")
        steps: list[tuple[str, Any]] = [
            ("impute", SimpleImputer(strategy=self.options.impute, add_indicator=self.options.missing_indicators))
        ]
        if self.options.scale:
            steps.append(("scale", StandardScaler()))
        if self.options.select_k is not None:
            steps.append(("select", SelectKBest(f_classif, k=min(self.options.select_k, train.shape[1]))))
        self.pipeline = Pipeline(steps).set_output(transform="pandas")
        self.input_columns = list(train.columns)
        fitted = self.pipeline.fit_transform(train.astype(np.float64), train_labels)
        self.output_columns = list(fitted.columns)
        return self

    def transform(self, frame: pd.DataFrame, source: str = "tabular") -> np.ndarray:
        """Transform rows with the fitted state; the columns must be those seen in :meth:`fit`."""
        if self.pipeline is None:
            raise RuntimeError("TabularPreprocessor.transform called before fit")
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise DataError(f"{source}: missing columns {missing}")
        _check_numeric(frame[self.input_columns], source)
        return self.pipeline.transform(frame[self.input_columns].astype(np.float64)).to_numpy(np.float32)

    def state(self) -> dict[str, Any]:
        """The fitted state for a checkpoint: column names and the pipeline as skops bytes (no pickle)."""
        if self.pipeline is None:
            raise RuntimeError("TabularPreprocessor.state called before fit")
        return {
            "input_columns": self.input_columns,
            "output_columns": self.output_columns,
            "pipeline": skops.io.dumps(self.pipeline),
        }

    @classmethod
    def from_state(
        cls, options: TabularConfig, state: dict[str, Any], source: str = "checkpoint"
    ) -> TabularPreprocessor:
        """Restore :meth:`state`; only the types this pipeline is made of are loaded."""
        untrusted = skops.io.get_untrusted_types(data=state["pipeline"])
        unexpected = sorted(set(untrusted) - _TRUSTED_TYPES)
        if unexpected:
            raise DataError(f"{source}: the tabular preprocessing holds types that are not loaded: {unexpected}")
        restored = cls(options)
        restored.pipeline = skops.io.loads(state["pipeline"], trusted=untrusted)
        restored.input_columns = list(state["input_columns"])
        restored.output_columns = list(state["output_columns"])
        return restored

    def summary(self) -> dict[str, Any]:
        """The fitted state as plain data (for the run's artifacts): what was learnt from train."""
        if self.pipeline is None:
            return {}
        steps = self.pipeline.named_steps
        summary: dict[str, Any] = {
            "input_columns": self.input_columns,
            "output_columns": self.output_columns,
            "impute_strategy": self.options.impute,
            "impute_values": dict(zip(self.input_columns, steps["impute"].statistics_.tolist())),
        }
        if "scale" in steps:
            names = list(steps["scale"].feature_names_in_)
            summary["scale_mean"] = dict(zip(names, steps["scale"].mean_.tolist()))
            summary["scale_std"] = dict(zip(names, steps["scale"].scale_.tolist()))
        if "select" in steps:
            summary["selected"] = list(steps["select"].get_feature_names_out())
        return summary


def _check_numeric(frame: pd.DataFrame, source: str) -> None:
    bad = [
        c
        for c in frame.columns
        if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    if bad:
        examples = {c: frame[c].dropna().astype(str).head(3).tolist() for c in bad[:3]}
        raise DataError(f"{source}: non-numeric columns {bad} (e.g. {examples}); encode them as numbers first")
