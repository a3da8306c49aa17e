"""The operating point of a binary model (``evaluation.threshold``): a decision threshold on the
probability of the positive class (the second class), fitted on validation predictions only.

* ``youden``: the threshold that maximises Youden's J = sensitivity + specificity − 1 on the
  validation ROC curve (Youden, 1950), i.e. the best validation balanced accuracy;
* ``sensitivity``: the highest threshold whose validation sensitivity is at least
  ``target_sensitivity`` (the most specific such point), as for a screening test;
* ``fixed``: ``fixed_threshold`` (0.5: the class with the larger probability), nothing fitted.

Threshold-free metrics (AUROC, calibration) do not depend on it; thresholded ones are reported
at 0.5 and at the chosen point (:func:`thresholded_metrics`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_curve

THRESHOLDED_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1")


@dataclass(frozen=True)
class OperatingPoint:
    """A binary model's decision rule: ``positive_class`` when its probability is at least ``threshold``."""

    method: str
    threshold: float
    positive_class: str
    fitted_on: str  # "validation" or "none" (fixed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OperatingPoint:
        return cls(
            str(values["method"]), float(values["threshold"]), str(values["positive_class"]), str(values["fitted_on"])
        )

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """Class indices ``(N,)`` for probabilities ``(N, 2)``."""
        return (np.asarray(probs)[:, 1] >= self.threshold).astype(np.int64)


def fit_threshold(labels: np.ndarray, positive_probs: np.ndarray, method: str, target_sensitivity: float) -> float:
    """The threshold ``method`` picks on (validation) labels ``(N,)`` and positive-class probabilities ``(N,)``."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"the {method} threshold needs both classes among the validation patients")
    fpr, tpr, thresholds = roc_curve(labels, positive_probs)
    # roc_curve's first point (threshold +inf: nothing positive) is no rule a model can apply
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if method == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if method == "sensitivity":
        return float(thresholds[int(np.argmax(tpr >= target_sensitivity))])  # the first (highest) reaching it
    raise ValueError(f"no threshold is fitted for method {method!r}")


def operating_point(
    classes: list[str], val: tuple[np.ndarray, np.ndarray] | None, config: Any
) -> OperatingPoint | None:
    """The operating point ``config.threshold`` (an EvaluationConfig) picks; ``None`` for more than two classes.

    ``val`` is (validation labels, probabilities ``(N, 2)``), needed by every method but ``fixed``.
    """
    if len(classes) != 2:
        return None
    if config.threshold == "fixed":
        return OperatingPoint("fixed", config.fixed_threshold, classes[1], "none")
    if val is None:
        raise ValueError(f"evaluation.threshold {config.threshold} is fitted on validation predictions; none given")
    labels, probs = val
    threshold = fit_threshold(labels, np.asarray(probs)[:, 1], config.threshold, config.target_sensitivity)
    return OperatingPoint(config.threshold, threshold, classes[1], "validation")


def thresholded_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, sensitivity (positive recall), specificity (negative recall) and F1 (positive)."""
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    return {
        "accuracy": float(np.mean(labels == predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "sensitivity": float(recall_score(labels, predicted, pos_label=1, zero_division=0)),
        "specificity": float(recall_score(labels, predicted, pos_label=0, zero_division=0)),
        "f1": float(f1_score(labels, predicted, pos_label=1, zero_division=0)),
    }


def operating_point_metrics(
    point: OperatingPoint, labels: np.ndarray, probs: np.ndarray, stage: str = "test"
) -> dict[str, float]:
    """``<stage>/at_0.5/<metric>`` and ``<stage>/at_threshold/<metric>`` for :data:`THRESHOLDED_METRICS`,
    and ``<stage>/threshold``."""
    half = OperatingPoint("fixed", 0.5, point.positive_class, "none")
    values = {f"{stage}/at_0.5/{k}": v for k, v in thresholded_metrics(labels, half.predict(probs)).items()}
    values |= {f"{stage}/at_threshold/{k}": v for k, v in thresholded_metrics(labels, point.predict(probs)).items()}
    return values | {f"{stage}/threshold": point.threshold}
