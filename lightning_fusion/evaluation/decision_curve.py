"""Decision-curve analysis: the net benefit of acting on a model's predicted risk (Vickers & Elkin, 2006).

A clinician who would treat a patient when the risk of the condition exceeds a threshold ``p_t``
weighs a missed case against an unnecessary treatment by ``(1 − p_t) : p_t``. Treating every patient
whose predicted probability is ``≥ p_t`` then has the net benefit

    NB(p_t) = TP / N − FP / N · p_t / (1 − p_t)

(true positives, in units of "true positives per patient", minus the false positives at their
exchange rate). Two references: *treat all*, ``NB = π − (1 − π) · p_t / (1 − p_t)`` with prevalence
``π``, and *treat none*, ``NB = 0``. A model is worth using at the thresholds where its curve lies
above both ("Decision curve analysis: a novel method for evaluating prediction models", Medical
Decision Making 26(6), 2006).

Binary tasks get one curve, for the second class (the positive one, index 1). A task with more
classes gets one curve per class, one-vs-rest ("treat for class k when P(k) ≥ p_t"), for every class
with both outcomes in the data. Pure numpy; the figures are matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)  # p_t = 0.01, 0.02, ..., 0.99


def net_benefit(positive: np.ndarray, scores: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """``(T,)`` net benefit of treating the patients with ``scores >= p_t``, for each threshold ``p_t`` in (0, 1).

    Args:
        positive: ``(N,)`` bool, true where the patient has the condition.
        scores: ``(N,)`` predicted probabilities of the condition.
        thresholds: ``(T,)`` threshold probabilities, each strictly between 0 and 1.
    """
    positive, scores, thresholds = _checked(positive, scores, thresholds)
    treated = scores[None, :] >= thresholds[:, None]  # (T, N)
    true_positives = (treated & positive[None, :]).sum(axis=1)
    false_positives = (treated & ~positive[None, :]).sum(axis=1)
    n = len(positive)
    return true_positives / n - false_positives / n * thresholds / (1 - thresholds)


def treat_all_net_benefit(positive: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """``(T,)`` net benefit of treating every patient: ``π − (1 − π) · p_t / (1 − p_t)``."""
    positive = np.asarray(positive, dtype=bool)
    return net_benefit(positive, np.ones(len(positive)), thresholds)


def decision_curves(
    labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], thresholds: np.ndarray = THRESHOLDS
) -> dict[str, dict[str, list[float] | float]]:
    """Class → ``{thresholds, net_benefit, treat_all, prevalence}`` (see the module docstring for which classes)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    shown = [1] if len(classes) == 2 else range(len(classes))
    curves: dict[str, dict[str, list[float] | float]] = {}
    for k in shown:
        positive = labels == k
        if positive.all() or not positive.any():
            continue
        curves[classes[k]] = {
            "thresholds": np.asarray(thresholds, dtype=float).tolist(),
            "net_benefit": net_benefit(positive, probs[:, k], thresholds).tolist(),
            "treat_all": treat_all_net_benefit(positive, thresholds).tolist(),
            "prevalence": float(positive.mean()),
        }
    return curves


def decision_curve_figure(
    models: Mapping[str, Mapping[str, Mapping[str, list[float] | float]]], title: str = "Decision curves"
) -> Figure:
    """One panel per class: each model's net benefit, treat all (grey) and treat none (black), against ``p_t``.

    ``models`` maps a model's name to its :func:`decision_curves` (the same patients for every model,
    so treat all is drawn once per class).
    """
    classes = list(dict.fromkeys(c for curves in models.values() for c in curves))
    figure, axes = plt.subplots(1, max(1, len(classes)), figsize=(4.6 * max(1, len(classes)), 4.2), squeeze=False)
    for axis, name in zip(axes[0], classes, strict=False):
        reference = next(curves[name] for curves in models.values() if name in curves)
        prevalence = float(reference["prevalence"])
        thresholds = np.asarray(reference["thresholds"])
        for model, curves in models.items():
            if name in curves:
                axis.plot(thresholds, curves[name]["net_benefit"], label=model)
        axis.plot(thresholds, reference["treat_all"], color="grey", linestyle="--", linewidth=1, label="treat all")
        axis.axhline(0.0, color="black", linewidth=1, label="treat none")
        axis.set(
            xlabel="Threshold probability",
            ylabel="Net benefit",
            xlim=(0, 1),
            ylim=(-0.05 - 0.15 * prevalence, 1.15 * prevalence),
            title=f"{name} (prevalence {prevalence:.2f})" if len(classes) > 1 or len(models) > 1 else name,
        )
        axis.legend(loc="upper right", fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def _checked(positive: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if positive.shape != scores.shape or positive.ndim != 1 or not len(positive):
        raise ValueError(f"positive {positive.shape} and scores {scores.shape} must be the same non-empty 1-D shape")
    if not np.all((thresholds > 0) & (thresholds < 1)):
        raise ValueError(f"threshold probabilities must lie strictly between 0 and 1, got {thresholds.tolist()}")
    return positive, scores, thresholds
