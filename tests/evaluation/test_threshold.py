"""The operating point of a binary model: thresholds by hand, thresholded metrics, predictions at the threshold."""

from types import SimpleNamespace

import numpy as np
import pytest

from lightning_fusion.config import EvaluationConfig
from lightning_fusion.evaluation.threshold import (
    OperatingPoint,
    fit_threshold,
    operating_point,
    operating_point_metrics,
)
from lightning_fusion.predict.trained_model import TrainedModel

# negatives 0.1 0.2 0.3 0.6, positives 0.5 0.7 0.9: at 0.5 sensitivity 1, specificity 3/4 (J 0.75, the
# best); at 0.7 sensitivity 2/3, specificity 1 (J 0.67)
LABELS = np.array([0, 0, 0, 0, 1, 1, 1])
POSITIVE = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.9])


def test_youden_and_target_sensitivity_thresholds_by_hand():
    assert fit_threshold(LABELS, POSITIVE, "youden", 0.9) == pytest.approx(0.5)
    assert fit_threshold(LABELS, POSITIVE, "sensitivity", 0.6) == pytest.approx(0.7)  # the most specific reaching it
    assert fit_threshold(LABELS, POSITIVE, "sensitivity", 1.0) == pytest.approx(0.5)
    # a useless model (J <= 0 everywhere) still gets a threshold it can apply: one of its validation scores
    useless = fit_threshold(LABELS, 1 - POSITIVE, "youden", 0.9)
    assert useless in set(1 - POSITIVE)
    with pytest.raises(ValueError, match="both classes"):
        fit_threshold(np.zeros(4), POSITIVE[:4], "youden", 0.9)


def test_fixed_needs_no_validation_and_more_than_two_classes_have_no_threshold():
    val = (LABELS, np.stack([1 - POSITIVE, POSITIVE], axis=1))
    fixed = operating_point(["a", "b"], None, EvaluationConfig())
    assert (fixed.threshold, fixed.fitted_on, fixed.positive_class) == (0.5, "none", "b")
    assert operating_point(["a", "b"], val, EvaluationConfig(threshold="youden")).threshold == pytest.approx(0.5)
    assert operating_point(["a", "b", "c"], val, EvaluationConfig(threshold="youden")) is None


def test_thresholded_metrics_at_half_and_at_the_threshold():
    probs = np.stack([1 - POSITIVE, POSITIVE], axis=1)
    values = operating_point_metrics(OperatingPoint("sensitivity", 0.7, "b", "validation"), LABELS, probs)
    # at 0.5: 0.6 and 0.5 .. 0.9 positive → sens 1, spec 3/4; at 0.7: sens 2/3, spec 1
    assert values["test/at_0.5/sensitivity"] == 1.0 and values["test/at_0.5/specificity"] == 0.75
    assert values["test/at_threshold/sensitivity"] == pytest.approx(2 / 3)
    assert values["test/at_threshold/specificity"] == 1.0
    assert values["test/at_threshold/accuracy"] == pytest.approx(6 / 7)
    assert values["test/threshold"] == 0.7


def test_a_trained_model_predicts_at_its_operating_point():
    point = OperatingPoint("youden", 0.3, "pneumonia", "validation")
    model = TrainedModel(SimpleNamespace(classes=["normal", "pneumonia"]), {}, "model.ckpt", {}, point)
    frame = model.prediction_frame(["p1", "p2"], np.array([[0.6, 0.4], [0.8, 0.2]]))
    assert list(frame["predicted"]) == ["pneumonia", "normal"]  # the most probable class would say normal twice
    assert list(frame["confidence"]) == pytest.approx([0.4, 0.8])
