"""Exact Shapley values of modalities from the scores of subset models, with paired bootstrap intervals.

A modality's value, as the HAIM study measured it (Soenksen et al., npj Digit. Med. 2022): train one
model on every non-empty subset ``S`` of the ``M`` modalities, score each on the same test patients
(``v(S)``: its AUROC, its balanced accuracy), and give modality ``i`` its Shapley value

    φ_i = Σ_{S ⊆ N∖{i}} |S|! (M − |S| − 1)! / M! · (v(S ∪ {i}) − v(S)),

its marginal contribution averaged over every order in which the modalities could be added.
``v(∅)``, the score of a model without any input, is the *chance level* of the metric
(:func:`chance_level`): 0.5 for macro one-vs-rest AUROC, and 1/K for balanced accuracy over K classes
(0.5 for a binary task), what a constant prediction scores. The values then add up to
``v(all) − v(∅)`` (efficiency); a modality that changes no score gets 0, two interchangeable ones the
same. Exact: all ``2^M − 1`` subset scores are needed.

:func:`subset_shapley` adds percentile intervals: each bootstrap replicate resamples the test rows
once (stratified by class, as :mod:`~lightning_fusion.evaluation.bootstrap`), scores *every* subset
model on those same rows (paired, as :mod:`~lightning_fusion.evaluation.paired`) and computes the
Shapley values of that replicate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from math import factorial
from typing import TypeVar

import numpy as np

from lightning_fusion.evaluation.bootstrap import Interval, batched_metrics, stratified_resamples

Score = TypeVar("Score", float, np.ndarray)
SHAPLEY_METRICS = ("auroc", "balanced_accuracy")


def chance_level(metric: str, num_classes: int) -> float:
    """``v(∅)``: the score of a model without input (a constant prediction) on ``num_classes`` classes.

    Macro one-vs-rest AUROC: 0.5 (every score tied). Balanced accuracy (mean recall): ``1 / num_classes``,
    since a constant prediction recalls one class fully and the others not at all (0.5 for a binary task).
    """
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    levels = {"auroc": 0.5, "balanced_accuracy": 1.0 / num_classes}
    if metric not in levels:
        raise ValueError(f"no chance level for metric {metric!r}; known: {sorted(levels)}")
    return levels[metric]


def all_subsets(players: Sequence[str]) -> list[frozenset[str]]:
    """Every non-empty subset of ``players``, smallest first, in the players' order within a size."""
    return [frozenset(c) for size in range(1, len(players) + 1) for c in combinations(players, size)]


def shapley_values(
    scores: Mapping[Iterable[str], Score], players: Sequence[str], empty: float | np.ndarray
) -> dict[str, Score]:
    """Exact Shapley value of each player from ``scores`` (non-empty subset → score) and ``v(∅) = empty``.

    Args:
        scores: one score per non-empty subset of ``players`` (keys: sets or tuples of player names); a
            score may be an array ``(R,)`` of replicates, which gives ``(R,)`` values per player.
        players: the modalities, in the order of the result.
        empty: ``v(∅)``, the metric's chance level (:func:`chance_level`), or one per game (an array that
            broadcasts with the scores, as for per-patient games).
    """
    players = list(players)
    if len(set(players)) != len(players) or not players:
        raise ValueError(f"players must be distinct and at least one, got {players}")
    by_subset = {}
    for key, score in scores.items():
        if isinstance(key, str):
            raise TypeError(f"subset keys are collections of player names, got the string {key!r}")
        by_subset[frozenset(key)] = score
    unknown = [sorted(s) for s in by_subset if not s <= set(players) or not s]
    if unknown:
        raise ValueError(f"scores for subsets that are empty or not of {players}: {unknown}")
    missing = [sorted(s) for s in all_subsets(players) if s not in by_subset]
    if missing:
        raise ValueError(f"exact Shapley values need a score for every non-empty subset; missing: {missing}")

    def value(subset: frozenset[str]) -> Score:
        return by_subset[subset] if subset else empty

    m = len(players)
    values = {}
    for player in players:
        others = [p for p in players if p != player]
        total: Score = 0.0
        for size in range(m):
            weight = factorial(size) * factorial(m - size - 1) / factorial(m)
            for coalition in map(frozenset, combinations(others, size)):
                total = total + weight * (value(coalition | {player}) - value(coalition))
        values[player] = total
    return values


@dataclass(frozen=True)
class SubsetShapley:
    """Shapley values and subset scores, each an :class:`Interval`, per metric."""

    players: list[str]
    values: dict[str, dict[str, Interval]]  # metric → player → Shapley value [interval]
    subset_scores: dict[str, dict[frozenset[str], Interval]]  # metric → subset → v(S) [interval]
    empty: dict[str, float]  # metric → v(∅), the chance level
    n_resamples: int


def subset_shapley(
    labels: np.ndarray,
    probs_by_subset: Mapping[Iterable[str], np.ndarray],
    players: Sequence[str],
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    metrics: Sequence[str] = SHAPLEY_METRICS,
) -> SubsetShapley:
    """Shapley values of ``metrics`` with paired, stratified bootstrap percentile intervals.

    Args:
        labels: ``(N,)`` true class indices of the test rows.
        probs_by_subset: the ``(N, K)`` test probabilities of the model trained on each non-empty subset
            of ``players``, every one on the same rows in the same order.
        n_resamples: bootstrap replicates (the experiment's ``evaluation.bootstrap_resamples``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = {frozenset(k): np.asarray(p, dtype=np.float64) for k, p in probs_by_subset.items()}
    shapes = {tuple(sorted(k)): p.shape for k, p in probs.items()}
    if len(set(shapes.values())) != 1 or next(iter(shapes.values()))[0] != len(labels):
        raise ValueError(f"every subset model needs (N, K) probabilities for the same N = {len(labels)} rows: {shapes}")
    num_classes = next(iter(probs.values())).shape[1]
    empty = {metric: chance_level(metric, num_classes) for metric in metrics}
    rows = stratified_resamples(labels, n_resamples, seed)  # one draw of rows, shared by every subset model
    point: dict[str, dict[frozenset[str], float]] = {metric: {} for metric in metrics}
    replicates: dict[str, dict[frozenset[str], np.ndarray]] = {metric: {} for metric in metrics}
    for subset, subset_probs in probs.items():
        whole = batched_metrics(labels[None], subset_probs[None])
        chunks = [batched_metrics(labels[c], subset_probs[c]) for c in np.array_split(rows, max(1, len(rows) // 500))]
        for metric in metrics:
            point[metric][subset] = float(whole[metric][0])
            replicates[metric][subset] = np.concatenate([chunk[metric] for chunk in chunks])
    tail = (1 - confidence) / 2 * 100

    def interval(estimate: float, samples: np.ndarray) -> Interval:
        samples = samples[np.isfinite(samples)]  # an AUROC undefined in a replicate
        low, high = np.percentile(samples, [tail, 100 - tail]) if len(samples) else (np.nan, np.nan)
        return Interval(estimate, float(low), float(high), confidence)

    values, subset_scores = {}, {}
    for metric in metrics:
        estimates = shapley_values(point[metric], players, empty[metric])
        per_replicate = shapley_values(replicates[metric], players, empty[metric])
        values[metric] = {p: interval(float(estimates[p]), per_replicate[p]) for p in players}
        subset_scores[metric] = {
            s: interval(point[metric][s], replicates[metric][s]) for s in all_subsets(list(players))
        }
    return SubsetShapley(list(players), values, subset_scores, empty, n_resamples)
