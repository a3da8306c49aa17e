"""Patient-grouped, stratified K-fold cross-validation of one model: ``fit --cv K [--cv-repeats R]``.

Every kept patient is tested exactly once per repeat, by a model that never saw them; each fold's
early-stopping validation split comes from its training folds only, and every fitted step
(imputation, scaling, feature selection, class weights) is refitted on that fold's training patients
(one data module per fold). A repeat reshuffles the folds with seed ``data.split.seed + repeat``.

MLflow: one parent run (tag ``lf.cv=K``) with a child run per fold, ``fold-k`` (``r<repeat>-fold-k``
with repeats; tags ``lf.fold``, ``lf.repeat``), and on the parent: a description with the
cross-validated table (what the MLflow UI shows first; a saved view of the UI lists the folds),
``cv/<metric>_mean`` / ``cv/<metric>_std`` over folds, the per-fold table (``cv_folds.csv`` / ``.md``),
the out-of-fold predictions (``oof_predictions.csv``: patient id, repeat, fold, true label, class
probabilities), pooled out-of-fold metrics with bootstrap intervals (``oof/<metric>``, first repeat)
and ``report.html``. The predefined split of a dataset is not used.
The parent also holds the fold models' ensemble (the mean of their probabilities,
:mod:`lightning_fusion.fit.ensemble`): ``predict --model runs:/<parent>``, ``mlflow models serve -m
runs:/<parent>/model`` and the web page use it like one model; a binary ensemble's operating point is
fitted on the out-of-fold probabilities. It has no test set of its own: every patient trained some
fold model, so the out-of-fold figures are its estimate.
The parent run ends FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM (``fit --cv``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lightning_fusion.config import ExperimentConfig
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.data.splits import cross_validation_folds
from lightning_fusion.errors import ConfigError
from lightning_fusion.evaluation import Interval
from lightning_fusion.evaluation.report import dataset_section, image_html, markdown_table, render_report, table_html
from lightning_fusion.evaluation.scoring import evaluate, log_evaluation
from lightning_fusion.evaluation.threshold import operating_point
from lightning_fusion.fit import ranks, signals
from lightning_fusion.fit.ensemble import collect_members, log_ensemble
from lightning_fusion.fit.parent import parent_run
from lightning_fusion.fit.results import Predictions, model_kind
from lightning_fusion.fit.run import fit
from lightning_fusion.mlflow_ui import (
    START_TIME,
    describe,
    metric_column,
    save_children_view,
    tag_column,
    view_name,
    view_path,
)
from lightning_fusion.predict.ensemble import Member
from lightning_fusion.tracking import RunLogger, resolve_tracking_uri

log = logging.getLogger(__name__)

FOLD_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "loss")
THRESHOLD_SOURCE = (
    "out of fold: each patient's probabilities from the fold models that did not train on them (mean over repeats)"
)


@dataclass
class Fold:
    repeat: int
    index: int
    splits: dict[str, list[str]]


@dataclass
class CrossValidationResult:
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    folds: pd.DataFrame  # one row per fold: repeat, fold, patient counts, test metrics, run id
    mean: dict[str, float]
    std: dict[str, float]
    oof: pd.DataFrame  # out-of-fold predictions
    pooled: dict[str, Interval]  # pooled out-of-fold metrics of the first repeat, with intervals
    classes: list[str]
    ensemble_logged: bool = False  # the parent holds the fold models' ensemble (checkpoints/, model)


def plan_folds(config: ExperimentConfig, modalities: list[str], k: int, repeats: int) -> list[Fold]:
    """Read the cohort once and cut the folds of every repeat (errors here come before any run)."""
    if repeats < 1:
        raise ConfigError(f"--cv-repeats must be >= 1, got {repeats}")
    base = MultimodalDataModule(config.data, modalities)
    base.prepare_data()
    cohort, _, labels = base.read_labels()
    split = config.data.split
    val_fraction = split.val / (split.train + split.val)
    return [
        Fold(repeat, index, splits)
        for repeat in range(repeats)
        for index, splits in enumerate(
            cross_validation_folds(labels, k, split.seed + repeat, cohort.groups, val_fraction)
        )
    ]


def fold_datamodule(config: ExperimentConfig, modalities: list[str], fold: Fold) -> MultimodalDataModule:
    datamodule = MultimodalDataModule(config.data, modalities, splits=fold.splits)
    datamodule.setup("fit")
    return datamodule


@signals.StopSignals()
def cross_validate(
    config: ExperimentConfig, k: int, repeats: int = 1, progress: Callable[[str], None] = log.info
) -> CrossValidationResult | None:
    """Train and test one model per fold; aggregate on a parent run. See the module docstring.

    Several processes (DDP): every one trains each fold; rank 0 alone has the runs and aggregates,
    the others return ``None``. A stop signal ends the fold run and the parent KILLED
    (:class:`~lightning_fusion.fit.signals.RunInterrupted`; a cross-validation is not resumed).
    """
    modalities = list(config.model.modalities)
    folds = plan_folds(config, modalities, k, repeats)
    first = fold_datamodule(config, modalities, folds[0])  # bad input stops here: no run exists yet
    kinds = [first.specs[m].kind for m in modalities]
    classes = first.classes
    tags = {
        "lf.cv": str(k),
        "lf.cv_repeats": str(repeats),
        "lf.model_kind": model_kind(kinds),
        "lf.fusion": config.model.fusion.name if len(modalities) > 1 else "none",
        "lf.dataset": first.summary()["dataset"],
        "lf.modalities": ",".join(modalities),
        "lf.experiment": config.name,
    }
    rows, predictions = [], []
    params = {"cv.folds": k, "cv.repeats": repeats}
    with parent_run(config, f"{config.name}-{model_kind(kinds)}-cv{k}", tags, params) as parent:
        parent.log_dict({f"repeat{f.repeat}/fold{f.index}": f.splits for f in folds}, "cv_splits.json")
        for fold in folds:
            progress(f"repeat {fold.repeat} fold {fold.index + 1}/{k} ...")
            datamodule = first if fold is folds[0] else fold_datamodule(config, modalities, fold)
            result = fit(
                config,
                datamodule,
                parent.run_id,
                run_name=fold_name(fold, repeats),
                extra_tags={"lf.fold": str(fold.index), "lf.repeat": str(fold.repeat)},
            )
            if not ranks.is_global_zero():  # the other processes train; rank 0 keeps the results
                continue
            counts = {name: len(ids) for name, ids in fold.splits.items()}
            rows.append(
                {"repeat": fold.repeat, "fold": fold.index}
                | {f"n_{name}": n for name, n in counts.items()}
                | {m: result.test_metrics[f"test/{m}"] for m in FOLD_METRICS if f"test/{m}" in result.test_metrics}
                | {"run_id": result.run_id}
            )
            predictions.append((fold, result.predictions["test"]))
        if not ranks.is_global_zero():
            return None
        table = pd.DataFrame(rows)
        mean = {m: float(table[m].mean()) for m in FOLD_METRICS if m in table}
        std = {m: float(table[m].std(ddof=1)) if len(table) > 1 else 0.0 for m in mean}
        oof = oof_frame(predictions, classes)
        pooled = _log_parent(parent, config, table, mean, std, oof, classes, first.summary(), k, repeats)
        ensemble_logged = _log_ensemble(parent, config, folds, table, oof, classes, repeats)
    return CrossValidationResult(
        parent.run_id or "",
        parent.experiment_id,
        resolve_tracking_uri(config.tracking.tracking_uri),
        table,
        mean,
        std,
        oof,
        pooled,
        classes,
        ensemble_logged,
    )


def fold_name(fold: Fold, repeats: int) -> str:
    return f"fold-{fold.index}" if repeats == 1 else f"r{fold.repeat}-fold-{fold.index}"


def _log_ensemble(
    parent: RunLogger,
    config: ExperimentConfig,
    folds: list[Fold],
    table: pd.DataFrame,
    oof: pd.DataFrame,
    classes: list[str],
    repeats: int,
) -> bool:
    """The fold models' ensemble on the parent, its operating point fitted on the out-of-fold probabilities
    (each patient's mean over the repeats of the fold models that did not train on them); ``False`` without
    the fold checkpoints (``tracking.log_checkpoint`` false)."""
    if not config.tracking.log_checkpoint:
        log.warning("tracking.log_checkpoint is false: the cross-validation's parent run holds no ensemble model")
        return False
    members = [
        Member(f"member-{i}.ckpt", run_id, fold_name(fold, repeats).replace("-", " "))
        for i, (fold, run_id) in enumerate(zip(folds, table["run_id"]))
    ]
    per_patient = oof.groupby("patient_id")[["label_index", *(f"prob_{c}" for c in classes)]].mean()
    labels = per_patient["label_index"].to_numpy(dtype=np.int64)
    probs = per_patient[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    with tempfile.TemporaryDirectory(prefix="lf-ensemble-") as folder:
        ensemble = collect_members(resolve_tracking_uri(config.tracking.tracking_uri), members, Path(folder), "cv")
        point = operating_point(classes, (labels, probs), config.evaluation)
        log_ensemble(parent, Path(folder), ensemble, point, THRESHOLD_SOURCE, config.tracking.log_model)
    return True


def oof_frame(predictions: list[tuple[Fold, Predictions]], classes: list[str]) -> pd.DataFrame:
    """Out-of-fold predictions: patient id, repeat, fold, true label (name and index), class probabilities."""
    frames = []
    for fold, test in predictions:
        frame = pd.DataFrame(
            {
                "patient_id": test.patient_ids,
                "repeat": fold.repeat,
                "fold": fold.index,
                "true": np.asarray(classes)[test.labels],
                "label_index": test.labels,
            }
        )
        for i, cls in enumerate(classes):
            frame[f"prob_{cls}"] = test.probs[:, i]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def oof_arrays(oof: pd.DataFrame, classes: list[str], repeat: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient ids, labels and probabilities of one repeat's out-of-fold predictions, sorted by patient."""
    part = oof[oof["repeat"] == repeat].sort_values("patient_id")
    return (
        part["patient_id"].to_numpy(),
        part["label_index"].to_numpy(dtype=np.int64),
        part[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64),
    )


def _log_parent(
    parent: RunLogger,
    config: ExperimentConfig,
    table: pd.DataFrame,
    mean: dict[str, float],
    std: dict[str, float],
    oof: pd.DataFrame,
    classes: list[str],
    summary: dict,
    k: int,
    repeats: int,
) -> dict[str, Interval]:
    parent.log_metrics({f"cv/{m}_mean": v for m, v in mean.items()} | {f"cv/{m}_std": v for m, v in std.items()})
    parent.log_frame_csv(table, "cv_folds.csv")
    parent.log_frame_csv(oof, "oof_predictions.csv")
    _, labels, probs = oof_arrays(oof, classes)
    evaluation = evaluate(labels, probs, classes, config.evaluation)
    parent.log_metrics({f"oof/{m}": i.value for m, i in evaluation.intervals.items()})
    images = log_evaluation(parent, evaluation, stage="oof", prefix="oof_")
    aggregate = [
        {"metric": m, "mean ± sd over folds": f"{mean[m]:.3f} ± {std[m]:.3f}"}
        | ({"pooled out-of-fold [interval]": str(evaluation.intervals[m])} if m in evaluation.intervals else {})
        for m in mean
    ]
    parent.log_text(markdown_table(table), "cv_folds.md")
    note = (
        f"<p class='note'>{k}-fold patient-grouped stratified cross-validation, {repeats} repeat(s); "
        f"{len(labels)} patients, each tested once per repeat. Mean ± sd over the {len(table)} fold models; "
        "pooled: all out-of-fold predictions of the first repeat with a stratified bootstrap interval.</p>"
    )
    report = render_report(
        f"{config.name}: {k}-fold cross-validation",
        [
            ("Data (first fold's split)", dataset_section(summary)),
            ("Aggregate", table_html(aggregate) + note),
            ("Per fold", table_html(table.round(4).to_dict("records"))),
            ("Pooled out-of-fold figures", "".join(image_html(png, name) for name, png in images.items())),
        ],
        subtitle=f"MLflow parent run {parent.run_id}",
    )
    parent.log_text(report, "report.html")
    _present_in_ui(parent, config, table, aggregate, k, repeats, len(labels))
    return evaluation.intervals


def _present_in_ui(
    parent: RunLogger,
    config: ExperimentConfig,
    table: pd.DataFrame,
    aggregate: list[dict],
    k: int,
    repeats: int,
    patients: int,
) -> None:
    """What the MLflow UI shows first: the parent's description (the cross-validated table) and a view of the folds."""
    client, run_id, experiment_id = parent.experiment, parent.run_id or "", parent.experiment_id
    columns = [metric_column("test/balanced_accuracy"), metric_column("test/auroc"), tag_column("lf.fold")]
    if repeats > 1:
        columns.append(tag_column("lf.repeat"))
    name = view_name(client, run_id, "fold models") if run_id else ""
    save_children_view(client, experiment_id, run_id, name, columns, order_by=START_TIME, ascending=True)
    folds = table.drop(columns=["run_id"]).round(4)
    headline = next((row for row in aggregate if row["metric"] == "balanced_accuracy"), None)
    result = (
        f"test balanced accuracy {headline['mean ± sd over folds']} over {len(table)} fold models"
        + (f", pooled out-of-fold {headline['pooled out-of-fold [interval]']}" if len(headline) > 2 else "")
        if headline
        else f"{len(table)} fold models"
    )
    note = [
        f"**{config.name}: {result}**",
        f"{k}-fold patient-grouped stratified cross-validation, {repeats} repeat(s); {patients} patients, each "
        "tested once per repeat. Mean ± sd over the fold models; pooled: all out-of-fold predictions of the first "
        "repeat, with a bootstrap interval.",
        markdown_table(pd.DataFrame(aggregate)).rstrip("\n"),
        f"[The fold models]({view_path(experiment_id, run_id)}) (its child runs; the out-of-fold predictions and "
        "figures are in the artifacts, the full report in `report.html`)",
        "Per fold (test metrics of each fold model):",
        markdown_table(folds).rstrip("\n"),
    ]
    describe(client, run_id, "\n\n".join(note) + "\n")


def summary_lines(result: CrossValidationResult) -> list[str]:
    """Printed by ``fit --cv``: mean ± sd over folds and the pooled out-of-fold interval per metric."""
    lines = []
    for metric in FOLD_METRICS:
        if metric in result.mean:
            pooled = f"   pooled OOF {result.pooled[metric]}" if metric in result.pooled else ""
            lines.append(f"  {metric:<18} {result.mean[metric]:.3f} ± {result.std[metric]:.3f}{pooled}")
    return lines


__all__ = ["CrossValidationResult", "cross_validate", "oof_arrays", "oof_frame", "plan_folds", "summary_lines"]
