"""Decision-level fusion procedures that work on trained models' class probabilities.

These are not torch modules: they combine the predictions of models trained separately (usually the
unimodal CNN / ANN / signal models of one comparison), and each is fitted on data that the models
did not train on.

* :func:`tune_fusion_weights` — weights of a weighted probability average, chosen on the
  **validation** set (the MPI fusion study's weighted late fusion). The search is a grid over the
  simplex; the chosen weights are applied to test probabilities with :func:`weighted_mean`.
* :class:`StackingMetaLearner` — a scikit-learn meta-learner (logistic regression by default) fitted
  on **out-of-fold** predictions: :func:`out_of_fold_predictions` trains a model per fold on the other
  folds and predicts the held-out fold, and refuses a fold whose training and prediction samples
  overlap, so the meta-learner never sees a prediction for a sample its base model trained on.
* :func:`weighted_mean` with equal weights is ``ensemble_mean``: the average of several trained
  models' probabilities (e.g. the four backbones of the cardiac-MRI study).

:data:`PROCEDURES` registers them by name (``late_weighted``, ``stacking``, ``ensemble_mean``) as
functions of :class:`DecisionInputs` (the models' validation and test probabilities) returning the
fused test probabilities and what was fitted; ``python -m lightning_fusion.compare`` applies them to
the unimodal models it trained.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from lightning_fusion.registry import Registry

_EPS = 1e-12


def _check_probabilities(probs: Mapping[str, np.ndarray], labels: np.ndarray | None = None) -> int:
    """All arrays ``(N, K)`` with the same N and K; returns N."""
    if not probs:
        raise ValueError("no model predictions to combine")
    shapes = {name: np.asarray(p).shape for name, p in probs.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"every model needs (samples, classes) probabilities of one shape, got {shapes}")
    n = next(iter(shapes.values()))[0]
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} predicted samples")
    return n


def weighted_mean(probs: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Weighted average of class probabilities (equal weights: ``ensemble_mean``)."""
    _check_probabilities(probs)
    weights = weights or {name: 1.0 for name in probs}
    missing = sorted(set(probs) - set(weights))
    if missing:
        raise ValueError(f"no weight for model(s) {missing}")
    total = sum(weights[name] for name in probs)
    if total <= 0 or any(weights[name] < 0 for name in probs):
        raise ValueError(f"weights must be >= 0 and not all 0, got {dict(weights)}")
    return sum(weights[name] / total * np.asarray(p, dtype=np.float64) for name, p in probs.items())


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], _EPS, 1.0))))


def tune_fusion_weights(
    val_probs: Mapping[str, np.ndarray], val_labels: np.ndarray, step: float = 0.05
) -> dict[str, float]:
    """Weights on the simplex (multiples of ``step``) that minimise validation log loss.

    Only validation predictions go in, so the test set cannot influence the weights. Ties go to the
    weights closest to uniform (a flat optimum does not pick an arbitrary corner).
    """
    _check_probabilities(val_probs, val_labels)
    if not 0 < step <= 0.5 or abs(round(1 / step) - 1 / step) > 1e-9:
        raise ValueError(f"step must divide 1 (e.g. 0.05, 0.1, 0.25), got {step}")
    names = sorted(val_probs)
    units = round(1 / step)
    best: tuple[float, float, tuple[int, ...]] | None = None
    uniform = np.full(len(names), 1 / len(names))
    for cut in itertools.combinations(range(units + len(names) - 1), len(names) - 1):
        counts = np.diff((-1, *cut, units + len(names) - 1)) - 1  # stars and bars
        weights = counts / units
        fused = sum(w * np.asarray(val_probs[n], dtype=np.float64) for w, n in zip(weights, names))
        score = (round(log_loss(fused, val_labels), 12), float(np.abs(weights - uniform).sum()), tuple(counts))
        if best is None or score < best:
            best = score
    return {name: int(count) / units for name, count in zip(names, best[2])}


@dataclass
class OutOfFold:
    """Out-of-fold class probabilities: ``probs[i]`` was predicted by a model that never saw sample i."""

    probs: np.ndarray
    folds: np.ndarray  # fold index per sample


def out_of_fold_predictions(
    labels: np.ndarray,
    groups: Sequence[str],
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_splits: int = 5,
    seed: int = 0,
) -> OutOfFold:
    """Predict every sample with a model trained on the other folds (patient-grouped, stratified).

    ``fit_predict(train_index, predict_index)`` trains a fresh model on ``train_index`` and returns
    ``(len(predict_index), K)`` probabilities. A fold whose two index sets share a sample or a patient
    is an error, so the result is out-of-fold by construction.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    folds = np.full(len(labels), -1)
    probs: np.ndarray | None = None
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fold, (train_index, predict_index) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        if set(train_index) & set(predict_index) or set(groups[train_index]) & set(groups[predict_index]):
            raise AssertionError(f"fold {fold}: training and predicted samples overlap")
        predicted = np.asarray(fit_predict(train_index, predict_index), dtype=np.float64)
        if probs is None:
            probs = np.zeros((len(labels), predicted.shape[1]))
        probs[predict_index] = predicted
        folds[predict_index] = fold
    assert probs is not None and (folds >= 0).all()
    return OutOfFold(probs=probs, folds=folds)


@dataclass
class StackingMetaLearner:
    """A scikit-learn classifier on the concatenated per-model probabilities (log-odds features).

    Fit it only on :class:`OutOfFold` predictions (the type is required), then apply it to the base
    models' test predictions, given in the same model order.
    """

    estimator: ClassifierMixin = field(default_factory=lambda: LogisticRegression(max_iter=1000))
    models: list[str] = field(default_factory=list)

    def fit(self, oof: Mapping[str, OutOfFold], labels: np.ndarray) -> StackingMetaLearner:
        if not all(isinstance(o, OutOfFold) for o in oof.values()):
            raise TypeError("stacking is fitted on out-of-fold predictions only (out_of_fold_predictions)")
        self.models = sorted(oof)
        _check_probabilities({name: o.probs for name, o in oof.items()}, labels)
        self.estimator = clone(self.estimator).fit(self._features({n: o.probs for n, o in oof.items()}), labels)
        return self

    def predict_proba(self, probs: Mapping[str, np.ndarray]) -> np.ndarray:
        if not self.models:
            raise RuntimeError("StackingMetaLearner.predict_proba called before fit")
        if sorted(probs) != self.models:
            raise ValueError(f"stacking was fitted on models {self.models}, got {sorted(probs)}")
        return self.estimator.predict_proba(self._features(probs))

    def _features(self, probs: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.log(np.clip(np.asarray(probs[n]), _EPS, 1.0)) for n in self.models], axis=1)


# --------------------------------------------------------------------------------------------------
# The procedures by name (what ``compare --fusions`` accepts beside the trained fusions)
# --------------------------------------------------------------------------------------------------
@dataclass
class DecisionInputs:
    """Trained models' probabilities for a decision-level procedure, keyed by model name.

    ``val`` and ``test`` hold ``(N, K)`` probabilities of the same models; ``val_labels`` and
    ``val_groups`` (patient ids) describe the validation rows; ``train_groups`` are the patients
    the models trained on, which no fitted procedure may see a prediction for.
    """

    val: Mapping[str, np.ndarray]
    val_labels: np.ndarray
    val_groups: Sequence[str]
    train_groups: Sequence[str]
    test: Mapping[str, np.ndarray]
    num_classes: int

    def __post_init__(self) -> None:
        if sorted(self.val) != sorted(self.test):
            raise ValueError(
                f"validation predictions of {sorted(self.val)} but test predictions of {sorted(self.test)}"
            )
        _check_probabilities(self.val, np.asarray(self.val_labels))
        _check_probabilities(self.test)
        if len(self.val_groups) != len(self.val_labels):
            raise ValueError(f"{len(self.val_groups)} validation patient ids for {len(self.val_labels)} labels")


PROCEDURES: Registry = Registry("decision-level procedure")


def held_out_predictions(
    probs: np.ndarray, predicted_groups: Sequence[str], trained_groups: Sequence[str]
) -> OutOfFold:
    """Predictions of a model for patients it never trained on, as one out-of-fold block.

    A model's validation predictions are out-of-fold by construction: the validation split is the
    fold held out from its training. Any patient in both sets is an error, so a meta-learner fitted
    on the result never sees an in-fold prediction.
    """
    overlap = sorted(set(predicted_groups) & set(trained_groups))
    if overlap:
        raise AssertionError(
            f"{len(overlap)} patient(s) predicted by a model that trained on them, e.g. {overlap[:5]}: not out-of-fold"
        )
    probs = np.asarray(probs, dtype=np.float64)
    return OutOfFold(probs=probs, folds=np.zeros(len(probs), dtype=int))


@PROCEDURES.register(
    "late_weighted",
    level="decision",
    fitted_on="validation predictions (weights on the simplex, minimum log loss)",
    study="MPI SPECT fusion study (weighted late fusion of the CNN and the clinical model)",
)
def tuned_late_fusion(inputs: DecisionInputs) -> tuple[np.ndarray, dict]:
    """Weighted average of the models' probabilities, weights tuned on validation only."""
    weights = tune_fusion_weights(inputs.val, np.asarray(inputs.val_labels))
    return weighted_mean(inputs.test, weights), {"weights": weights, "fitted_on": "val"}


@PROCEDURES.register(
    "stacking",
    level="decision",
    fitted_on="out-of-fold predictions (the validation fold, held out from every base model)",
    study="stacked generalisation (Wolpert, 1992); logistic-regression meta-learner",
)
def stacking(inputs: DecisionInputs) -> tuple[np.ndarray, dict]:
    """Logistic regression on the models' log-probabilities, fitted on held-out (validation) predictions."""
    labels = np.asarray(inputs.val_labels)
    absent = sorted(set(range(inputs.num_classes)) - set(labels.tolist()))
    if absent:
        raise ValueError(
            f"stacking: no validation patient of class index {absent}; the meta-learner cannot learn a class "
            "it never sees (use a larger validation split)"
        )
    oof = {name: held_out_predictions(p, inputs.val_groups, inputs.train_groups) for name, p in inputs.val.items()}
    meta = StackingMetaLearner().fit(oof, labels)
    details = {
        "meta_learner": repr(meta.estimator),
        "models": meta.models,
        "fitted_on": "val",
        "fitted_on_patients": len(labels),
        "coefficients": np.asarray(meta.estimator.coef_).round(4).tolist(),
    }
    return meta.predict_proba(inputs.test), details


@PROCEDURES.register(
    "ensemble_mean",
    level="decision",
    fitted_on="nothing (equal weights)",
    study="cardiac-MRI study (mean of four CNN backbones' probabilities)",
)
def ensemble_mean(inputs: DecisionInputs) -> tuple[np.ndarray, dict]:
    """The plain average of the models' probabilities."""
    weights = {name: 1 / len(inputs.test) for name in sorted(inputs.test)}
    return weighted_mean(inputs.test, weights), {"weights": weights, "fitted_on": "nothing"}
