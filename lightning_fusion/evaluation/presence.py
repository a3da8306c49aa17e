"""Test metrics per presence pattern: how a model does on the patients with all modalities, image only, ...

With ``data.keep_missing_modalities`` a test set mixes patients with every modality and patients
without some; one overall figure hides whether the model still works when the table is missing.
:func:`presence_pattern_metrics` groups the test patients by which of the model's modalities they
have (the pattern ``image+tabular``, ``image``, ``tabular``) and gives each group its patient count,
class counts and the bootstrap intervals of :mod:`lightning_fusion.evaluation.bootstrap` (stratified
within the group). Small groups get wide intervals, and a metric that a group cannot define (AUROC
without both outcomes of a class) is left out, never imputed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lightning_fusion.evaluation.bootstrap import METRICS, bootstrap_intervals


def presence_patterns(present: Mapping[str, np.ndarray], modalities: Sequence[str], n: int) -> np.ndarray:
    """``(n,)`` pattern names: the present modalities of each patient joined by ``+`` in ``modalities`` order.

    A modality ``present`` does not name counts as present for every patient.
    """
    flags = {m: np.asarray(present[m], dtype=bool) if m in present else np.ones(n, dtype=bool) for m in modalities}
    for modality, column in flags.items():
        if column.shape != (n,):
            raise ValueError(f"present[{modality!r}] has {column.shape[0]} flags for {n} patients")
    return np.array(["+".join(m for m in modalities if flags[m][i]) or "(none)" for i in range(n)], dtype=object)


def presence_pattern_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    patterns: np.ndarray,
    classes: Sequence[str],
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """One row per pattern (the most patients first): ``pattern``, ``patients``, class counts, intervals.

    ``intervals`` maps each metric the group defines to its
    :class:`~lightning_fusion.evaluation.bootstrap.Interval`.
    """
    labels, probs, patterns = np.asarray(labels), np.asarray(probs, dtype=np.float64), np.asarray(patterns)
    rows = []
    names, counts = np.unique(patterns, return_counts=True)
    for pattern in names[np.argsort(-counts, kind="stable")]:
        members = patterns == pattern
        intervals = bootstrap_intervals(labels[members], probs[members], n_resamples, seed, confidence)
        rows.append(
            {
                "pattern": str(pattern),
                "patients": int(members.sum()),
                "classes": {c: int((labels[members] == k).sum()) for k, c in enumerate(classes)},
                "intervals": {m: intervals[m] for m in METRICS if np.isfinite(intervals[m].value)},
            }
        )
    return rows
