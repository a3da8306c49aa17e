"""The robustness curve: test AUROC as one modality is masked for a growing fraction of the test patients.

For a model trained with ``data.keep_missing_modalities`` (a fusion that masks absent modalities):
how much worse does it get when the table, or the image, goes missing for 25%, 50%, ... of the
patients? For each modality and each fraction ``f`` in :data:`FRACTIONS`, the first ``round(f · N)``
test patients of one seeded permutation (the same for every modality, and nested: the patients
masked at 25% are masked at 50% too) have the modality marked absent, exactly as a patient who lacks
it, and the tested model predicts them again. A chosen patient who already lacks the modality is
unchanged; one for whom it is the only modality keeps it (no fusion predicts from nothing) and is
counted in ``kept_only_modality``. The AUROC is the macro one-vs-rest AUROC of the run's metrics
(:func:`~lightning_fusion.evaluation.bootstrap.point_metrics`), so fraction 0 is the run's test AUROC.

Nothing is refitted and no decision is taken on the test set: the tested checkpoint predicts the same
patients under other presence flags. :func:`robustness_curve` is pure: the predictions come from a
callable (the fit glue runs the model, :func:`~lightning_fusion.explain.masked.masked_probabilities`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from lightning_fusion.evaluation.bootstrap import point_metrics

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class MaskingCondition:
    """One point of the curve: ``modality`` masked for the ``chosen`` first patients of the permutation.

    Attributes:
        present: modality → ``(N,)`` bool presence flags of every modality under this condition.
        masked: patients who had the modality and lost it here.
        kept_only_modality: chosen patients who keep it because it is all they have.
    """

    modality: str
    fraction: float
    chosen: int
    masked: int
    kept_only_modality: int
    present: dict[str, np.ndarray]


def masking_conditions(
    present: Mapping[str, np.ndarray],
    modalities: Sequence[str],
    n: int,
    fractions: Sequence[float] = FRACTIONS,
    seed: int = 0,
) -> list[MaskingCondition]:
    """Every (modality, fraction) condition, modality by modality; a modality ``present`` omits is present for all.

    Raises:
        ValueError: a fraction outside [0, 1], or flags of the wrong length.
    """
    bad = [f for f in fractions if not 0 <= f <= 1]
    if bad:
        raise ValueError(f"robustness fractions must be in [0, 1], got {bad}")
    flags = {m: np.asarray(present[m], dtype=bool) if m in present else np.ones(n, dtype=bool) for m in modalities}
    for modality, column in flags.items():
        if column.shape != (n,):
            raise ValueError(f"present[{modality!r}] has {column.shape[0]} flags for {n} patients")
    order = np.random.default_rng(seed).permutation(n)
    conditions = []
    for modality in modalities:
        others = np.zeros(n, dtype=bool)
        for other in modalities:
            if other != modality:
                others |= flags[other]
        for fraction in fractions:
            chosen = np.zeros(n, dtype=bool)
            chosen[order[: round(fraction * n)]] = True
            dropped = chosen & flags[modality] & others
            conditions.append(
                MaskingCondition(
                    modality=modality,
                    fraction=float(fraction),
                    chosen=int(chosen.sum()),
                    masked=int(dropped.sum()),
                    kept_only_modality=int((chosen & flags[modality] & ~others).sum()),
                    present=flags | {modality: flags[modality] & ~dropped},
                )
            )
    return conditions


def robustness_curve(
    labels: np.ndarray,
    predict: Callable[[Sequence[Mapping[str, np.ndarray]]], Sequence[np.ndarray]],
    present: Mapping[str, np.ndarray],
    modalities: Sequence[str],
    fractions: Sequence[float] = FRACTIONS,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per modality and fraction: ``modality``, ``fraction``, ``chosen``, ``masked``,
    ``kept_only_modality``, ``auroc`` (NaN when no class has both outcomes).

    Args:
        labels: ``(N,)`` test labels.
        predict: presence flag sets (modality → ``(N,)`` bool) → one ``(N, K)`` probability array each;
            called once with every condition, so the caller can batch them.
        present: the test patients' own presence flags.
    """
    labels = np.asarray(labels, dtype=np.int64)
    conditions = masking_conditions(present, modalities, len(labels), fractions, seed)
    probabilities = predict([c.present for c in conditions])
    if len(probabilities) != len(conditions):
        raise ValueError(f"predict returned {len(probabilities)} probability arrays for {len(conditions)} conditions")
    return [
        {
            "modality": c.modality,
            "fraction": c.fraction,
            "chosen": c.chosen,
            "masked": c.masked,
            "kept_only_modality": c.kept_only_modality,
            "auroc": point_metrics(labels, probs)["auroc"],
        }
        for c, probs in zip(conditions, probabilities)
    ]


def robustness_figure(rows: Sequence[Mapping[str, Any]], n_test: int) -> Figure:
    """Test AUROC against the fraction of patients with the modality masked, one line per modality."""
    figure, axes = plt.subplots(figsize=(5, 4.2))
    for modality in dict.fromkeys(row["modality"] for row in rows):
        points = [row for row in rows if row["modality"] == modality]
        axes.plot(
            [100 * row["fraction"] for row in points], [row["auroc"] for row in points], marker="o", label=modality
        )
    axes.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    axes.set(
        xlabel="Test patients with the modality masked (%)",
        ylabel="Test AUROC (macro one-vs-rest)",
        title=f"Robustness to a missing modality (n={n_test})",
        xlim=(-3, 103),
    )
    axes.legend(title="masked", loc="lower left", fontsize=8)
    figure.tight_layout()
    return figure
