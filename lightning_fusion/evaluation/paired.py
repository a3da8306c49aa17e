"""Paired comparison of two models on the same test patients.

* :func:`mcnemar_test` — do the two models make different numbers of errors? Only the discordant
  patients count (``b``: A right and B wrong, ``c``: A wrong and B right). Exact two-sided binomial
  test on ``b`` of ``b + c`` (``scipy.stats.binomtest``), the recommended form for small counts.
* :func:`paired_auroc_difference` — AUROC(A) − AUROC(B) with a paired, stratified bootstrap interval
  (the same resampled patients for both models) and a two-sided bootstrap p-value (twice the share
  of resampled differences on the far side of 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from lightning_fusion.evaluation.bootstrap import batched_metrics, point_metrics, stratified_resamples


@dataclass(frozen=True)
class McNemarResult:
    a_only_correct: int  # b
    b_only_correct: int  # c
    p_value: float

    @property
    def discordant(self) -> int:
        return self.a_only_correct + self.b_only_correct


@dataclass(frozen=True)
class PairedDifference:
    """``value`` = metric(A) − metric(B), its bootstrap interval, and the bootstrap p-value for 0."""

    value: float
    low: float
    high: float
    p_value: float


def mcnemar_test(labels: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray) -> McNemarResult:
    """Exact McNemar test on the patients where exactly one of the two models is right."""
    labels, predicted_a, predicted_b = (np.asarray(x) for x in (labels, predicted_a, predicted_b))
    if not (labels.shape == predicted_a.shape == predicted_b.shape):
        raise ValueError(f"shapes differ: labels {labels.shape}, A {predicted_a.shape}, B {predicted_b.shape}")
    correct_a, correct_b = predicted_a == labels, predicted_b == labels
    b = int((correct_a & ~correct_b).sum())
    c = int((~correct_a & correct_b).sum())
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return McNemarResult(b, c, p_value)


def paired_auroc_difference(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    metric: str = "auroc",
) -> PairedDifference:
    """metric(A) − metric(B) (macro one-vs-rest AUROC by default) on the same bootstrap resamples."""
    labels = np.asarray(labels, dtype=np.int64)
    probs_a, probs_b = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if probs_a.shape != probs_b.shape or len(labels) != len(probs_a):
        raise ValueError(f"need two (N, K) probability arrays for N labels: {probs_a.shape}, {probs_b.shape}")
    value = point_metrics(labels, probs_a)[metric] - point_metrics(labels, probs_b)[metric]
    rows = stratified_resamples(labels, n_resamples, seed)
    differences = []
    for chunk in np.array_split(rows, max(1, len(rows) // 500)):
        y = labels[chunk]
        differences.append(batched_metrics(y, probs_a[chunk])[metric] - batched_metrics(y, probs_b[chunk])[metric])
    diffs = np.concatenate(differences)
    diffs = diffs[np.isfinite(diffs)]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    # two-sided: how often the resampled difference falls on the other side of 0 than the estimate
    p_value = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    return PairedDifference(float(value), float(low), float(high), float(p_value))


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone), for a family of tests run together."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()
