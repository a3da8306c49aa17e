"""``compare --subsets``: one model per non-empty subset of the modalities, and each modality's Shapley value.

What is a modality worth? The HAIM study (Soenksen et al., npj Digit. Med. 2022) trained a model on every
combination of its modalities and credited each modality with its exact Shapley value of the test AUROC.
``compare --subsets`` does the same on one split (or on ``--cv K`` folds, then on the pooled out-of-fold
predictions): a single modality is the unimodal model ``compare`` always trains (the image-only CNN, the
clinical-only ANN), two or more are the experiment's own ``model.fusion`` restricted to that subset
(:func:`subset_plans`). All ``2^M − 1`` models are trained by ``compare``'s one training loop, on the same
patients and the same folds.

:func:`modality_shapley` turns their test probabilities into Shapley values of AUROC and balanced
accuracy with paired bootstrap intervals (:mod:`lightning_fusion.evaluation.shapley`); the empty subset
scores the metric's chance level (0.5 for AUROC, 1/K for balanced accuracy over K classes).
:func:`log_shapley` puts them in the parent run: metrics ``shapley/<modality>/<metric>`` (and
``..._ci_low`` / ``..._ci_high``), ``shapley.csv``, ``subset_scores.csv``, ``shapley.md``, the bar chart
``shapley.png`` and a section of ``report.html``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lightning_fusion.compare.results import ComparedModel
from lightning_fusion.config import EvaluationConfig, ExperimentConfig, evolve
from lightning_fusion.errors import ConfigError
from lightning_fusion.evaluation.report import image_html, interval_bars, markdown_table, table_html
from lightning_fusion.evaluation.scoring import png_bytes
from lightning_fusion.evaluation.shapley import SHAPLEY_METRICS, SubsetShapley, all_subsets, subset_shapley
from lightning_fusion.tracking import RunLogger, metric_key_part

MAX_SUBSET_MODALITIES = 5  # 2^5 − 1 = 31 models; six modalities would be 63
HAIM = "Soenksen et al., npj Digit. Med. 2022"


def subset_plans(config: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """``(model name, config)`` of every subset of two or more modalities: the experiment's fusion on it.

    The single-modality subsets are ``compare``'s unimodal models (planned by the caller). Refuses more
    than :data:`MAX_SUBSET_MODALITIES` modalities, and names the subset a fusion cannot take.
    """
    modalities = list(config.model.modalities)
    if len(modalities) > MAX_SUBSET_MODALITIES:
        raise ConfigError(
            f"compare --subsets trains one model per non-empty subset of model.modalities: 2^{len(modalities)} − 1 = "
            f"{2 ** len(modalities) - 1} models for {modalities}; it takes at most {MAX_SUBSET_MODALITIES} modalities "
            f"({2**MAX_SUBSET_MODALITIES - 1} models). Choose fewer with --model.modalities"
        )
    fusion = config.model.fusion.name
    conditioned = config.model.fusion.metadata.get("conditions")  # film, daft, ...: the input kind they condition
    plans = []
    for size in range(2, len(modalities) + 1):
        for subset in combinations(modalities, size):
            kinds = {m: config.model.encoders[m].metadata.get("input_kind") for m in subset}
            if conditioned and conditioned not in kinds.values():
                raise ConfigError(
                    f"compare --subsets: model.fusion {fusion!r} conditions an {conditioned} encoder, and the subset "
                    f"{list(subset)} has none ({kinds}); exact Shapley values need a model on every subset, so use "
                    "a fusion that takes any modalities (concat, gated, attention, lmf, ...)"
                )
            changes = {
                "model.modalities": list(subset),
                "model.encoders": {m: config.model.encoders[m] for m in subset},
            }
            try:
                plans.append((f"fusion {fusion} ({'+'.join(subset)})", evolve(config, changes)))
            except (ConfigError, ValueError) as error:
                raise ConfigError(
                    f"compare --subsets: model.fusion {fusion!r} cannot take the subset {list(subset)}: {error}"
                ) from error
    return plans


def modality_shapley(
    models: Sequence[ComparedModel], modalities: Sequence[str], evaluation: EvaluationConfig
) -> SubsetShapley:
    """The Shapley values of the subset models' test (or pooled out-of-fold) predictions, with intervals."""
    by_subset = {frozenset(m.modalities): m for m in models}
    missing = [sorted(s) for s in all_subsets(list(modalities)) if s not in by_subset]
    if missing:
        raise RuntimeError(f"no subset model for {missing}")
    reference = next(iter(by_subset.values())).test
    for model in by_subset.values():
        if not np.array_equal(model.test.patient_ids, reference.patient_ids):
            raise RuntimeError(f"{model.name} was tested on other patients than the other subset models")
    return subset_shapley(
        reference.labels,
        {subset: model.test.probs for subset, model in by_subset.items()},
        modalities,
        evaluation.bootstrap_resamples,
        evaluation.bootstrap_seed,
        evaluation.confidence,
    )


def shapley_table(shapley: SubsetShapley) -> pd.DataFrame:
    """One row per modality: each metric's Shapley value and its interval bounds."""
    rows = []
    for player in shapley.players:
        row: dict[str, Any] = {"modality": player}
        for metric, values in shapley.values.items():
            interval = values[player]
            row |= {metric: interval.value, f"{metric}_ci_low": interval.low, f"{metric}_ci_high": interval.high}
        rows.append(row)
    return pd.DataFrame(rows).round(4)


def subset_scores_table(shapley: SubsetShapley, models: Sequence[ComparedModel]) -> pd.DataFrame:
    """``v(S)`` of every subset with its interval, from the empty set (the chance level) to all modalities."""
    names = {frozenset(m.modalities): m.name for m in models}
    rows: list[dict[str, Any]] = [
        {"subset": "∅", "model": "none (chance level)"}
        | {k: v for metric, level in shapley.empty.items() for k, v in _bounds(metric, level, level, level).items()}
    ]
    for subset in all_subsets(shapley.players):
        row: dict[str, Any] = {"subset": "+".join(p for p in shapley.players if p in subset), "model": names[subset]}
        for metric, scores in shapley.subset_scores.items():
            row |= _bounds(metric, scores[subset].value, scores[subset].low, scores[subset].high)
        rows.append(row)
    return pd.DataFrame(rows).round(4)


def _bounds(metric: str, value: float, low: float, high: float) -> dict[str, float]:
    return {metric: value, f"{metric}_ci_low": low, f"{metric}_ci_high": high}


def display_intervals(
    table: pd.DataFrame, label_columns: Sequence[str], signed: bool, prefix: str = ""
) -> pd.DataFrame:
    """``table`` with each metric and its bounds folded into ``0.123 [0.045, 0.201]`` (``+0.123`` when ``signed``)."""
    shown = table[list(label_columns)].copy()
    number = "{:+.3f}" if signed else "{:.3f}"
    for metric in SHAPLEY_METRICS:
        shown[prefix + metric] = [
            f"{number.format(v)} [{number.format(lo)}, {number.format(hi)}]"
            for v, lo, hi in zip(table[metric], table[f"{metric}_ci_low"], table[f"{metric}_ci_high"])
        ]
    return shown


def shapley_figure(table: pd.DataFrame, scope: str, confidence: float = 0.95):
    """Bars per modality (Shapley AUROC and balanced accuracy) with bootstrap-interval whiskers."""
    figure, axes = plt.subplots(figsize=(max(5.0, 1.4 * len(table) + 2), 4.0))
    x = interval_bars(axes, table, SHAPLEY_METRICS, fmt="%+.2f", capsize=3)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(x, table["modality"])
    axes.set_ylabel("Shapley value (score above chance)")
    axes.set_title(f"Modality value, {scope}\n(whiskers: {confidence:.0%} paired bootstrap intervals)", fontsize=10)
    highest = max(float(table[f"{m}_ci_high"].max()) for m in SHAPLEY_METRICS)
    axes.set_ylim(top=max(highest, 0.0) * 1.25 + 0.02)  # room for the legend above the whiskers
    axes.legend(fontsize=8, loc="upper center", ncol=len(SHAPLEY_METRICS))
    figure.tight_layout()
    return figure


def shapley_markdown(per_modality: pd.DataFrame, subsets: pd.DataFrame) -> str:
    """The two tables as markdown: Shapley values per modality, then every subset's score."""
    return (
        markdown_table(display_intervals(per_modality, ["modality"], signed=True, prefix="Shapley "))
        + "\n"
        + markdown_table(display_intervals(subsets, ["subset", "model"], signed=False))
    )


def log_shapley(
    parent: RunLogger, shapley: SubsetShapley, models: Sequence[ComparedModel], scope: str
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Metrics, tables and chart into the parent run; returns the per-modality and per-subset tables and the
    report section (HTML). ``scope``: which predictions, e.g. "the 30 test patients of one split"."""
    per_modality = shapley_table(shapley)
    subsets = subset_scores_table(shapley, models)
    parent.log_metrics(
        {
            f"shapley/{metric_key_part(row['modality'])}/{metric}{part}": float(row[metric + part])
            for _, row in per_modality.iterrows()
            for metric in SHAPLEY_METRICS
            for part in ("", "_ci_low", "_ci_high")
        }
    )
    parent.log_frame_csv(per_modality, "shapley.csv")
    parent.log_frame_csv(subsets, "subset_scores.csv")
    parent.log_text(shapley_markdown(per_modality, subsets), "shapley.md")
    confidence = next(iter(shapley.values[SHAPLEY_METRICS[0]].values())).confidence
    figure = shapley_figure(per_modality, scope, confidence)
    parent.log_figure(figure, "shapley.png")
    chart = png_bytes(figure)
    plt.close(figure)
    note = (
        f"<p class='note'>Each modality's exact Shapley value of the score on {scope}: its gain over the subsets "
        "without it, averaged over every order of adding the modalities, as in the HAIM study "
        f"({HAIM}). The empty subset scores the chance level ({_empty_text(shapley)}), so the values add up to "
        f"the score of all modalities minus that. Intervals: {confidence:.0%} percentile intervals over "
        f"{shapley.n_resamples} stratified bootstrap resamples of the test patients, each resample scoring every "
        "subset model on the same patients. Subsets of two or more modalities are the experiment's fusion on "
        "them; one modality is its unimodal model.</p>"
    )
    section = (
        table_html(display_intervals(per_modality, ["modality"], signed=True, prefix="Shapley ").to_dict("records"))
        + table_html(display_intervals(subsets, ["subset", "model"], signed=False).to_dict("records"))
        + note
        + image_html(chart, "shapley values")
    )
    return per_modality, subsets, section


def _empty_text(shapley: SubsetShapley) -> str:
    return ", ".join(f"{metric} {level:.3f}" for metric, level in shapley.empty.items())
