"""The sweep report: best parameters and value, every trial, parameter importances, a metric-vs-parameter plot.

Logged on the study's parent run (``sweep_trials.csv``, ``sweep_report.md``, ``sweep_summary.json``
with the importances, ``metric_vs_<param>.png``) and printed. Importances use Optuna's default
evaluator and need at least two finished trials with different parameter values. The parent's
description (what the MLflow UI shows first) is the best trial, the importances and the best trials;
a saved view of the UI lists the trials, best first (:mod:`lightning_fusion.mlflow_ui`).
"""

from __future__ import annotations

import json
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from lightning_fusion.evaluation.report import markdown_table
from lightning_fusion.mlflow_ui import (
    describe,
    metric_column,
    param_column,
    save_children_view,
    tag_column,
    view_name,
    view_path,
)
from lightning_fusion.sweep.study import Study

NOTE_TRIALS = 20  # the best trials the description lists (all are in sweep_trials.csv)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs run, parameters."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "epochs": trial.user_attrs.get("epochs"),
            }
            | {f"param.{k}": v for k, v in trial.params.items()}
        )
    return pd.DataFrame(rows)


def importances(study: optuna.Study) -> dict[str, float]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len({json.dumps(t.params, sort_keys=True, default=str) for t in complete}) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):  # e.g. a single distinct value per parameter
        return {}


def metric_plot(study: optuna.Study, spec_study: Study):
    """For a study over one numeric/ordinal parameter (others e.g. seeds): metric vs parameter, mean ± spread."""
    numeric = [
        p
        for p, s in spec_study.spec.space.items()
        if s.type in ("int", "float")
        or (
            s.type == "categorical"
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in s.choices or [])
        )
    ]
    numeric = [p for p in numeric if p not in ("seed", "data.split.seed")]
    if len(numeric) != 1:
        return None, None
    param = numeric[0]
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if param in t.params]
    if not complete:
        return None, None
    frame = pd.DataFrame({"x": [t.params[param] for t in complete], "y": [t.value for t in complete]})
    grouped = frame.groupby("x")["y"].agg(["mean", "std", "min", "max", "count"]).reset_index()
    figure, axes = plt.subplots(figsize=(5.5, 4))
    axes.scatter(frame["x"], frame["y"], alpha=0.4, label="trials")
    axes.errorbar(
        grouped["x"], grouped["mean"], yerr=np.nan_to_num(grouped["std"]), marker="o", capsize=3, label="mean ± sd"
    )
    axes.set(xlabel=param, ylabel=spec_study.spec.metric, title=f"{spec_study.name}: {spec_study.spec.metric}")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return param, figure


def summarise(study: optuna.Study, spec_study: Study) -> dict[str, Any]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts = {state.name: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    summary: dict[str, Any] = {"study": study.study_name, "metric": spec_study.spec.metric, "counts": counts}
    if complete:
        best = study.best_trial
        summary |= {"best_value": best.value, "best_params": best.params, "best_trial": best.number}
    summary["importances"] = importances(study)
    return summary


def report_text(summary: dict[str, Any], table: pd.DataFrame) -> str:
    lines = [f"# Sweep {summary['study']}", "", f"metric: {summary['metric']}", f"trials: {summary['counts']}"]
    if "best_value" in summary:
        lines += [
            f"best value: {summary['best_value']:.4f} (trial {summary['best_trial']})",
            f"best parameters: {summary['best_params']}",
        ]
    if summary["importances"]:
        lines += ["importances: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importances"].items())]
    lines += ["", table.to_string(index=False)]
    return "\n".join(lines) + "\n"


def log_report(client: MlflowClient, parent_id: str, study: optuna.Study, spec_study: Study) -> str:
    """Write the report onto the parent run and return it as text."""
    table = trials_table(study)
    summary = summarise(study, spec_study)
    text = report_text(summary, table)
    client.log_text(parent_id, text, "sweep_report.md")
    client.log_text(parent_id, table.to_csv(index=False), "sweep_trials.csv")
    client.log_text(parent_id, json.dumps(summary, indent=2, default=str), "sweep_summary.json")
    if "best_value" in summary:
        client.log_metric(parent_id, "sweep/best_value", summary["best_value"])
    for state, count in summary["counts"].items():
        client.log_metric(parent_id, f"sweep/trials_{state.lower()}", count)
    param, figure = metric_plot(study, spec_study)
    if figure is not None:
        client.log_figure(parent_id, figure, f"metric_vs_{param.replace('.', '_')}.png")
        plt.close(figure)
    present_in_ui(client, parent_id, summary, table, spec_study)
    return text


def sweep_note(
    summary: dict[str, Any], table: pd.DataFrame, spec_study: Study, experiment_id: str, parent_id: str
) -> str:
    """The parent run's description (markdown): best trial, importances, the best trials."""
    spec = spec_study.spec
    counts = ", ".join(f"{n} {state.lower()}" for state, n in summary["counts"].items() if n)
    if "best_value" in summary:
        head = (
            f"**Best: trial {summary['best_trial']}, {spec.metric} {summary['best_value']:.4f}** "
            f"({spec.direction}; trials: {counts or 'none'})"
        )
        params = ", ".join(f"`{k}` = {v}" for k, v in summary["best_params"].items())
        parts = [head, f"Best parameters: {params or 'none'}"]
    else:
        parts = [f"**No trial completed** (trials: {counts or 'none'})"]
    if summary["importances"]:
        importances = pd.DataFrame(
            {"parameter": list(summary["importances"]), "importance": list(summary["importances"].values())}
        )
        parts += ["Parameter importances (Optuna's default evaluator):", markdown_table(importances).rstrip("\n")]
    parts.append(
        f"[The trials, best first]({view_path(experiment_id, parent_id)}) (its child runs; their parameters are "
        "the params `trial.<path>`)"
    )
    if len(table):
        ranked = table.sort_values("value", ascending=spec.direction == "minimize", na_position="last")
        shown = ranked.head(NOTE_TRIALS).map(_cell)  # 4 significant digits: learning rates are small
        what = f"The {len(shown)} best of {len(table)} trials" if len(table) > NOTE_TRIALS else "Trials"
        parts += [f"{what} (all in the artifact `sweep_trials.csv`):", markdown_table(shown).rstrip("\n")]
    return "\n\n".join(parts) + "\n"


def present_in_ui(
    client: MlflowClient, parent_id: str, summary: dict[str, Any], table: pd.DataFrame, spec_study: Study
) -> None:
    """What the MLflow UI shows first: the parent's description and a view of the trials, best first."""
    spec = spec_study.spec
    experiment_id = client.get_run(parent_id).info.experiment_id
    columns = [metric_column("trial/best_value"), tag_column("optuna.state")]
    columns += [param_column(f"trial.{path}") for path in spec.space]
    save_children_view(
        client,
        experiment_id,
        parent_id,
        view_name(client, parent_id, f"trials by {spec.metric}"),
        columns,
        order_by=metric_column("trial/best_value"),
        ascending=spec.direction == "minimize",
    )
    describe(client, parent_id, sweep_note(summary, table, spec_study, experiment_id, parent_id))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)
