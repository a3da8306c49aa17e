"""Honest numbers for small cohorts: bootstrap intervals, paired model comparison, calibration, curves.

Pure numpy / scipy / scikit-learn functions of labels ``(N,)`` and class probabilities ``(N, K)``;
the Lightning and MLflow glue lives in :mod:`lightning_fusion.evaluation.scoring`.
"""

from lightning_fusion.evaluation.bootstrap import Interval, bootstrap_intervals, exact_accuracy_interval, point_metrics
from lightning_fusion.evaluation.calibration import brier_score, expected_calibration_error, fit_temperature
from lightning_fusion.evaluation.paired import (
    McNemarResult,
    PairedDifference,
    holm_adjust,
    mcnemar_test,
    paired_auroc_difference,
)

__all__ = [
    "Interval",
    "McNemarResult",
    "PairedDifference",
    "bootstrap_intervals",
    "brier_score",
    "exact_accuracy_interval",
    "expected_calibration_error",
    "fit_temperature",
    "holm_adjust",
    "mcnemar_test",
    "paired_auroc_difference",
    "point_metrics",
]
