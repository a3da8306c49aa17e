"""CNN vs ANN vs fusion on one split: the unimodal models, the chosen fusions, one MLflow parent run.

:func:`run_comparison` reads the cohort once, for every modality of the experiment, so every model
sees the same patients, the same patient-level split and the same fitted preprocessing. It trains

1. one unimodal model per modality (the image-only CNN, the clinical-only ANN, the signal-only
   network: ``concat`` over one modality, i.e. encoder → head),
2. each chosen *trained* fusion (:data:`~lightning_fusion.fusion.FUSIONS`: ``concat``, ``early``,
   ``gated``, ``attention``, ...) over all the modalities,

and then applies each chosen *decision-level procedure*
(:data:`~lightning_fusion.compare.procedures.PROCEDURES`: ``late_weighted`` with weights tuned on validation,
``stacking``, ``ensemble_mean``) to the unimodal models' best-checkpoint probabilities, without
training them again. In a comparison ``late_weighted`` is that procedure (the MPI study's method);
the end-to-end module of the same name is trained by ``fit --model.fusion late_weighted``.

Every model is a child run (tags ``lf.model_kind``, ``lf.fusion``; procedures also ``lf.procedure``
and ``lf.base_runs``) of one parent run tagged ``lf.compare=true``, which holds the comparison table
(``comparison.md``, ``comparison.csv``) and a bar chart of the test metrics (``comparison.png``); its
description is the verdict and the table, and a saved view of the MLflow UI lists its children by
test balanced accuracy (:mod:`lightning_fusion.mlflow_ui`).
The table's metrics are computed the same way for every model, from its test probabilities.
With ``subsets=True`` (``compare --subsets``) the models are instead one per non-empty subset of the
modalities, the unimodal models and the experiment's fusion on every larger subset, and the parent run
adds each modality's Shapley value (:mod:`lightning_fusion.compare.subsets`).
The parent run ends FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from lightning_fusion.compare.procedures import PROCEDURES, DecisionInputs, log_loss
from lightning_fusion.compare.report import comparison_table, log_comparison, paired_tests, present_in_ui
from lightning_fusion.compare.results import ComparedModel, ComparisonResult
from lightning_fusion.compare.subsets import log_shapley, modality_shapley, subset_plans
from lightning_fusion.config import (
    EvaluationConfig,
    ExperimentConfig,
    evolve,
    flatten,
    resolve_component,
    to_dict,
    to_yaml,
)
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.errors import ConfigError
from lightning_fusion.evaluation import bootstrap_intervals
from lightning_fusion.fit.artifacts import log_data_summary, log_tested_model
from lightning_fusion.fit.crossval import fold_datamodule, plan_folds
from lightning_fusion.fit.results import FitResult, Predictions, model_kind
from lightning_fusion.fit.run import fit
from lightning_fusion.fusion import FUSIONS
from lightning_fusion.metrics import metrics_from_probabilities
from lightning_fusion.registry import suggest
from lightning_fusion.tracking import create_run_logger, end_status, metric_key_part, resolve_tracking_uri

log = logging.getLogger(__name__)

DEFAULT_FUSIONS = ("concat", "gated", "attention", "late_weighted", "stacking", "ensemble_mean")


# --------------------------------------------------------------------------------------------------
# Planning: which models, with which configs (all validated before anything trains)
# --------------------------------------------------------------------------------------------------
def parse_fusions(names: str | Sequence[str] | None) -> list[str]:
    """``"concat,stacking"`` → ``["concat", "stacking"]``; every name a trained fusion or a procedure."""
    if names is None:
        return list(DEFAULT_FUSIONS)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    if not names:
        raise ConfigError("--fusions: name at least one fusion")
    choices = sorted(set(FUSIONS) | set(PROCEDURES))
    for name in names:
        if name not in choices:
            raise ConfigError(f"--fusions: {suggest(name, choices, 'fusion')}")
    return list(dict.fromkeys(names))


def is_procedure(name: str) -> bool:
    """Decision-level procedures (on the unimodal models) take precedence over a same-named module."""
    return name in PROCEDURES


def unimodal_config(config: ExperimentConfig, modality: str) -> ExperimentConfig:
    """The experiment restricted to one modality: its encoder → the head (``concat`` over one input)."""
    return evolve(
        config,
        {
            "model.modalities": [modality],
            "model.encoders": {modality: config.model.encoders[modality]},
            "model.fusion": "concat",
            "model.modality_dropout": 0.0,
        },
    )


def fusion_config(config: ExperimentConfig, fusion: str) -> ExperimentConfig:
    """The experiment with fusion ``fusion`` (the experiment's own options when it already uses it)."""
    chosen = config.model.fusion if config.model.fusion.name == fusion else resolve_component("fusion", fusion)
    changes: dict[str, Any] = {"model.fusion": chosen}
    if not chosen.metadata.get("supports_missing", False):
        changes["model.modality_dropout"] = 0.0
    return evolve(config, changes)


def _single_process(config: ExperimentConfig) -> ExperimentConfig:
    """``compare`` keeps every model's predictions in this process: one device, one node."""
    trainer = config.trainer
    if trainer.several_processes:
        raise ConfigError(
            f"compare trains each model in one process (it combines their predictions); got trainer.devices "
            f"{trainer.devices!r}, num_nodes {trainer.num_nodes}, strategy {trainer.strategy!r}: use trainer.devices 1 "
            "(run fit with DDP for a single large model)"
        )
    if trainer.devices == "auto":
        return evolve(config, {"trainer.devices": 1})
    return config


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------
def run_comparison(
    config: ExperimentConfig,
    fusions: Sequence[str] | str | None = None,
    progress: Callable[[str], None] = log.info,
    cv: int | None = None,
    cv_repeats: int = 1,
    subsets: bool = False,
) -> ComparisonResult:
    """Train and compare; returns the table (also logged to the parent run). See the module docstring.

    With ``cv`` (K folds, patient-grouped and stratified, ``cv_repeats`` times), every model is trained
    once per fold on the same folds; the table and the paired tests use the pooled out-of-fold
    predictions of the first repeat (every patient tested once) and add the mean ± sd over folds.

    With ``subsets``, the models are one per non-empty subset of the modalities (the experiment's
    ``model.fusion`` on each subset of two or more) instead of ``fusions``, and the result adds each
    modality's Shapley value (:mod:`lightning_fusion.compare.subsets`).
    """
    if subsets and fusions is not None:
        raise ConfigError(
            "--subsets trains the experiment's own fusion (model.fusion) on every subset of the modalities; "
            "choose it with --model.fusion NAME instead of --fusions"
        )
    fusions = [config.model.fusion.name] if subsets else parse_fusions(fusions)
    modalities = list(config.model.modalities)
    if len(modalities) < 2:
        raise ConfigError(f"compare needs an experiment with two or more modalities, got model.modalities {modalities}")
    if config.data.keep_missing_modalities:
        raise ConfigError(
            "compare tests every model on the same patients, so each needs all its inputs: set "
            "data.keep_missing_modalities false (the unimodal models cannot predict a patient without their modality)"
        )
    config = _single_process(config)
    plans = [(m, unimodal_config(config, m)) for m in modalities]
    if subsets:
        trained, procedures = subset_plans(config), []
    else:
        trained = [(f"fusion {f}", fusion_config(config, f)) for f in fusions if not is_procedure(f)]
        procedures = [f for f in fusions if is_procedure(f)]

    # bad input stops here, before any run exists
    if cv:
        folds = plan_folds(config, modalities, cv, cv_repeats)
        first = fold_datamodule(config, modalities, folds[0])
    else:
        folds = [None]
        first = MultimodalDataModule(config.data, modalities)
        first.prepare_data()
        first.setup("fit")
    summary = first.summary()
    if "stacking" in procedures:  # before anything trains: the meta-learner must see every class
        _check_stacking_classes([f.splits["val"] for f in folds] if cv else [first.splits["val"]], first)

    tags = (
        {
            "lf.compare": "true",
            "lf.dataset": summary["dataset"],
            "lf.modalities": ",".join(modalities),
            "lf.experiment": config.name,
            "lf.fusions": ",".join(fusions),
        }
        | ({"lf.cv": str(cv), "lf.cv_repeats": str(cv_repeats)} if cv else {})
        | ({"lf.subsets": "true"} if subsets else {})
    )
    run_name = f"{config.name}-compare" + ("-subsets" if subsets else "") + (f"-cv{cv}" if cv else "")
    parent = create_run_logger(config.tracking, run_name, tags)
    per_fold: list[list[ComparedModel]] = []
    try:
        parent.log_params(
            flatten(to_dict(config))
            | {"compare.fusions": ",".join(fusions), "compare.cv": cv or 0, "compare.subsets": subsets}
        )
        parent.log_text(to_yaml(config), "config.yaml")
        log_data_summary(parent, summary)
        for i, fold in enumerate(folds):
            if fold is None:
                datamodule, fold_tags, where = first, {}, ""
            else:
                datamodule = first if i == 0 else fold_datamodule(config, modalities, fold)
                fold_tags = {"lf.fold": str(fold.index), "lf.repeat": str(fold.repeat)}
                where = f" (repeat {fold.repeat} fold {fold.index + 1}/{cv})"
            per_fold.append(
                _compare_on_split(
                    config, plans, trained, procedures, datamodule, parent.run_id, fold_tags, where, progress
                )
            )
        if cv:
            models = _pooled_models(per_fold, folds, config)
            test_patients = len(models[0].test.patient_ids)
        else:
            models = per_fold[0]
            test_patients = len(first.splits["test"])
        table = comparison_table(models)
        if cv:
            table = _with_fold_spread(table, per_fold, folds)
        paired = paired_tests(models, config.evaluation)
        shapley, subset_scores, sections = None, None, []
        if subsets:
            scope = (
                f"the pooled out-of-fold predictions of {cv}-fold cross-validation ({test_patients} patients)"
                if cv
                else f"the {test_patients} test patients of one split"
            )
            shapley, subset_scores, section = log_shapley(
                parent, modality_shapley(models, modalities, config.evaluation), models, scope
            )
            sections.append(("Modality value (Shapley)", section))
        log_comparison(parent, table, paired, summary, config, test_patients, cv, models, sections)
        result = ComparisonResult(
            parent_run_id=parent.run_id or "",
            experiment_id=parent.experiment_id,
            tracking_uri=resolve_tracking_uri(config.tracking.tracking_uri),
            models=models,
            table=table,
            paired=paired,
            test_patients=test_patients,
            cv=cv,
            shapley=shapley,
            subset_scores=subset_scores,
        )
        present_in_ui(parent, result)
        parent.close("success")
    except BaseException as err:
        parent.close(end_status(err))  # KILLED by an interrupt, FAILED otherwise
        raise
    return result


def _check_stacking_classes(val_splits: list[list[str]], datamodule: MultimodalDataModule) -> None:
    labels = datamodule.cohort.labels
    for val_ids in val_splits:
        counts = {c: int((labels.loc[val_ids] == c).sum()) for c in datamodule.classes}
        absent = [c for c, n in counts.items() if n == 0]
        if absent:
            raise ConfigError(
                f"stacking: the validation split has no patient of class {absent} ({counts}); its meta-learner "
                "cannot learn them. Use a larger data.split.val or leave stacking out of --fusions"
            )


def _compare_on_split(
    config: ExperimentConfig,
    plans: list[tuple[str, ExperimentConfig]],
    trained: list[tuple[str, ExperimentConfig]],
    procedures: list[str],
    datamodule: MultimodalDataModule,
    parent_run_id: str | None,
    fold_tags: dict[str, str],
    where: str,
    progress: Callable[[str], None],
) -> list[ComparedModel]:
    """The unimodal models, the trained fusions (``(name, config)``) and the procedures on one split, as child runs."""
    summary = datamodule.summary()
    kinds = {m: s.kind for m, s in datamodule.specs.items()}
    suffix = f"-r{fold_tags['lf.repeat']}-fold{fold_tags['lf.fold']}" if fold_tags else ""
    models: list[ComparedModel] = []
    unimodal: dict[str, FitResult] = {}
    for name, child_config in [(f"{model_kind([kinds[m]])} ({m})", c) for m, c in plans] + trained:
        progress(f"training {name}{where} ...")
        result = fit(
            child_config,
            datamodule,
            parent_run_id,
            keep_predictions=True,
            run_name=_run_name(config, name) + suffix,
            extra_tags=fold_tags,
        )
        if result.tags["lf.model_kind"] != "fusion":
            unimodal[name] = result
        models.append(_trained_row(name, child_config, result))
    for procedure in procedures:
        progress(f"fitting {procedure} on {', '.join(unimodal)}{where} ...")
        models.append(
            _run_procedure(procedure, unimodal, config, datamodule, parent_run_id, summary, fold_tags, suffix)
        )
    return models


def _pooled_models(per_fold: list[list[ComparedModel]], folds: list, config: ExperimentConfig) -> list[ComparedModel]:
    """One row per model from the first repeat's out-of-fold predictions (every patient tested once)."""
    first_repeat = [models for models, fold in zip(per_fold, folds) if fold.repeat == 0]
    pooled = []
    for position, template in enumerate(first_repeat[0]):
        parts = [models[position].test for models in first_repeat]
        ids = np.concatenate([p.patient_ids for p in parts])
        order = np.argsort(ids, kind="stable")
        test = Predictions(
            ids[order],
            np.concatenate([p.labels for p in parts])[order],
            np.concatenate([p.probs for p in parts])[order],
        )
        pooled.append(
            ComparedModel(
                name=template.name,
                kind=template.kind,
                fusion=template.fusion,
                modalities=template.modalities,
                how=template.how.split(" on ")[0] if template.how != "trained" else "trained",
                run_id=f"{len(per_fold)} fold runs",
                seconds=sum(models[position].seconds for models in per_fold),
                **_table_metrics(test, config.evaluation),
            )
        )
    return pooled


def _with_fold_spread(table: pd.DataFrame, per_fold: list[list[ComparedModel]], folds: list) -> pd.DataFrame:
    """Add the mean ± sd over fold models of balanced accuracy and AUROC."""
    table = table.copy()
    for metric in ("balanced_accuracy", "auroc"):
        values = np.array([[m.metrics[metric] for m in models] for models in per_fold])  # (folds, models)
        table[f"{metric}_fold_mean"] = values.mean(axis=0).round(4)
        table[f"{metric}_fold_sd"] = (values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(len(table))).round(4)
    return table


def _run_name(config: ExperimentConfig, model_name: str) -> str:
    return f"{config.name}-" + re.sub(r"[^A-Za-z0-9_.]+", "-", model_name).strip("-")


def _table_metrics(predictions: Predictions, evaluation: EvaluationConfig) -> dict[str, Any]:
    """The table's metrics: the bootstrap's point estimates (the logged metrics' definitions), intervals, NLL."""
    intervals = bootstrap_intervals(
        predictions.labels,
        predictions.probs,
        evaluation.bootstrap_resamples,
        evaluation.bootstrap_seed,
        evaluation.confidence,
    )
    metrics = {name: interval.value for name, interval in intervals.items()}
    metrics["nll"] = log_loss(predictions.probs, predictions.labels)
    return {"metrics": metrics, "intervals": intervals, "test": predictions}


def _trained_row(name: str, config: ExperimentConfig, result: FitResult) -> ComparedModel:
    assert result.predictions is not None
    return ComparedModel(
        name=name,
        kind=result.tags["lf.model_kind"],
        fusion=result.tags["lf.fusion"],
        modalities=list(config.model.modalities),
        how="trained",
        run_id=result.run_id,
        seconds=result.seconds,
        **_table_metrics(result.predictions["test"], config.evaluation),
    )


def _run_procedure(
    procedure: str,
    unimodal: dict[str, FitResult],
    config: ExperimentConfig,
    datamodule: MultimodalDataModule,
    parent_run_id: str | None,
    summary: dict[str, Any],
    fold_tags: dict[str, str] | None = None,
    suffix: str = "",
) -> ComparedModel:
    """Apply a decision-level procedure to the unimodal models' predictions; record it as a child run."""
    started = time.perf_counter()
    classes = datamodule.classes
    val = {name: r.predictions["val"] for name, r in unimodal.items()}
    test = {name: r.predictions["test"] for name, r in unimodal.items()}
    reference = next(iter(val.values()))
    for name in unimodal:  # one data module: every model predicted the same patients in the same order
        if not (
            np.array_equal(val[name].patient_ids, reference.patient_ids)
            and np.array_equal(test[name].patient_ids, next(iter(test.values())).patient_ids)
        ):
            raise RuntimeError(f"{name} predicted other patients than {next(iter(val))}")
    inputs = DecisionInputs(
        val={n: p.probs for n, p in val.items()},
        val_labels=reference.labels,
        val_groups=_patients(datamodule, reference.patient_ids),
        train_groups=_patients(datamodule, datamodule.splits["train"]),
        test={n: p.probs for n, p in test.items()},
        num_classes=len(classes),
    )
    probs, details = PROCEDURES.get(procedure)(inputs)
    test_ref = next(iter(test.values()))
    fused = Predictions(test_ref.patient_ids, test_ref.labels, np.asarray(probs, dtype=np.float64))
    modalities = list(config.model.modalities)
    base_runs = {name: r.run_id for name, r in unimodal.items()}
    tags = {
        "lf.model_kind": "fusion",
        "lf.fusion": procedure,
        "lf.procedure": "true",
        "lf.base_runs": ",".join(base_runs.values()),
        "lf.backbone": ",".join(sorted({r.tags["lf.backbone"] for r in unimodal.values()} - {"none"})) or "none",
        "lf.dataset": summary["dataset"],
        "lf.modalities": ",".join(modalities),
        "lf.experiment": config.name,
    } | (fold_tags or {})
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    name = f"fusion {procedure}"
    logger = create_run_logger(config.tracking, _run_name(config, name) + suffix, tags)
    try:
        meta = PROCEDURES.metadata(procedure)
        logger.log_params({"procedure": procedure, "fitted_on": meta["fitted_on"], "base_models": ",".join(base_runs)})
        logger.log_dict(details | {"base_runs": base_runs, "study": meta.get("study")}, "procedure.json")
        weights = details.get("weights") if procedure == "late_weighted" else None
        if weights:
            logger.log_metrics({f"fusion/weight/{metric_key_part(m)}": w for m, w in weights.items()})
        logger.log_metrics(metrics_from_probabilities(fused.probs, fused.labels, classes))
        log_tested_model(
            logger,
            classes,
            fused,
            summary,
            dataclasses.replace(config.evaluation, temperature_scaling=False),  # no validation output to fit it on
            title=f"{config.name}: fusion {procedure} (procedure on {', '.join(base_runs)})",
        )
        logger.close("success")
    except BaseException as err:
        logger.close(end_status(err))
        raise
    return ComparedModel(
        name=name,
        kind="fusion",
        fusion=procedure,
        modalities=modalities,
        how="procedure on " + ", ".join(base_runs),
        run_id=logger.run_id or "",
        seconds=time.perf_counter() - started,
        details=details,
        **_table_metrics(fused, config.evaluation),
    )


def _patients(datamodule: MultimodalDataModule, sample_ids: Sequence[str]) -> list[str]:
    """The patient of each sample (a sample is a patient unless the cohort groups samples by patient)."""
    groups = datamodule.cohort.groups
    return [str(groups[s]) for s in sample_ids] if groups is not None else [str(s) for s in sample_ids]


__all__ = ["DEFAULT_FUSIONS", "ComparedModel", "ComparisonResult", "parse_fusions", "run_comparison"]
