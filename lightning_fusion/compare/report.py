"""What a comparison reports: the table with intervals, paired tests, the chart, the parent run's artifacts.

Paired tests answer "did this fusion really beat the CNN?" on the same test patients: for every
fusion against every unimodal model, McNemar's exact test on correctness and the AUROC difference
with a paired stratified bootstrap interval and p-value. The p-values of each kind are
Holm-adjusted over the whole family of fusion-vs-unimodal tests of the comparison, and a difference
is marked significant when its adjusted p-value is below 0.05. Decision curves (net benefit against the
threshold probability, with treat all and treat none) put every model on one figure per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lightning_fusion.compare.results import ComparedModel, ComparisonResult
from lightning_fusion.config import EvaluationConfig, ExperimentConfig
from lightning_fusion.evaluation import holm_adjust, mcnemar_test, paired_auroc_difference
from lightning_fusion.evaluation.decision_curve import decision_curve_figure, decision_curves
from lightning_fusion.evaluation.report import (
    dataset_section,
    image_html,
    interval_bars,
    markdown_table,
    render_report,
    table_html,
)
from lightning_fusion.evaluation.scoring import png_bytes
from lightning_fusion.mlflow_ui import describe, metric_column, save_children_view, tag_column, view_name, view_path
from lightning_fusion.tracking import RunLogger, metric_key_part

TABLE_METRICS = ("balanced_accuracy", "accuracy", "f1_macro", "auroc", "nll")
ALPHA = 0.05


def comparison_table(models: Sequence[ComparedModel]) -> pd.DataFrame:
    """One row per model: kind, fusion, how it was made, test metrics with interval bounds, seconds, run id."""
    rows = []
    for m in models:
        row: dict[str, Any] = {"model": m.name, "kind": m.kind, "fusion": m.fusion, "how": m.how}
        for metric in TABLE_METRICS:
            row[metric] = m.metrics[metric]
            if metric in m.intervals:
                row[f"{metric}_ci_low"] = m.intervals[metric].low
                row[f"{metric}_ci_high"] = m.intervals[metric].high
        rows.append(row | {"seconds": round(m.seconds, 1), "run_id": m.run_id})
    return pd.DataFrame(rows)


def paired_tests(models: Sequence[ComparedModel], evaluation: EvaluationConfig) -> pd.DataFrame:
    """Every fusion against every unimodal model on the same test patients (Holm-adjusted p-values)."""
    unimodal = [m for m in models if m.kind != "fusion"]
    rows = []
    for fusion in (m for m in models if m.kind == "fusion"):
        for reference in unimodal:
            if not np.array_equal(fusion.test.patient_ids, reference.test.patient_ids):
                raise RuntimeError(f"{fusion.name} and {reference.name} were tested on different patients")
            labels = fusion.test.labels
            mcnemar = mcnemar_test(labels, fusion.test.probs.argmax(1), reference.test.probs.argmax(1))
            auroc = paired_auroc_difference(
                labels,
                fusion.test.probs,
                reference.test.probs,
                evaluation.bootstrap_resamples,
                evaluation.bootstrap_seed,
                evaluation.confidence,
            )
            rows.append(
                {
                    "model": fusion.name,
                    "versus": reference.name,
                    "balanced_accuracy_diff": round(
                        fusion.metrics["balanced_accuracy"] - reference.metrics["balanced_accuracy"], 4
                    ),
                    "only_model_right": mcnemar.a_only_correct,
                    "only_versus_right": mcnemar.b_only_correct,
                    "mcnemar_p": mcnemar.p_value,
                    "auroc_diff": round(auroc.value, 4),
                    "auroc_diff_ci_low": round(auroc.low, 4),
                    "auroc_diff_ci_high": round(auroc.high, 4),
                    "auroc_p": auroc.p_value,
                }
            )
    table = pd.DataFrame(rows)
    if len(table):
        table["mcnemar_p_holm"] = holm_adjust(table["mcnemar_p"].tolist())
        table["auroc_p_holm"] = holm_adjust(table["auroc_p"].tolist())
        mcnemar, auroc = table["mcnemar_p_holm"] < ALPHA, table["auroc_p_holm"] < ALPHA
        table["significant"] = [
            "both" if a and b else "McNemar" if a else "AUROC" if b else "no" for a, b in zip(mcnemar, auroc)
        ]
    return table


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison with intervals folded in: ``0.905 [0.714, 1.000]``."""
    shown = table[["model", "kind", "fusion"]].copy()
    for metric in TABLE_METRICS:
        if f"{metric}_ci_low" in table:
            shown[metric] = [
                f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
                for v, lo, hi in zip(table[metric], table[f"{metric}_ci_low"], table[f"{metric}_ci_high"])
            ]
        else:
            shown[metric] = table[metric].round(3)
    for metric in ("balanced_accuracy", "auroc"):
        if f"{metric}_fold_mean" in table:
            shown[f"{metric} folds"] = [
                f"{m:.3f} ± {sd:.3f}" for m, sd in zip(table[f"{metric}_fold_mean"], table[f"{metric}_fold_sd"])
            ]
    shown["seconds"] = [f"{v:.1f}" for v in table["seconds"]]
    shown["run_id"] = table["run_id"]
    return shown


def display_paired(paired: pd.DataFrame) -> pd.DataFrame:
    if not len(paired):
        return paired
    return pd.DataFrame(
        {
            "model": paired["model"],
            "versus": paired["versus"],
            "Δ bal. acc.": paired["balanced_accuracy_diff"].round(3),
            "McNemar (only model / only versus right)": [
                f"{b} / {c}, p={p:.3f} (Holm {h:.3f})"
                for b, c, p, h in zip(
                    paired["only_model_right"],
                    paired["only_versus_right"],
                    paired["mcnemar_p"],
                    paired["mcnemar_p_holm"],
                )
            ],
            "Δ AUROC [interval]": [
                f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}], p={p:.3f} (Holm {h:.3f})"
                for d, lo, hi, p, h in zip(
                    paired["auroc_diff"],
                    paired["auroc_diff_ci_low"],
                    paired["auroc_diff_ci_high"],
                    paired["auroc_p"],
                    paired["auroc_p_holm"],
                )
            ],
            "significant (Holm p < 0.05)": paired["significant"],
        }
    )


def comparison_figure(table: pd.DataFrame, test_patients: int):
    """Grouped bars with interval whiskers: test balanced accuracy, macro F1 and AUROC per model."""
    metrics = ("balanced_accuracy", "f1_macro", "auroc")
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(table) + 2), 4.4))
    x = interval_bars(axes, table, metrics, fmt="%.2f", capsize=2)
    axes.set_xticks(x, table["model"], rotation=25, ha="right")
    axes.set_ylim(0, 1.08)
    axes.set_ylabel(f"test ({test_patients} patients)")
    axes.set_title("CNN vs ANN vs fusion (same split; whiskers: 95% bootstrap intervals)")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def log_comparison(
    parent: RunLogger,
    table: pd.DataFrame,
    paired: pd.DataFrame,
    summary: dict[str, Any],
    config: ExperimentConfig,
    test_patients: int,
    cv: int | None = None,
    models: Sequence[ComparedModel] = (),
    extra_sections: Sequence[tuple[str, str]] = (),
) -> None:
    """The parent run's artifacts: tables (markdown + CSV), chart, decision curves of ``models``, per-model
    metrics and ``report.html`` (``extra_sections``, (heading, HTML), after the chart)."""
    shown = display_table(table)
    parent.log_text(markdown_table(shown), "comparison.md")
    parent.log_frame_csv(table, "comparison.csv")
    parent.log_frame_csv(paired, "paired_tests.csv")
    if len(paired):
        parent.log_text(markdown_table(display_paired(paired)), "paired_tests.md")
    figure = comparison_figure(table, test_patients)
    parent.log_figure(figure, "comparison.png")
    chart = png_bytes(figure)
    plt.close(figure)
    curves = {m.name: decision_curves(m.test.labels, m.test.probs, summary["classes"]) for m in models}
    decision_png = None
    if any(curves.values()):
        parent.log_dict(curves, "decision_curves.json")
        figure = decision_curve_figure(curves, f"Decision curves, {test_patients} patients (treat when P ≥ threshold)")
        parent.log_figure(figure, "decision_curves.png")
        decision_png = png_bytes(figure)
        plt.close(figure)
    parent.log_metrics(
        {
            f"compare/{metric_key_part(row['model'])}/{metric}": float(row[metric])
            for _, row in table.iterrows()
            for metric in TABLE_METRICS
        }
    )
    scope = (
        f"the pooled out-of-fold predictions of {cv}-fold cross-validation ({test_patients} patients, each tested "
        "once by a model that never saw them; the fold columns give the spread of the fold models)"
        if cv
        else f"the {test_patients} test patients of one split, one training seed (retraining variation is not in "
        "these intervals)"
    )
    note = (
        f"<p class='note'>Figures from {scope}. Intervals: {config.evaluation.confidence:.0%} stratified bootstrap "
        f"({config.evaluation.bootstrap_resamples} resamples). Paired tests compare each fusion with each unimodal "
        "model on the same patients; p-values are Holm-adjusted over all those tests, and 'significant' means an "
        f"adjusted p below {ALPHA}.</p>"
    )
    report = render_report(
        f"{config.name}: CNN vs ANN vs fusion",
        [
            ("Data", dataset_section(summary)),
            ("Test metrics", table_html(shown.to_dict("records")) + note),
            ("Paired tests", table_html(display_paired(paired).to_dict("records"))),
            ("Chart", image_html(chart, "comparison")),
            *extra_sections,
            *(
                [("Decision curves", image_html(decision_png, "decision curves") + _DECISION_NOTE)]
                if decision_png
                else []
            ),
        ],
        subtitle=f"MLflow parent run {parent.run_id}",
    )
    parent.log_text(report, "report.html")


_DECISION_NOTE = (
    "<p class='note'>Net benefit of treating the patients whose predicted probability of the class is at least the "
    "threshold, TP/N − FP/N · p/(1 − p) (Vickers &amp; Elkin, 2006), against treating everyone (dashed) and no one "
    "(0). A model helps at the thresholds where it lies above both.</p>"
)


def verdict(result: ComparisonResult) -> str:
    """One line: the best fusion against the best unimodal model, and whether the paired tests back it."""
    fusion = result.best()
    unimodal = result.best(unimodal=True)
    ahead = fusion.metrics["balanced_accuracy"] > unimodal.metrics["balanced_accuracy"]
    line = (
        f"best fusion: {fusion.name} {fusion.intervals['balanced_accuracy']} vs best unimodal: {unimodal.name} "
        f"{unimodal.intervals['balanced_accuracy']} test balanced accuracy on {result.test_patients} "
        + ("patients, pooled out-of-fold: " if result.cv else "test patients: ")
        + ("fusion ahead" if ahead else "fusion NOT ahead")
    )
    paired = result.paired
    row = paired[(paired["model"] == fusion.name) & (paired["versus"] == unimodal.name)] if len(paired) else paired
    if len(row):
        row = row.iloc[0]
        line += (
            f"; McNemar p={row['mcnemar_p']:.3f} (Holm {row['mcnemar_p_holm']:.3f}), Δ AUROC {row['auroc_diff']:+.3f} "
            f"[{row['auroc_diff_ci_low']:+.3f}, {row['auroc_diff_ci_high']:+.3f}] -> "
            + (
                f"significant ({row['significant']})"
                if row["significant"] != "no"
                else "not significant at this test-set size"
            )
        )
    return line


def comparison_note(result: ComparisonResult) -> str:
    """The parent run's description (markdown): the verdict, the table, the paired tests, where the rest is."""
    shown = display_table(result.table).drop(columns=["kind", "fusion", "seconds", "run_id"])
    scope = (
        f"pooled out-of-fold predictions of {result.cv}-fold cross-validation, {result.test_patients} patients"
        if result.cv
        else f"{result.test_patients} test patients of one split"
    )
    parts = [
        f"**{verdict(result)}**",
        f"[The models of this comparison, best first]({view_path(result.experiment_id, result.parent_run_id)}) "
        "(its child runs; the chart is the artifact `comparison.png`, the full report `report.html`)",
        f"Test metrics ({scope}; bootstrap intervals in brackets):",
        markdown_table(shown).rstrip("\n"),
    ]
    if len(result.paired):
        parts += ["Paired tests (Holm-adjusted p-values):", markdown_table(display_paired(result.paired)).rstrip("\n")]
    if result.shapley is not None:
        from lightning_fusion.compare.subsets import shapley_markdown

        parts += [
            "Modality value: Shapley values (the empty subset scores chance; `shapley.png`, `shapley.csv`):",
            shapley_markdown(result.shapley, result.subset_scores).rstrip("\n"),
        ]
    return "\n\n".join(parts) + "\n"


def present_in_ui(parent: RunLogger, result: ComparisonResult) -> None:
    """What the MLflow UI shows first: the description of the parent run and a view of its models."""
    client = parent.experiment
    columns = [metric_column("test/balanced_accuracy"), metric_column("test/auroc"), tag_column("lf.model_kind")]
    if result.cv:
        columns.append(tag_column("lf.fold"))
    save_children_view(
        client,
        result.experiment_id,
        result.parent_run_id,
        view_name(client, result.parent_run_id, "models by test balanced accuracy"),
        columns,
        order_by=metric_column("test/balanced_accuracy"),
    )
    describe(client, result.parent_run_id, comparison_note(result))
