"""Calibration: do the predicted probabilities mean what they say?

* :func:`expected_calibration_error` — top-label ECE with equal-width confidence bins (the
  definition of torchmetrics' ``MulticlassCalibrationError(norm="l1")``).
* :func:`brier_score` — mean squared distance between the probability vector and the one-hot truth
  (multiclass Brier, 0 is perfect, 2 the worst).
* :func:`reliability_bins` — per bin: mean confidence, accuracy and count (the reliability diagram).
* :func:`fit_temperature` — post-hoc temperature scaling (Guo et al., 2017): one scalar T > 0 that
  minimises the negative log-likelihood of ``softmax(log p / T)`` on **validation** predictions;
  :func:`apply_temperature` applies it to test probabilities. It never changes the predicted class.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

_EPS = 1e-12


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """``confidence``, ``accuracy`` and ``count`` per equal-width bin of the top-class probability."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct.astype(float), minlength=n_bins) / count
    return {
        "lower": edges[:-1],
        "upper": edges[1:],
        "confidence": mean_confidence,
        "accuracy": accuracy,
        "count": count,
    }


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Σ_bins (n_bin / N) · |accuracy_bin − confidence_bin| over the top-label confidence."""
    bins = reliability_bins(labels, probs, n_bins)
    used = bins["count"] > 0
    weights = bins["count"][used] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"][used] - bins["confidence"][used])))


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean over samples of Σ_k (p_k − 1[y = k])²."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(labels)]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: T > 1 softens over-confident probabilities, T < 1 sharpens them."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(val_labels: np.ndarray, val_probs: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising validation negative log-likelihood (validation only)."""
    labels = np.asarray(val_labels)

    def nll(log_t: float) -> float:
        p = apply_temperature(val_probs, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], _EPS, 1.0))))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))
