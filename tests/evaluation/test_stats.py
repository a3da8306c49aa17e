"""Bootstrap intervals, paired tests and calibration against reference values (scipy, sklearn, torchmetrics, hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics.classification import MulticlassCalibrationError

from lightning_fusion.evaluation import (
    bootstrap_intervals,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    mcnemar_test,
    paired_auroc_difference,
    point_metrics,
)
from lightning_fusion.evaluation.calibration import apply_temperature
from lightning_fusion.metrics import metrics_from_probabilities


def _predictions(n, k, skill, seed, sharpen=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + skill * np.eye(k)[labels]
    logits *= sharpen
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return labels, probs / probs.sum(1, keepdims=True)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_point_metrics_match_the_logged_torchmetrics_values(k):
    labels, probs = _predictions(200, k, 1.0, seed=k)
    ours = point_metrics(labels, probs)
    logged = metrics_from_probabilities(probs, labels, [str(i) for i in range(k)])
    for name in ("accuracy", "balanced_accuracy", "f1_macro", "auroc"):
        assert ours[name] == pytest.approx(logged[f"test/{name}"], abs=1e-5), name


def test_auroc_with_ties_matches_sklearn():
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    scores = np.array([0.2, 0.5, 0.5, 0.9, 0.2, 0.2, 0.7, 0.9])
    probs = np.stack([1 - scores, scores], axis=1)
    assert point_metrics(labels, probs)["auroc"] == pytest.approx(roc_auc_score(labels, scores))


def test_bootstrap_intervals_cover_the_population_value():
    """Draw 120 test sets of 80 from a population with a known accuracy: ~95% of intervals cover it."""
    rng = np.random.default_rng(0)
    population_accuracy = 0.8
    covered = 0
    trials = 120
    for trial in range(trials):
        labels = rng.integers(0, 2, size=80)
        correct = rng.random(80) < population_accuracy
        predicted = np.where(correct, labels, 1 - labels)
        probs = np.stack([predicted == 0, predicted == 1], axis=1).astype(float) * 0.8 + 0.1
        interval = bootstrap_intervals(labels, probs, n_resamples=1000, seed=trial)["accuracy"]
        covered += interval.low <= population_accuracy <= interval.high
        assert interval.low <= interval.value <= interval.high
    assert 0.87 <= covered / trials <= 0.995


def test_bootstrap_is_seeded_stratified_and_checked():
    labels, probs = _predictions(40, 3, 1.5, seed=1)
    a = bootstrap_intervals(labels, probs, seed=7)
    assert a == bootstrap_intervals(labels, probs, seed=7)
    assert a != bootstrap_intervals(labels, probs, seed=8)
    assert str(a["accuracy"]).count("[") == 1  # "0.875 [0.775, 0.950]"
    with pytest.raises(ValueError, match=">= 1000"):
        bootstrap_intervals(labels, probs, n_resamples=200)
    perfect = np.eye(3)[labels]
    assert bootstrap_intervals(labels, perfect)["balanced_accuracy"].low == 1.0  # every class in every resample


def test_mcnemar_exact_against_hand_computed_values():
    labels = np.zeros(10, dtype=int)
    a = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 0])  # right on 7
    b = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0])  # right on 2
    result = mcnemar_test(labels, a, b)
    # discordant: A-only right on 0..5 (6), B-only right on 7 (1); exact p = 2 * (1 + 7) / 2**7
    assert (result.a_only_correct, result.b_only_correct) == (6, 1)
    assert result.p_value == pytest.approx(0.125)
    assert mcnemar_test(labels, a, a).p_value == 1.0


def test_paired_auroc_difference():
    labels, good = _predictions(120, 3, 2.5, seed=3)
    rng = np.random.default_rng(4)
    poor = rng.dirichlet(np.ones(3), size=120)
    same = paired_auroc_difference(labels, good, good)
    assert same.value == 0 and same.low == 0 == same.high and same.p_value == 1.0
    better = paired_auroc_difference(labels, good, poor)
    assert better.value > 0.2 and better.low > 0 and better.p_value < 0.01
    worse = paired_auroc_difference(labels, poor, good)
    assert worse.value == pytest.approx(-better.value) and worse.high < 0


def test_ece_matches_torchmetrics_and_brier_by_hand():
    labels, probs = _predictions(300, 4, 1.0, seed=5, sharpen=2.0)
    reference = MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")(
        torch.tensor(probs, dtype=torch.float32), torch.tensor(labels)
    )
    assert expected_calibration_error(labels, probs) == pytest.approx(float(reference), abs=1e-4)
    assert brier_score(np.array([0, 1]), np.array([[0.8, 0.2], [0.5, 0.5]])) == pytest.approx((0.08 + 0.5) / 2)


def test_temperature_scaling_undoes_overconfidence_without_changing_the_class():
    labels, calibrated = _predictions(2000, 3, 1.0, seed=6)
    overconfident = apply_temperature(calibrated, 1 / 3)  # logits x 3
    temperature = fit_temperature(labels, overconfident)
    assert temperature == pytest.approx(3.0, rel=0.15)
    rescaled = apply_temperature(overconfident, temperature)
    assert (rescaled.argmax(1) == overconfident.argmax(1)).all()
    assert expected_calibration_error(labels, rescaled) < expected_calibration_error(labels, overconfident)


def test_holm_adjustment_by_hand():
    from lightning_fusion.evaluation import holm_adjust

    # sorted 0.01, 0.02, 0.04 with m = 3: 0.03, 0.04, 0.04 (monotone), back in input order
    assert holm_adjust([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_exact_accuracy_interval_stays_informative_when_every_patient_is_right():
    from lightning_fusion.evaluation import exact_accuracy_interval

    labels = np.arange(30) % 3
    perfect = np.eye(3)[labels]
    assert bootstrap_intervals(labels, perfect)["accuracy"].low == 1.0  # the bootstrap collapses ...
    exact = exact_accuracy_interval(labels, labels)
    assert exact.value == 1.0 and exact.high == 1.0
    assert exact.low == pytest.approx(0.025 ** (1 / 30), abs=1e-6)  # ... Clopper-Pearson: (alpha/2)^(1/n) = 0.884
    assert exact_accuracy_interval(np.zeros(10), np.r_[np.zeros(7), np.ones(3)]).low == pytest.approx(0.3475, abs=1e-4)
