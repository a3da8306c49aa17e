"""Classification metrics with stable names, and the figures/tables a run keeps of its test set.

Names (what users find in the MLflow UI): ``{stage}/loss``, ``{stage}/accuracy``,
``{stage}/balanced_accuracy`` (macro recall), ``{stage}/f1_macro``, ``{stage}/auroc`` (macro
one-vs-rest) for stage ``val`` and ``test``; per class ``test/precision/<class>``,
``test/recall/<class>``, ``test/f1/<class>``. All are torchmetrics, so they synchronise across DDP
processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import classification_report  # noqa: E402
from torchmetrics import MetricCollection  # noqa: E402
from torchmetrics.classification import (  # noqa: E402
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc")
PER_CLASS_METRICS = ("precision", "recall", "f1")


def summary_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Scalar metrics over class probabilities ``(B, K)`` and targets ``(B,)``, named ``<prefix><name>``."""
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "balanced_accuracy": MulticlassRecall(num_classes, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes, average="macro"),
        },
        prefix=prefix,
    )


def per_class_metrics(num_classes: int) -> MetricCollection:
    """Precision, recall and F1 for each class (``average=None``: one value per class)."""
    return MetricCollection(
        {
            "precision": MulticlassPrecision(num_classes, average=None),
            "recall": MulticlassRecall(num_classes, average=None),
            "f1": MulticlassF1Score(num_classes, average=None),
        }
    )


def per_class_names(values: dict[str, Any], classes: Sequence[str], stage: str) -> dict[str, float]:
    """``{"precision": tensor([..])}`` → ``{"test/precision/<class>": value}``."""
    return {
        f"{stage}/{metric}/{cls}": float(value[i]) for metric, value in values.items() for i, cls in enumerate(classes)
    }


def confusion_matrix_figure(matrix: np.ndarray, classes: Sequence[str], title: str = "Test confusion matrix") -> Figure:
    """A labelled confusion matrix (rows = true class, columns = predicted) with counts and row %."""
    matrix = np.asarray(matrix)
    size = 1.2 + 1.1 * len(classes)
    figure, axes = plt.subplots(figsize=(size + 1.2, size))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xticklabels=classes,
        yticklabels=classes,
        xlabel="Predicted",
        ylabel="True",
        title=title,
    )
    plt.setp(axes.get_xticklabels(), rotation=30, ha="right")
    row_totals = matrix.sum(axis=1, keepdims=True).clip(min=1)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(
            j,
            i,
            f"{count}\n{100 * count / row_totals[i, 0]:.0f}%",
            ha="center",
            va="center",
            color="white" if count > threshold else "black",
            fontsize=9,
        )
    figure.tight_layout()
    return figure


def report_table(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """scikit-learn's per-class classification report, as text and as a dict."""
    labels = list(range(len(classes)))
    kwargs = {"labels": labels, "target_names": list(classes), "zero_division": 0}
    return (
        classification_report(y_true, y_pred, digits=3, **kwargs),
        classification_report(y_true, y_pred, output_dict=True, **kwargs),
    )


def metrics_from_probabilities(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], stage: str = "test"
) -> dict[str, float]:
    """The same named metrics a trained model logs, for given probabilities (decision-level procedures).

    ``<stage>/loss`` is the mean negative log-likelihood of the true classes (the unweighted
    cross-entropy of the probabilities).
    """
    import torch

    probs_t = torch.as_tensor(np.asarray(probs), dtype=torch.float32)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    summary = summary_metrics(len(classes), prefix=f"{stage}/")
    per_class = per_class_metrics(len(classes))
    values = {k: float(v) for k, v in summary(probs_t, labels_t).items()}
    values |= per_class_names(per_class(probs_t, labels_t), classes, stage)
    true_probs = probs_t[torch.arange(len(labels_t)), labels_t].clamp_min(1e-12)
    values[f"{stage}/loss"] = float(-true_probs.log().mean())
    return values
