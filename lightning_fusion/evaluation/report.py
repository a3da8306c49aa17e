"""One self-contained HTML report per run (and per comparison): numbers with intervals, figures inline.

The report is a single file (figures embedded as base64 PNG), logged as ``report.html``, so it can be
opened from the MLflow UI or mailed to a collaborator without the rest of the run. Sections are
plain data in, escaped HTML out; nothing here computes a statistic.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lightning_fusion.evaluation import Interval

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-size: .92em; } img { max-width: 32em; margin: .4em 1em .4em 0; vertical-align: top; }
.sig { font-weight: bold; color: #075; }
"""


def table_html(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An HTML table of ``rows`` (dicts); floats with 3 decimals, :class:`Interval` as ``v [lo, hi]``."""
    if not rows:
        return "<p class='note'>(none)</p>"
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            numeric = isinstance(value, (int, float, Interval)) and not isinstance(value, bool)
            text = f"{value:.3f}" if isinstance(value, float) else str(value)
            cells.append(f"<td class='num'>{html.escape(text)}</td>" if numeric else f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def markdown_table(table: Any, columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table of a DataFrame (no extra dependency); floats with 3 decimals."""
    columns = list(columns or table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in table[columns].iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def interval_bars(axes, table, metrics, fmt: str, capsize: float) -> np.ndarray:
    """Grouped bars of ``metrics`` per row of ``table`` with whiskers from its ``<metric>_ci_low`` /
    ``<metric>_ci_high`` columns, each bar labelled inside (clear of the whiskers); returns the group positions."""
    x = np.arange(len(table))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        values = table[metric].to_numpy()
        errors = np.clip(np.vstack([values - table[f"{metric}_ci_low"], table[f"{metric}_ci_high"] - values]), 0, None)
        offset = (i - (len(metrics) - 1) / 2) * width
        bars = axes.bar(x + offset, values, width, label=metric, yerr=errors, capsize=capsize)
        axes.bar_label(bars, fmt=fmt, fontsize=7, label_type="center")
    return x


def image_html(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def dataset_section(summary: Mapping[str, Any]) -> str:
    """Counts per class and split, and every exclusion with its reason."""
    classes = summary["classes"]
    rows = [{"split": split} | counts | {"total": sum(counts.values())} for split, counts in summary["counts"].items()]
    parts = [
        f"<p>Dataset <b>{html.escape(str(summary['dataset']))}</b>, modalities "
        f"{html.escape(', '.join(summary['modalities']))}.</p>",
        table_html(rows, ["split", *classes, "total"]),
    ]
    excluded = summary.get("excluded", {})
    if excluded:
        parts.append("<p>Excluded before splitting:</p>")
        parts.append(table_html([{"reason": k, "patients": v} for k, v in excluded.items()]))
    else:
        parts.append("<p class='note'>No patient excluded.</p>")
    kept_without = summary.get("kept_without") or {}
    if kept_without:
        parts.append("<p>Kept with a missing modality (masked by the fusion):</p>")
        parts.append(table_html([{"modality": m} | c for m, c in kept_without.items()]))
    return "".join(parts)


def presence_section(rows: Sequence[Mapping[str, Any]], confidence: float) -> str:
    """The test metrics per presence pattern: rows of
    :func:`~lightning_fusion.evaluation.presence.presence_pattern_metrics`."""
    metrics = list(dict.fromkeys(m for row in rows for m in row["intervals"]))
    table = [
        {"present modalities": row["pattern"], "patients": row["patients"]}
        | {c: n for c, n in row["classes"].items()}
        | {m: row["intervals"].get(m, "n/a") for m in metrics}
        for row in rows
    ]
    note = (
        f"<p class='note'>The test patients grouped by which modalities they have; {confidence:.0%} stratified "
        "bootstrap intervals within each group (small groups: wide intervals; n/a: the group cannot define the "
        "metric, e.g. AUROC without both outcomes of a class).</p>"
    )
    return table_html(table) + note


def robustness_section(rows: Sequence[Mapping[str, Any]], figure: bytes) -> str:
    """The robustness curve: its figure and the rows of
    :func:`~lightning_fusion.evaluation.robustness.robustness_curve`."""
    seeded = (
        "<p class='note'>Test AUROC (macro one-vs-rest) when one modality is marked absent for a growing share of "
        "the test patients (one seeded, nested choice of patients for every modality), the tested model predicting "
        "them again: nothing refitted. <i>masked</i>: patients who lost the modality; <i>kept only modality</i>: "
        "chosen patients who keep it because it is all they have. Fraction 0 is the run's test AUROC.</p>"
    )
    table = [{k: ("n/a" if k == "auroc" and v != v else v) for k, v in row.items()} for row in rows]
    return image_html(figure, "robustness.png") + table_html(table) + seeded


def render_report(title: str, sections: Sequence[tuple[str, str]], subtitle: str = "") -> str:
    """A whole HTML document from ``(heading, html body)`` sections."""
    body = "".join(f"<h2>{html.escape(heading)}</h2>{content}" for heading, content in sections)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(subtitle)}</p>{body}</body></html>"
    )


def run_report(
    title: str,
    summary: Mapping[str, Any],
    intervals: Mapping[str, Interval],
    other_metrics: Mapping[str, float],
    images: Mapping[str, bytes],
    confidence: float,
    subtitle: str = "",
    extra_sections: Sequence[tuple[str, str]] = (),
) -> str:
    """The report of one tested model; ``extra_sections`` (heading, HTML) come after the test metrics."""
    n_test = sum(summary["counts"]["test"].values())
    metrics_rows = [{"metric": name, "value [interval]": interval} for name, interval in intervals.items()]
    metrics_rows += [{"metric": name, "value [interval]": value} for name, value in other_metrics.items()]
    explanation = (
        f"<p class='note'>Intervals: {confidence:.0%} stratified bootstrap percentile intervals over the "
        f"{n_test} test patients (resampled within each class). They show how much the figure could move "
        "with another test set of this size; they do not cover variation from retraining.</p>"
    )
    figures = "".join(image_html(png, name) for name, png in images.items())
    return render_report(
        title,
        [
            ("Data", dataset_section(summary)),
            ("Test metrics", table_html(metrics_rows) + explanation),
            *extra_sections,
            ("Figures", figures),
        ],
        subtitle,
    )
