"""Stratified, seeded bootstrap confidence intervals for the test metrics.

A test set of 30 patients gives a balanced accuracy that can move by ten points with one patient.
:func:`bootstrap_intervals` resamples the test patients with replacement *within each class* (so
every resample keeps the class counts, and every metric stays defined), recomputes the metrics, and
reports the percentile interval. Metric definitions match the logged ones
(:mod:`lightning_fusion.metrics`): accuracy, balanced accuracy (macro recall), macro F1, macro
one-vs-rest AUROC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, rankdata

METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval."""

    value: float
    low: float
    high: float
    confidence: float = 0.95

    def __str__(self) -> str:  # 0.910 [0.840, 0.960]
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def batched_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of ``R`` prediction sets at once: ``labels`` ``(R, N)``, ``probs`` ``(R, N, K)`` → ``{name: (R,)}``.

    Balanced accuracy and macro F1 average over all K classes (a class with no sample counts 0, as in
    torchmetrics); AUROC averages one-vs-rest AUCs over the classes present in every row (tied scores
    count one half, via average ranks).
    """
    rows, n, k = probs.shape
    predicted = probs.argmax(axis=2)
    flat = (np.arange(rows)[:, None] * k * k + labels * k + predicted).ravel()
    matrix = np.bincount(flat, minlength=rows * k * k).reshape(rows, k, k).astype(np.float64)
    true_positive = np.diagonal(matrix, axis1=1, axis2=2)
    support, predicted_count = matrix.sum(axis=2), matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, true_positive / support, 0.0)
        precision = np.where(predicted_count > 0, true_positive / predicted_count, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    aucs = []
    for cls in range(k):
        positive = labels == cls
        n_pos = positive.sum(axis=1)
        n_neg = n - n_pos
        if (n_pos == 0).any() or (n_neg == 0).any():
            continue  # not defined for this class in some row: left out of the macro average
        ranks = rankdata(probs[:, :, cls], axis=1)
        aucs.append(((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return {
        "accuracy": true_positive.sum(axis=1) / n,
        "balanced_accuracy": recall.mean(axis=1),
        "f1_macro": f1.mean(axis=1),
        "auroc": np.mean(aucs, axis=0) if aucs else np.full(rows, np.nan),
    }


def point_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and macro one-vs-rest AUROC of ``probs`` ``(N, K)``."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    return {name: float(v[0]) for name, v in batched_metrics(labels[None], probs[None]).items()}


def stratified_resamples(labels: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, N)`` row indices; each row draws, per class, as many samples as the class has."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    columns = []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        columns.append(members[rng.integers(0, len(members), size=(n_resamples, len(members)))])
    return np.concatenate(columns, axis=1)


def bootstrap_intervals(
    labels: np.ndarray, probs: np.ndarray, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Interval]:
    """Percentile intervals of :data:`METRICS` over stratified bootstrap resamples of the samples.

    Args:
        labels: ``(N,)`` true class indices.
        probs: ``(N, K)`` class probabilities.
        n_resamples: at least 1000 (the 2.5th/97.5th percentiles need enough points in each tail).
        seed: the resampling seed; the same inputs and seed give the same interval.
    """
    if n_resamples < 1000:
        raise ValueError(f"n_resamples must be >= 1000 for a stable 95% interval, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (N, K) probabilities for N labels, got {probs.shape} for {len(labels)}")
    point = point_metrics(labels, probs)
    rows = stratified_resamples(labels, n_resamples, seed)
    samples = {name: [] for name in METRICS}
    for chunk in np.array_split(rows, max(1, len(rows) // 500)):  # bounded memory: (500, N, K) at a time
        for name, values in batched_metrics(labels[chunk], probs[chunk]).items():
            samples[name].append(values)
    tail = (1 - confidence) / 2 * 100
    intervals = {}
    for name in METRICS:
        values = np.concatenate(samples[name])
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
        intervals[name] = Interval(point[name], float(low), float(high), confidence)
    return intervals


def exact_accuracy_interval(labels: np.ndarray, predicted: np.ndarray, confidence: float = 0.95) -> Interval:
    """Clopper–Pearson interval of accuracy as a binomial proportion (``scipy.stats.binomtest``).

    It stays informative where the bootstrap cannot: with every test patient right (or wrong) each
    resample scores the same and the percentile interval collapses to a point, while 30/30 correct
    still only bounds the accuracy above 0.884.
    """
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    correct = int((labels == predicted).sum())
    ci = binomtest(correct, len(labels)).proportion_ci(confidence_level=confidence, method="exact")
    return Interval(correct / len(labels), float(ci.low), float(ci.high), confidence)
