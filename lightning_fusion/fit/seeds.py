"""``fit --seeds N``: N models of one experiment on one patient split, tested once, as one ensemble.

Member ``i`` trains with the global seed ``seed + i`` (weights, augmentation, batch order); the split
(``data.split.seed``) and its fitted preprocessing are the same for every member. The members are
trained and validated only; the ensemble (the mean of their class probabilities,
:mod:`lightning_fusion.predict.ensemble`) is evaluated on the test set, once. A binary ensemble's
operating point (``evaluation.threshold``) is fitted on the mean of the members' probabilities on
the shared validation split.

MLflow: one parent run (tag ``lf.seeds=N``) with a child run per member, ``seed-<seed>`` (tags
``lf.member``, ``lf.seed``; validation metrics and the best checkpoint), and on the parent the
ensemble model (:mod:`lightning_fusion.fit.ensemble`) and everything a tested run keeps of its test
set: metrics with bootstrap intervals, calibration, curves, predictions and ``report.html``
(:func:`~lightning_fusion.fit.artifacts.log_tested_model`). The parent ends FINISHED, FAILED on an
error, KILLED on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_fusion.config import ExperimentConfig, evolve
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.errors import ConfigError
from lightning_fusion.evaluation.threshold import OperatingPoint, operating_point
from lightning_fusion.fit import ranks, signals
from lightning_fusion.fit.artifacts import log_tested_model
from lightning_fusion.fit.ensemble import collect_members, log_ensemble
from lightning_fusion.fit.parent import parent_run
from lightning_fusion.fit.results import Predictions, model_kind, run_tags
from lightning_fusion.fit.run import fit
from lightning_fusion.metrics import metrics_from_probabilities
from lightning_fusion.mlflow_ui import describe
from lightning_fusion.predict.ensemble import EnsembleModel, Member
from lightning_fusion.tracking import RunLogger, resolve_tracking_uri

log = logging.getLogger(__name__)

THRESHOLD_SOURCE = "validation: the mean of the members' probabilities on the shared validation split"


@dataclass
class SeedsResult:
    """What ``fit --seeds`` produced: the parent run, its members' runs and the ensemble's test metrics."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    seeds: list[int]
    member_run_ids: list[str]
    test_metrics: dict[str, float]
    data_summary: dict
    tags: dict[str, str]
    operating_point: OperatingPoint | None
    model_logged: bool


def check_seeds(count: int, config: ExperimentConfig) -> None:
    """A usable ``--seeds`` (before any data is read): at least one member, whose checkpoints are kept."""
    if count < 1:
        raise ConfigError(f"--seeds needs at least 1 member, got {count}")
    if not config.tracking.log_checkpoint:
        raise ConfigError("tracking.log_checkpoint is false, but --seeds keeps its members' checkpoints as its model")


@signals.StopSignals()
def fit_seeds(config: ExperimentConfig, count: int, progress: Callable[[str], None] = log.info) -> SeedsResult | None:
    """Train ``count`` members, then test their ensemble once; see the module docstring.

    Several processes (DDP): every one trains each member; rank 0 alone has the runs and tests the
    ensemble, the others return ``None``.
    """
    check_seeds(count, config)
    modalities = list(config.model.modalities)
    datamodule = MultimodalDataModule(config.data, modalities)  # bad input stops here: no run exists yet
    datamodule.prepare_data()
    datamodule.setup("fit")
    summary = datamodule.summary() | {"modalities": modalities}
    kinds = [datamodule.specs[m].kind for m in modalities]
    tags = run_tags(config, summary["dataset"], kinds) | {"lf.seeds": str(count)}
    seeds = [config.seed + i for i in range(count)]
    with parent_run(config, f"{config.name}-{model_kind(kinds)}-seeds{count}", tags, {"seeds.count": count}) as parent:
        run_ids = []
        for i, seed in enumerate(seeds):
            progress(f"seed {seed} ({i + 1}/{count}) ...")
            result = fit(
                evolve(config, {"seed": seed}),
                datamodule,
                parent.run_id,
                run_name=f"seed-{seed}",
                extra_tags={"lf.member": str(i), "lf.seed": str(seed)},
                run_test=False,  # the test set is evaluated once, on the ensemble
            )
            run_ids.append(result.run_id)
        if not ranks.is_global_zero():
            return None
        members = [Member(f"member-{i}.ckpt", run_id, f"seed {s}") for i, (run_id, s) in enumerate(zip(run_ids, seeds))]
        metrics, point = _test_ensemble(parent, config, datamodule, members, summary)
    return SeedsResult(
        parent.run_id or "",
        parent.experiment_id,
        resolve_tracking_uri(config.tracking.tracking_uri),
        seeds,
        run_ids,
        metrics,
        summary,
        tags,
        point,
        config.tracking.log_model,
    )


def _test_ensemble(
    parent: RunLogger,
    config: ExperimentConfig,
    datamodule: MultimodalDataModule,
    members: list[Member],
    summary: dict,
) -> tuple[dict[str, float], OperatingPoint | None]:
    """Rank 0: the ensemble collected, its operating point fitted on validation, its one test, all logged."""
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="lf-ensemble-") as folder:
        ensemble = collect_members(uri, members, Path(folder), "seeds")
        val, test = (_predictions(ensemble, datamodule, split) for split in ("val", "test"))
        point = operating_point(ensemble.classes, (val.labels, val.probs), config.evaluation)
        log_ensemble(parent, Path(folder), ensemble, point, THRESHOLD_SOURCE, config.tracking.log_model)
    metrics = metrics_from_probabilities(test.probs, test.labels, ensemble.classes)
    parent.log_metrics(metrics)
    metrics |= log_tested_model(
        parent,
        ensemble.classes,
        test,
        summary,
        config.evaluation,
        val,
        title=f"{config.name}: ensemble of {len(members)} seeds",
        point=point,
        present=datamodule.datasets["test"].present,
        modalities=config.model.modalities,
    )
    _describe(parent, config, members, metrics, point)
    return metrics, point


def _describe(
    parent: RunLogger,
    config: ExperimentConfig,
    members: list[Member],
    metrics: dict[str, float],
    point: OperatingPoint | None,
) -> None:
    """What the MLflow UI shows first on the parent: the ensemble's test result and where its threshold came from."""
    shown = [
        f"{name} {metrics[f'test/{name}']:.3f} [{metrics[f'test/{name}_ci_low']:.3f}, "
        f"{metrics[f'test/{name}_ci_high']:.3f}]"
        for name in ("balanced_accuracy", "auroc")
        if f"test/{name}_ci_low" in metrics
    ]
    note = [
        f"**{config.name}: ensemble of {len(members)} seeds, test {', '.join(shown)}**",
        "The mean of the members' class probabilities, tested once on the shared split's test patients; "
        "the members (child runs) trained and validated only: "
        + ", ".join(f"{m.role} (`{m.run_id}`)" for m in members)
        + ".",
    ]
    if point is not None:
        note.append(f"Decision threshold {point.threshold:.3f} ({point.method}), fitted on {THRESHOLD_SOURCE}.")
    note.append(f"Use it: `python -m lightning_fusion.predict --model runs:/{parent.run_id}`.")
    describe(parent.experiment, parent.run_id or "", "\n\n".join(note) + "\n")


def _predictions(ensemble: EnsembleModel, datamodule: MultimodalDataModule, split: str) -> Predictions:
    """The ensemble's probabilities on one split: the mean of its members' on the split's inputs, which the
    shared split's preprocessing (every member's own) made."""
    dataset = datamodule.datasets[split]
    arrays = {m: dataset.arrays[m] for m in ensemble.modalities}
    present = {m: flags for m, flags in dataset.present.items() if m in ensemble.modalities} or None
    probs = np.mean([member.predict_arrays(arrays, present) for member in ensemble.members], axis=0)
    return Predictions(np.asarray(dataset.patient_ids), dataset.labels, probs)


def summary_lines(result: SeedsResult) -> list[str]:
    """Printed by ``fit --seeds``: the ensemble's test metrics with intervals."""
    lines = []
    for name in ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "loss"):
        value = result.test_metrics.get(f"test/{name}")
        if value is None:
            continue
        low, high = result.test_metrics.get(f"test/{name}_ci_low"), result.test_metrics.get(f"test/{name}_ci_high")
        interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        lines.append(f"  {name:<18} {value:.3f}{interval}")
    return lines


__all__ = ["SeedsResult", "check_seeds", "fit_seeds", "summary_lines"]
