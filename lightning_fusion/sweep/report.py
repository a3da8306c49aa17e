"""The sweep report: best parameters and value, every trial, parameter importances, a metric-vs-parameter plot.

Logged on the study's parent run (``sweep_trials.csv``, ``sweep_report.md``, ``sweep_summary.json``
with the importances, ``metric_vs_<param>.png``) and printed. Importances use Optuna's default
evaluator and need at least two finished trials with different parameter values.
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

from lightning_fusion.sweep.study import Study


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
    return text
