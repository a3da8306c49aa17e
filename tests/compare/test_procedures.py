"""Decision-level procedures: weight tuning on validation, out-of-fold stacking, ensemble mean."""

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss

from lightning_fusion.compare.procedures import (
    OutOfFold,
    StackingMetaLearner,
    log_loss,
    out_of_fold_predictions,
    tune_fusion_weights,
    weighted_mean,
)


def _noisy_probs(rng, labels, k, strength):
    logits = rng.normal(size=(len(labels), k))
    logits[np.arange(len(labels)), labels] += strength
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_weighted_mean_and_ensemble_mean():
    a, b = np.array([[0.8, 0.2]]), np.array([[0.2, 0.8]])
    np.testing.assert_allclose(weighted_mean({"a": a, "b": b}), [[0.5, 0.5]])
    np.testing.assert_allclose(weighted_mean({"a": a, "b": b}, {"a": 3, "b": 1}), [[0.65, 0.35]])
    with pytest.raises(ValueError, match="no weight for model"):
        weighted_mean({"a": a, "b": b}, {"a": 1})
    with pytest.raises(ValueError, match="not all 0"):
        weighted_mean({"a": a, "b": b}, {"a": 0, "b": 0})
    with pytest.raises(ValueError, match="one shape"):
        weighted_mean({"a": a, "b": np.ones((2, 2)) / 2})


def test_log_loss_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    probs = _noisy_probs(rng, labels, 3, 1.0)
    assert log_loss(probs, labels) == pytest.approx(sk_log_loss(labels, probs, labels=[0, 1, 2]))


def test_tuned_weights_favour_the_informative_model_and_are_on_the_simplex():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    probs = {"good": _noisy_probs(rng, labels, 3, 3.0), "noise": _noisy_probs(rng, labels, 3, 0.0)}
    weights = tune_fusion_weights(probs, labels, step=0.05)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["good"] > 0.8
    fused = weighted_mean(probs, weights)
    for other in ({"good": 0.5, "noise": 0.5}, {"good": 0.7, "noise": 0.3}):  # the grid optimum beats other points
        assert log_loss(fused, labels) <= log_loss(weighted_mean(probs, other), labels) + 1e-12


def test_tuned_weights_tie_goes_to_uniform_and_one_model_gets_everything():
    labels = np.array([0, 1])
    same = np.array([[0.7, 0.3], [0.4, 0.6]])
    # identical models: every weighting scores the same; the closest to uniform wins, then the first in order
    assert tune_fusion_weights({"a": same, "b": same, "c": same}, labels, step=0.25) == {"a": 0.25, "b": 0.25, "c": 0.5}
    assert tune_fusion_weights({"only": same}, labels) == {"only": 1.0}
    with pytest.raises(ValueError, match="step must divide 1"):
        tune_fusion_weights({"a": same}, labels, step=0.3)


def test_out_of_fold_predictions_never_predict_a_sample_the_model_trained_on():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 30)
    groups = [f"p{i // 2}" for i in range(60)]  # two samples per patient
    seen: list[tuple[set, set]] = []

    def fit_predict(train_index, predict_index):
        seen.append((set(train_index), set(predict_index)))
        return _noisy_probs(rng, labels[predict_index], 2, 1.0)

    oof = out_of_fold_predictions(labels, groups, fit_predict, n_splits=5, seed=0)
    assert oof.probs.shape == (60, 2) and set(oof.folds) == set(range(5))
    predicted_once = sorted(i for _, predict in seen for i in predict)
    assert predicted_once == list(range(60))  # every sample predicted exactly once
    for train, predict in seen:
        assert not train & predict
        assert not {groups[i] for i in train} & {groups[i] for i in predict}  # patient-grouped


def test_stacking_is_fitted_on_out_of_fold_predictions_only_and_predicts():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    oof = {
        "image": OutOfFold(_noisy_probs(rng, labels, 2, 2.0), np.arange(200) % 5),
        "tabular": OutOfFold(_noisy_probs(rng, labels, 2, 0.5), np.arange(200) % 5),
    }
    meta = StackingMetaLearner().fit(oof, labels)
    test_labels = rng.integers(0, 2, 100)
    test = {"image": _noisy_probs(rng, test_labels, 2, 2.0), "tabular": _noisy_probs(rng, test_labels, 2, 0.5)}
    probs = meta.predict_proba(test)
    assert probs.shape == (100, 2)
    assert (probs.argmax(1) == test_labels).mean() > 0.75
    with pytest.raises(TypeError, match="out-of-fold predictions only"):
        StackingMetaLearner().fit({"image": oof["image"].probs}, labels)
    with pytest.raises(ValueError, match="fitted on models"):
        meta.predict_proba({"image": test["image"]})
