"""Our metric names and values against scikit-learn on fixed predictions."""

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from torchmetrics.classification import MulticlassConfusionMatrix

from lightning_fusion.metrics import (
    confusion_matrix_figure,
    per_class_metrics,
    per_class_names,
    report_table,
    summary_metrics,
)

CLASSES = ["normal", "ischemia", "infarction"]


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y_true = rng.choice(3, size=200, p=[0.7, 0.2, 0.1])
    logits = rng.normal(size=(200, 3)) + 1.5 * np.eye(3)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, probs


def test_summary_metrics_match_sklearn(predictions):
    y_true, probs = predictions
    y_pred = probs.argmax(axis=1)
    metrics = summary_metrics(3, prefix="test/")
    for chunk in np.array_split(np.arange(200), 4):  # accumulated over batches, like an epoch
        metrics.update(torch.tensor(probs[chunk], dtype=torch.float32), torch.tensor(y_true[chunk]))
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert set(values) == {"test/accuracy", "test/balanced_accuracy", "test/f1_macro", "test/auroc"}
    assert values["test/accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-6)
    assert values["test/balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred), abs=1e-6)
    assert values["test/f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-6)
    assert values["test/auroc"] == pytest.approx(
        roc_auc_score(y_true, probs, multi_class="ovr", average="macro"), abs=1e-4
    )


def test_per_class_metrics_and_names_match_sklearn(predictions):
    y_true, probs = predictions
    y_pred = probs.argmax(axis=1)
    metrics = per_class_metrics(3)
    metrics.update(torch.tensor(probs, dtype=torch.float32), torch.tensor(y_true))
    named = per_class_names(metrics.compute(), CLASSES, "test")
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        expected = fn(y_true, y_pred, average=None)
        for i, cls in enumerate(CLASSES):
            assert named[f"test/{name}/{cls}"] == pytest.approx(expected[i], abs=1e-6)


def test_confusion_matrix_orientation_and_figure(predictions):
    y_true, probs = predictions
    matrix = MulticlassConfusionMatrix(3)(torch.tensor(probs, dtype=torch.float32), torch.tensor(y_true)).numpy()
    np.testing.assert_array_equal(matrix, confusion_matrix(y_true, probs.argmax(axis=1)))  # rows = true class
    figure = confusion_matrix_figure(matrix, CLASSES)
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == CLASSES


def test_report_table_lists_every_class_even_if_never_predicted():
    text, table = report_table(np.array([0, 0, 1, 2]), np.array([0, 0, 0, 0]), CLASSES)
    assert all(cls in text for cls in CLASSES)
    assert table["infarction"]["recall"] == 0.0 and table["normal"]["recall"] == 1.0
