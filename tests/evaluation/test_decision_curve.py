"""Decision curves: net benefit against hand-computed values, treat all / treat none, which classes, the figure."""

import numpy as np
import pytest

from lightning_fusion.config import EvaluationConfig
from lightning_fusion.evaluation.decision_curve import (
    decision_curve_figure,
    decision_curves,
    net_benefit,
    treat_all_net_benefit,
)
from lightning_fusion.evaluation.scoring import decision_figure, evaluate

# 10 patients, 3 with the condition
POSITIVE = np.array([True, True, True, False, False, False, False, False, False, False])
SCORES = np.array([0.9, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.1, 0.05, 0.05])


def test_net_benefit_equals_the_hand_computed_values():
    thresholds = np.array([0.25, 0.5, 0.6, 0.95])
    # p_t 0.25: treated 0.9 0.6 0.3 (TP 3) and 0.7 0.4 (FP 2): 3/10 - 2/10 * 0.25/0.75
    # p_t 0.5: TP 2 (0.9, 0.6), FP 1 (0.7): 2/10 - 1/10 * 1
    # p_t 0.6: TP 2 (0.6 >= 0.6 is treated), FP 1: 2/10 - 1/10 * 1.5
    # p_t 0.95: nobody treated
    expected = [0.3 - 0.2 / 3, 0.2 - 0.1, 0.2 - 0.15, 0.0]
    np.testing.assert_allclose(net_benefit(POSITIVE, SCORES, thresholds), expected)
    # treat all: prevalence 0.3 - 0.7 * p_t / (1 - p_t)
    np.testing.assert_allclose(
        treat_all_net_benefit(POSITIVE, thresholds), [0.3 - 0.7 / 3, 0.3 - 0.7, 0.3 - 1.05, 0.3 - 13.3]
    )


def test_a_perfect_model_reaches_the_prevalence_and_beats_both_references():
    perfect = POSITIVE.astype(float)
    curves = decision_curves(POSITIVE.astype(int), np.stack([1 - perfect, perfect], axis=1), ["no", "yes"])
    assert list(curves) == ["yes"]  # binary: the positive class only
    benefit, treat_all = np.array(curves["yes"]["net_benefit"]), np.array(curves["yes"]["treat_all"])
    np.testing.assert_allclose(benefit, 0.3)
    assert (benefit >= treat_all).all() and (benefit >= 0).all() and curves["yes"]["prevalence"] == 0.3


def test_several_classes_get_one_vs_rest_curves_for_classes_with_both_outcomes():
    labels = np.array([0, 1, 2, 0, 1, 0])
    probs = np.full((6, 3), 1 / 3)
    assert list(decision_curves(labels, probs, ["a", "b", "c"])) == ["a", "b", "c"]
    assert list(decision_curves(np.zeros(6, int), probs, ["a", "b", "c"])) == []  # nobody has b or c; all have a


@pytest.mark.parametrize("thresholds", [[0.0, 0.5], [0.5, 1.0]])
def test_thresholds_must_lie_strictly_inside_zero_one(thresholds):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        net_benefit(POSITIVE, SCORES, np.array(thresholds))


def test_every_evaluation_has_decision_curves_and_their_figure():
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    probs = np.clip(0.5 + 0.3 * (2 * labels - 1) + rng.normal(0, 0.2, 40), 0.01, 0.99)
    result = evaluate(labels, np.stack([1 - probs, probs], axis=1), ["normal", "disease"], EvaluationConfig())
    assert list(result.curves["decision"]) == ["disease"]
    assert decision_figure(result).axes
    figure = decision_curve_figure({"cnn": result.curves["decision"], "fusion": result.curves["decision"]})
    labels_drawn = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels_drawn == ["cnn", "fusion", "treat all", "treat none"]
