"""Running a study: Optuna's define-by-run loop around :func:`~lightning_fusion.fit.run.fit`.

Each trial samples its parameters (:func:`~lightning_fusion.sweep.study.sample`), composes the
experiment, trains with ``optuna_integration.PyTorchLightningPruningCallback`` on the study metric and
returns the best validation value of that metric over its epochs. A trial never runs the test set
(``fit(run_test=False)``): tuning sees validation only, and the chosen configuration is tested once,
afterwards, with ``fit``. An exception or a non-finite value fails that trial; the study goes on.

Storage: by default an Optuna journal file beside the MLflow store (``optuna.journal`` next to
``mlflow.db``), which several processes on one machine can share; any SQLAlchemy URL (e.g.
``postgresql://...``) for many machines, with heartbeats so a killed worker's trial is marked failed
and retried (``RetryHeartbeatStaleTrialCallback``, the successor of ``RetryFailedTrialCallback``).
A journal file has no heartbeat (Optuna implements it for database storage only): there a worker
starting fails the trials left RUNNING by a worker process of this machine that no longer runs
(``kill -9``, out of memory), and closes their MLflow runs FAILED (:func:`forget_dead_workers`).
Re-running the same command resumes: ``trials`` is a
total of finished (complete or pruned) trials, enforced with ``MaxTrialsCallback``.

MLflow: one parent run per study (tag ``lf.sweep=<study name>``, found again on resume) and a child
run per trial, ``trial-N`` (tags ``optuna.trial``, ``optuna.state``; the trial's parameters as params
``trial.<path>``); the report (:mod:`lightning_fusion.sweep.report`) describes the parent.

Several workers (:mod:`~lightning_fusion.sweep.workers`): each samples with its own seed, TPE with a
constant liar, and a grid point is handed out once (:mod:`~lightning_fusion.sweep.samplers`). The
parent run is RUNNING while the study runs (set again when a study with trials left is resumed),
FINISHED once the study holds its total of finished trials, whichever worker gets there; otherwise
the process that started the workers ends it: KILLED on an interrupt (Ctrl-C, SIGTERM), FAILED on an
exception, a worker that exited non-zero, or trials that all failed. A worker leaves it RUNNING while
a live worker elsewhere is still inside a trial: that one ends it (:func:`settle_parent`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from lightning_fusion.config import to_dict
from lightning_fusion.errors import ConfigError
from lightning_fusion.fit import ranks
from lightning_fusion.sweep.best_metric import BestMetric
from lightning_fusion.sweep.samplers import GridOnce, build_sampler
from lightning_fusion.sweep.study import Study, sample
from lightning_fusion.sweep.trial import TrialJob, run_trial_here, run_trial_process
from lightning_fusion.sweep.workers import (
    PROCESS_ATTR,
    WORKER_ATTR,
    check_worker_id_free,
    dead_workers,
    fail_trials_of,
    live_running_trials,
    process_identity,
)
from lightning_fusion.tracking import create_run_logger, end_status, interrupt_of, resolve_tracking_uri

log = logging.getLogger(__name__)

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def default_storage_path(tracking_uri: str) -> Path:
    """``optuna.journal`` beside a local SQLite MLflow store; in the working directory otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve().parent / "optuna.journal"
    return Path("optuna.journal").resolve()


def open_storage(
    url: str | None, tracking_uri: str, heartbeat_interval: int = 30, grace_period: int = 90
) -> tuple[Any, str, str]:
    """The Optuna storage for ``url`` (journal file by default), a printable description, and the URL."""
    if url is None or url.endswith(".journal") or url.startswith("journal:"):
        path = Path(url.removeprefix("journal:")) if url else default_storage_path(tracking_uri)
        path = path.expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), f"journal file {path}", str(path)
    storage = RDBStorage(
        url,
        heartbeat_interval=heartbeat_interval,  # a running trial's worker writes a heartbeat this often
        grace_period=grace_period,  # no heartbeat for this long: the trial is failed (and retried)
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
        engine_kwargs={"pool_pre_ping": True},
    )
    return storage, url.split("@")[-1] if "@" in url else url, url  # no password in messages


def build_pruner(study: Study) -> optuna.pruners.BasePruner:
    spec = study.spec.pruner
    if spec.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    if spec.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_resource, reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


@dataclass
class SweepResult:
    study: optuna.Study
    parent_run_id: str
    tracking_uri: str
    storage: str
    reached: bool = True  # the study holds its total of finished trials
    stopped: str | None = None  # why this worker stopped short: "failed" (its trials failed) or "grid" (no point left)


@dataclass
class Prepared:
    """A created (or loaded) study with its storage and parent run: what workers share."""

    optuna_study: optuna.Study
    parent_id: str
    tracking_uri: str
    storage: str
    total: int
    storage_url: str
    worker: int = 0

    def finished(self) -> int:
        return len(self.optuna_study.get_trials(deepcopy=False, states=FINISHED_STATES))


def prepare(
    study: Study,
    storage_url: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    tracking_uri: str | None = None,
    heartbeat: tuple[int, int] = (30, 90),
    worker: int = 0,
) -> Prepared:
    """Create or load the Optuna study and find or create its MLflow parent run (RUNNING again if trials are left).

    ``heartbeat`` (interval, grace period in seconds) applies to database storage only; ``worker`` is
    this process's worker id (its sampler seed).
    """
    name = study_name or study.name
    base = study.compose({})
    uri = resolve_tracking_uri(tracking_uri or base.tracking.tracking_uri)
    total = n_trials or study.spec.trials
    sampler = build_sampler(study, worker)
    if isinstance(sampler, GridOnce) and total > len(sampler.points):
        raise ConfigError(f"--n-trials {total} exceeds the grid size {len(sampler.points)}: each point runs once")
    storage, where, resolved = open_storage(storage_url, uri, *heartbeat)
    optuna_study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction=study.spec.direction,
        sampler=sampler,
        pruner=build_pruner(study),
    )
    parent = _parent_run(base, name, uri, study)
    prepared = Prepared(optuna_study, parent, uri, where, total, resolved, worker)
    if prepared.finished() < total:  # a new study, or one resumed with trials left
        client = MlflowClient(uri)
        if client.get_run(parent).info.status != "RUNNING":
            client.update_run(parent, status="RUNNING")
    return prepared


def run_sweep(
    study: Study,
    storage_url: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    tracking_uri: str | None = None,
    progress: Callable[[str], None] = log.info,
    heartbeat: tuple[int, int] = (30, 90),
    worker: int = 0,
) -> SweepResult:
    """Run (or resume) the study until it holds ``n_trials`` (default: the file's ``trials``) finished trials."""
    prepared = prepare(study, storage_url, study_name, n_trials, tracking_uri, heartbeat, worker)
    return optimize(study, prepared, progress)


def optimize(
    study: Study, prepared: Prepared, progress: Callable[[str], None] = log.info, own_parent: bool = True
) -> SweepResult:
    """Run trials of a prepared study until it holds ``prepared.total`` finished trials.

    Reaching the total ends the parent run FINISHED. With ``own_parent`` (a worker nobody launched) this
    worker also ends it when it stops short: FAILED (its trials failed, an exception) or KILLED (an
    interrupt), unless a live worker elsewhere is inside a trial (:func:`settle_parent`). A worker of
    ``--workers K`` leaves that to its launcher.
    """
    optuna_study, total = prepared.optuna_study, prepared.total
    me = process_identity()
    grid = optuna_study.sampler if isinstance(optuna_study.sampler, GridOnce) else None
    stopped = None
    forget_dead_workers(prepared, progress)
    check_worker_id_free(optuna_study, prepared.worker, me)
    try:
        finished = prepared.finished()
        progress(
            f"study {optuna_study.study_name!r} in {prepared.storage}: {finished} of {total} trials finished "
            f"(worker {prepared.worker})"
        )
        objective = _objective(
            study, optuna_study.study_name, prepared.parent_id, prepared.tracking_uri, progress, prepared.worker, me
        )
        while finished < total:  # failed trials do not count: run more until the total is reached
            if not _round(optuna_study, objective, total - finished, total, grid):
                if prepared.finished() < total:
                    progress(f"study {optuna_study.study_name!r}: every grid point is finished or running elsewhere")
                    stopped = "grid"
                break
            now = prepared.finished()
            if now == finished:
                progress(f"study {optuna_study.study_name!r}: every trial of the last round failed; stopping")
                stopped = "failed"
                break
            finished = now
    except BaseException as err:
        if own_parent:
            settle_parent(prepared, end_status(err), progress, [me])
        raise
    client = MlflowClient(prepared.tracking_uri)
    _close_failed_runs(client, prepared.parent_id, optuna_study)
    reached = prepared.finished() >= total
    if reached:
        client.set_terminated(prepared.parent_id, "FINISHED")
    elif own_parent:
        settle_parent(prepared, "FAILED", progress, [me])
    return SweepResult(optuna_study, prepared.parent_id, prepared.tracking_uri, prepared.storage, reached, stopped)


def _round(optuna_study: optuna.Study, objective, n: int, total: int, grid: GridOnce | None) -> bool:
    """Up to ``n`` trials; ``False`` if a grid worker found no open point (it asks for no trial then)."""
    for _ in range(n if grid is not None else 1):
        if grid is not None and grid.reserve(optuna_study) is None:
            return False
        optuna_study.optimize(
            objective,
            n_trials=1 if grid is not None else n,
            callbacks=[MaxTrialsCallback(total, states=FINISHED_STATES)],
            catch=(Exception,),
            gc_after_trial=True,
        )
        if len(optuna_study.get_trials(deepcopy=False, states=FINISHED_STATES)) >= total:
            break
    return True


def settle_parent(
    prepared: Prepared, status: str, progress: Callable[[str], None] = log.info, mine: Iterable[str] = ()
) -> str:
    """End the parent run with ``status`` (``FINISHED`` if the study reached its total meanwhile) and return
    the status set, or ``RUNNING``: a live worker other than the processes ``mine`` is inside a trial and
    ends the parent itself."""
    client = MlflowClient(prepared.tracking_uri)
    if prepared.finished() >= prepared.total:
        status = "FINISHED"
    else:
        others = live_running_trials(prepared.optuna_study, not_of=mine)
        if others:
            progress(
                f"study {prepared.optuna_study.study_name!r}: trial(s) {[t.number for t in others]} still running in "
                f"other workers ({sorted({str(t.user_attrs.get(PROCESS_ATTR)) for t in others})}); the parent run "
                "stays RUNNING until a worker ends the study"
            )
            return "RUNNING"
    client.set_terminated(prepared.parent_id, status)
    return status


def forget_workers(prepared: Prepared, identities: Iterable[str]) -> None:
    """Trials that exited (killed) workers left RUNNING: FAIL in Optuna, their MLflow runs FAILED."""
    if fail_trials_of(prepared.optuna_study, identities):
        _close_failed_runs(MlflowClient(prepared.tracking_uri), prepared.parent_id, prepared.optuna_study)


def forget_dead_workers(prepared: Prepared, progress: Callable[[str], None] = log.info) -> None:
    """Journal storage: fail the trials that dead worker processes of this machine left RUNNING.

    Database storage has Optuna's heartbeat instead (it fails and retries such a trial after the grace
    period); a journal file has none, so without this a ``kill -9``'d worker's trial stayed RUNNING for ever.
    """
    if not isinstance(prepared.optuna_study._storage, JournalStorage):
        return
    dead = dead_workers(prepared.optuna_study)
    if dead:
        progress(
            f"study {prepared.optuna_study.study_name!r}: failing the trials left RUNNING by worker(s) that no "
            f"longer run ({', '.join(dead)})"
        )
        forget_workers(prepared, dead)


def _close_failed_runs(client: MlflowClient, parent_id: str, optuna_study: optuna.Study) -> None:
    """A killed worker leaves its trial's MLflow run RUNNING; once Optuna has failed the trial, say so."""
    failed = {t.number for t in optuna_study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    if not failed:
        return
    parent = client.get_run(parent_id)
    for run in client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'",
    ):
        if int(run.data.tags.get("optuna.trial", -1)) in failed:
            client.set_tag(run.info.run_id, "optuna.state", "FAIL")
            client.set_terminated(run.info.run_id, "FAILED")


def _parent_run(base, name: str, uri: str, study: Study) -> str:
    """The study's parent run: found by tag ``lf.sweep`` (resume, other workers) or created."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(base.tracking.experiment)
    if experiment is not None:
        found = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`lf.sweep` = '{name}' and tags.`lf.sweep_parent` = 'true'",
            max_results=1,
        )
        if found:
            return found[0].info.run_id
    logger = create_run_logger(
        dataclasses.replace(base.tracking, tracking_uri=uri),
        f"sweep-{name}",
        {"lf.sweep": name, "lf.sweep_parent": "true", "lf.experiment": base.name, "lf.study_file": str(study.path)},
    )
    logger.log_params(
        {
            "study.metric": study.spec.metric,
            "study.direction": study.spec.direction,
            "study.trials": study.spec.trials,
            "study.sampler": study.spec.sampler.name,
            "study.pruner": study.spec.pruner.name,
            "study.space": {k: vars(v) for k, v in study.spec.space.items()},
        }
    )
    logger.log_text(study.path.read_text(), "study.yaml")
    return logger.run_id or ""


def _objective(
    study: Study, name: str, parent_id: str, uri: str, progress: Callable[[str], None], worker: int, me: str
):
    spec = study.spec
    client = MlflowClient(uri)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker)
        trial.set_user_attr(PROCESS_ATTR, me)
        params = sample(trial, spec)
        config = study.compose(params, {"tracking.tracking_uri": uri})
        progress(f"trial {trial.number}: {params}")
        tags = {"lf.sweep": name, "optuna.trial": str(trial.number), "optuna.study": name}
        bests: list[BestMetric] = []
        try:
            value = (
                _cv_trial(trial, study, config, parent_id, tags, bests)
                if spec.cv
                else _one_fit(trial, study, config, parent_id, tags, bests)
            )
        except optuna.TrialPruned:
            trial.set_user_attr("epochs", sum(b.epochs for b in bests))
            _mark(client, parent_id, trial.number, "PRUNED", params, bests)
            raise
        except BaseException as err:
            interrupt = interrupt_of(err)
            _mark(client, parent_id, trial.number, "FAIL", params, bests, interrupted=interrupt is not None)
            if interrupt is not None and not isinstance(err, KeyboardInterrupt):
                # Lightning turns an interrupt into SystemExit, which Optuna does not catch: the trial would
                # stay RUNNING. Optuna marks a trial that a KeyboardInterrupt ends FAIL and re-raises it.
                raise (type(interrupt) if isinstance(interrupt, KeyboardInterrupt) else KeyboardInterrupt)() from err
            raise
        trial.set_user_attr("epochs", sum(b.epochs for b in bests))
        _mark(client, parent_id, trial.number, "COMPLETE", params, bests)
        return value

    return objective


def _one_fit(trial: optuna.Trial, study: Study, config, parent_id: str, tags: dict, bests: list[BestMetric]) -> float:
    """One training run on the experiment's split; Optuna prunes it epoch by epoch."""
    spec = study.spec
    best = BestMetric(spec.metric, spec.direction)
    bests.append(best)
    run_name = f"trial-{trial.number}"  # under the study's parent run, which names the study
    external = ranks.external_environment() is not None  # torchrun / srun started the ranks
    if config.trainer.several_processes or external:  # DDP: a fresh process per trial (see sweep/trial.py)
        job = _job(study, config, parent_id, tags, run_name, prune_each_epoch=spec.pruner.name != "none")

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        outcome = (run_trial_here if external else run_trial_process)(job, report)
        best.best, best.epochs = outcome["best"], outcome["epochs"]
        trial.set_user_attr("world_size", outcome["world_size"])
        if outcome["pruned_at"] is not None:
            MlflowClient(config.tracking.tracking_uri).set_terminated(outcome["run_id"], "KILLED")
            raise optuna.TrialPruned(f"trial {trial.number} was pruned at epoch {outcome['pruned_at']}")
        return best.best

    from lightning_fusion.fit.run import fit  # heavy import only when a trial runs

    callbacks: list[L.Callback] = [best]
    if spec.pruner.name != "none":
        callbacks.append(PyTorchLightningPruningCallback(trial, spec.metric))
    fit(config, parent_run_id=parent_id, extra_tags=tags, callbacks=callbacks, run_test=False, run_name=run_name)
    if best.best is None:
        raise ValueError(f"trial {trial.number}: no value of {spec.metric} was logged")
    return best.best


def _job(study: Study, config, parent_id: str, tags: dict, run_name: str, **kwargs) -> TrialJob:
    return TrialJob(
        config=to_dict(config),
        parent_run_id=parent_id,
        tags=tags,
        run_name=run_name,
        metric=study.spec.metric,
        direction=study.spec.direction,
        result_path="",
        **kwargs,
    )


def _cv_trial(trial: optuna.Trial, study: Study, config, parent_id: str, tags: dict, bests: list[BestMetric]) -> float:
    """K fold models (``cv: K`` in the study file): the mean over folds of each one's best validation value.

    Each fold trains on its training folds and validates on its inner validation split; the fold's
    held-out part is not used. The running mean is reported after every fold, so a pruner can stop a
    hopeless configuration after its first folds. With DDP, each fold model trains in a fresh process.
    """
    from lightning_fusion.fit.crossval import fold_datamodule, plan_folds
    from lightning_fusion.fit.run import fit

    spec = study.spec
    modalities = list(config.model.modalities)
    folds = plan_folds(config, modalities, spec.cv, 1)
    values = []
    for fold in folds:
        best = BestMetric(spec.metric, spec.direction)
        bests.append(best)
        run_name = f"trial-{trial.number}-fold-{fold.index}"
        fold_tags = tags | {"lf.fold": str(fold.index)}
        external = ranks.external_environment() is not None
        if config.trainer.several_processes or external:
            job = _job(study, config, parent_id, fold_tags, run_name, cv=spec.cv, fold=fold.index)
            outcome = (run_trial_here if external else run_trial_process)(job)
            best.best, best.epochs = outcome["best"], outcome["epochs"]
        else:
            fit(
                config,
                fold_datamodule(config, modalities, fold),
                parent_id,
                extra_tags=fold_tags,
                callbacks=[best],
                run_test=False,
                run_name=run_name,
            )
        if best.best is None:
            raise ValueError(f"trial {trial.number} fold {fold.index}: no value of {spec.metric} was logged")
        values.append(best.best)
        trial.report(sum(values) / len(values), step=fold.index)
        if spec.pruner.name != "none" and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after fold {fold.index}")
    trial.set_user_attr("fold_values", values)
    return sum(values) / len(values)


def _mark(
    client: MlflowClient,
    parent_id: str,
    number: int,
    state: str,
    params: dict[str, Any],
    bests: list[BestMetric],
    interrupted: bool = False,
) -> None:
    """Tag the trial's child runs with its Optuna state and parameters (a pruned or interrupted run ends KILLED)."""
    parent = client.get_run(parent_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`optuna.trial` = '{number}'",
    )
    for run in runs:  # none when the trial failed before its run existed (e.g. a config error)
        run_id = run.info.run_id
        client.set_tag(run_id, "optuna.state", state)
        for path, value in params.items():
            client.log_param(run_id, f"trial.{path}", value)
        client.log_metric(run_id, "trial/epochs", sum(b.epochs for b in bests))
        values = [b.best for b in bests if b.best is not None]
        if values:
            client.log_metric(run_id, "trial/best_value", sum(values) / len(values))
        if (state == "PRUNED" or interrupted) and run.info.status != "FINISHED":  # the run the pruner/signal stopped
            client.set_terminated(run_id, "KILLED")


__all__ = [
    "BestMetric",
    "SweepResult",
    "open_storage",
    "optimize",
    "prepare",
    "run_sweep",
    "settle_parent",
    "forget_workers",
]
