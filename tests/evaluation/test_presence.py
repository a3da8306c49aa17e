"""Test metrics per presence pattern: the groups, their counts and intervals, and the report section."""

import numpy as np
import pytest

from lightning_fusion.evaluation.bootstrap import bootstrap_intervals
from lightning_fusion.evaluation.presence import presence_pattern_metrics, presence_patterns
from lightning_fusion.evaluation.report import presence_section

CLASSES = ["normal", "ischemia", "infarction"]


def test_patterns_name_the_present_modalities_and_default_to_present():
    present = {"tabular": np.array([True, False, True, True]), "image": np.array([True, True, False, True])}
    patterns = presence_patterns(present, ["image", "signal", "tabular"], 4)
    assert patterns.tolist() == ["image+signal+tabular", "image+signal", "signal+tabular", "image+signal+tabular"]
    with pytest.raises(ValueError, match=r"present\['image'\] has 3 flags for 4 patients"):
        presence_patterns({"image": np.ones(3, bool)}, ["image"], 4)


def test_each_pattern_gets_its_own_counts_and_the_intervals_of_its_patients_alone():
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    probs = rng.dirichlet(np.ones(3), size=60)
    probs[np.arange(60), labels] += 0.5
    probs /= probs.sum(1, keepdims=True)
    patterns = np.where(np.arange(60) < 45, "image+tabular", "image")
    patterns[45:48] = "tabular"  # 3 patients, one per class
    rows = presence_pattern_metrics(labels, probs, patterns, CLASSES, n_resamples=1000, seed=1)
    assert [(r["pattern"], r["patients"]) for r in rows] == [("image+tabular", 45), ("image", 12), ("tabular", 3)]
    assert rows[2]["classes"] == {"normal": 1, "ischemia": 1, "infarction": 1}
    only = patterns == "image"
    expected = bootstrap_intervals(labels[only], probs[only], 1000, 1)
    assert rows[1]["intervals"]["balanced_accuracy"] == expected["balanced_accuracy"]
    html = presence_section(rows, 0.95)
    assert "image+tabular" in html and str(expected["auroc"]) in html


def test_a_metric_a_group_cannot_define_is_left_out():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    rows = presence_pattern_metrics(labels, probs, np.array(["a", "a", "a", "b"]), ["no", "yes"], n_resamples=1000)
    b = next(r for r in rows if r["pattern"] == "b")
    assert "auroc" not in b["intervals"] and b["intervals"]["accuracy"].value == 1.0
    assert "n/a" in presence_section(rows, 0.95)
