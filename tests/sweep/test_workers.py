"""Several workers on one study: a seed per worker, a grid point once, and the parent run's states.

The two-worker tests start real processes (``--workers 2``) on a tiny study: one-epoch trials of the
clinical-only model on the 60-patient cohort.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from lightning_fusion.errors import ConfigError
from lightning_fusion.sweep import __main__ as sweep_cli
from lightning_fusion.sweep.runner import optimize, prepare, run_sweep, settle_parent
from lightning_fusion.sweep.samplers import CLAIM_ATTR, GridExhausted, GridOnce, build_sampler, worker_seed
from lightning_fusion.sweep.study import load_study
from lightning_fusion.sweep.workers import PROCESS_ATTR, WORKER_ATTR, check_worker_id_free, process_identity
from tests.sweep.test_sweep import _runs, _write_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
GRID = {
    "optim.lr": {"type": "categorical", "choices": [1e-3, 3e-3, 1e-2]},
    "seed": {"type": "categorical", "choices": [0, 1]},
}


def _journal(path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --------------------------------------------------------------------------------------------------
# Seeds and samplers


def test_worker_seeds_are_spawned_from_the_study_seed_distinct_and_reproducible():
    seeds = [worker_seed(0, w) for w in range(16)]
    assert len(set(seeds)) == 16
    assert seeds == [int(c.generate_state(1)[0]) for c in np.random.SeedSequence(0).spawn(16)]
    assert worker_seed(0, 3) == seeds[3]  # reproducible from the study file and the worker id
    # not seed + worker: study seed 1's worker 0 is not study seed 0's worker 1
    assert worker_seed(1, 0) != worker_seed(0, 1) and worker_seed(1, 0) != 1
    assert worker_seed(None, 5) is None  # seed: null: every worker draws from the OS


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_two_workers_samplers_propose_different_parameters(tmp_path, small_cohort, name):
    study = load_study(_write_study(tmp_path, small_cohort, space=LR, sampler={"name": name, "seed": 0}))
    proposals = []
    for worker in (0, 1, 0):
        optuna_study = optuna.create_study(sampler=build_sampler(study, worker))
        proposals.append([optuna_study.ask().suggest_float("x", 0, 1) for _ in range(3)])
    assert proposals[0] != proposals[1] and proposals[0] == proposals[2]
    if name == "tpe":
        assert build_sampler(study, 1)._constant_liar  # running trials of other workers count as bad


def test_grid_workers_share_the_study_seed_order(tmp_path, small_cohort):
    study = load_study(_write_study(tmp_path, small_cohort, space=GRID, sampler={"name": "grid", "seed": 3}))
    assert build_sampler(study, 0).points == build_sampler(study, 5).points
    assert len(build_sampler(study, 0).points) == 6


# --------------------------------------------------------------------------------------------------
# The grid: each point once


def test_grid_points_run_once_across_concurrent_workers_and_failed_points_run_again(tmp_path):
    """Three workers (threads, each with its own study object) on one journal file; some points fail once."""
    grid = {"a": [1, 2, 3, 4], "b": ["x", "y", "z"]}
    path = tmp_path / "grid.journal"
    optuna.create_study(study_name="g", storage=_journal(path))
    failed_once, lock = set(), threading.Lock()

    def objective(trial):
        point = (trial.suggest_categorical("a", grid["a"]), trial.suggest_categorical("b", grid["b"]))
        time.sleep(random.uniform(0, 0.02))
        with lock:
            if point not in failed_once and point[0] % 2 == 0:
                failed_once.add(point)
                raise RuntimeError("first attempt fails")
        return float(point[0])

    def worker(number):
        study = optuna.load_study(study_name="g", storage=_journal(path), sampler=GridOnce(grid, seed=0, worker=number))
        while study.sampler.reserve(study) is not None:  # as the runner's workers do: no trial without a point
            study.optimize(objective, n_trials=1, catch=(Exception,))

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trials = optuna.load_study(study_name="g", storage=_journal(path)).trials
    complete = [(t.params["a"], t.params["b"]) for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted((a, b) for a in grid["a"] for b in grid["b"])  # every point, once
    assert sum(t.state == TrialState.FAIL for t in trials) == len(failed_once) == 6  # no trial found the grid empty


def test_a_grid_claim_that_loses_a_race_moves_to_another_point(tmp_path):
    """The moment Optuna's GridSampler gets wrong: another worker claims the same point while this one claims it."""
    grid = {"a": [1, 2, 3]}
    storage = _journal(tmp_path / "race.journal")
    study = optuna.create_study(study_name="race", storage=storage, sampler=GridOnce(grid, seed=0))
    ours = storage.create_new_trial(study._study_id)
    theirs = storage.create_new_trial(study._study_id)
    first = study.sampler.points[0]  # what trial 0 (ours) prefers
    write = storage.set_trial_system_attr

    def racing_write(trial_id, key, value):
        write(trial_id, key, value)
        if trial_id == ours and value == first and not storage.get_trial(theirs).system_attrs.get(CLAIM_ATTR):
            write(theirs, CLAIM_ATTR, first)  # the other worker claims the same point right then

    storage.set_trial_system_attr = racing_write
    study.sampler.before_trial(study, storage.get_trial(ours))
    claims = [storage.get_trial(t).system_attrs[CLAIM_ATTR] for t in (ours, theirs)]
    assert claims[1] == first and claims[0] not in (None, first)


def test_two_workers_reserving_at_once_get_different_points(tmp_path):
    grid = {"a": [1, 2, 3]}
    storage = _journal(tmp_path / "reserve.journal")
    ours = optuna.create_study(study_name="r", storage=storage, sampler=GridOnce(grid, seed=0, worker=0))
    theirs = optuna.load_study(study_name="r", storage=storage, sampler=GridOnce(grid, seed=0, worker=0))
    write = storage.set_study_system_attr

    def racing_write(study_id, key, value):
        write(study_id, key, value)
        if key == ours.sampler._reservation_key and value and theirs.sampler._reserved is None:
            theirs.sampler._reserved = value["point"]  # the other worker reserves the same point right then
            write(study_id, theirs.sampler._reservation_key, dict(value))

    storage.set_study_system_attr = racing_write
    mine = ours.sampler.reserve(ours)
    assert theirs.sampler._reserved is not None and mine not in (None, theirs.sampler._reserved)
    assert sorted(p["a"] for p in ours.sampler.open_points(ours)) == sorted(
        {1, 2, 3} - {mine["a"], theirs.sampler._reserved["a"]}
    )
    trial = ours.ask()  # the trial takes the reservation, which is then released
    assert trial.suggest_categorical("a", grid["a"]) == mine["a"]
    assert (
        ours.sampler._reserved is None
        and not storage.get_study_system_attrs(ours._study_id)[ours.sampler._reservation_key]
    )


def test_grid_holders_dead_workers_and_an_empty_grid(tmp_path):
    grid = {"a": [1, 2]}
    storage = _journal(tmp_path / "held.journal")
    study = optuna.create_study(study_name="held", storage=storage, sampler=GridOnce(grid, seed=0))
    alive, dead = storage.create_new_trial(study._study_id), storage.create_new_trial(study._study_id)
    storage.set_trial_system_attr(alive, CLAIM_ATTR, {"a": 1})
    storage.set_trial_user_attr(alive, PROCESS_ATTR, process_identity(os.getppid()))
    storage.set_trial_system_attr(dead, CLAIM_ATTR, {"a": 2})
    storage.set_trial_user_attr(dead, PROCESS_ATTR, process_identity(_dead_pid()))
    assert study.sampler.open_points(study) == [{"a": 2}]  # a dead worker's running trial holds nothing
    storage.set_trial_user_attr(dead, PROCESS_ATTR, process_identity(os.getppid()))
    assert study.sampler.open_points(study) == []
    trial = optuna.Trial(study, storage.create_new_trial(study._study_id))  # finds no open point
    with pytest.raises(GridExhausted, match="no grid point left"):
        trial.suggest_categorical("a", grid["a"])


def test_n_trials_beyond_the_grid_is_a_config_error(tmp_path, small_cohort, mlflow_store):
    study = load_study(_write_study(tmp_path, small_cohort, space=GRID, sampler={"name": "grid", "seed": 0}))
    with pytest.raises(ConfigError, match="exceeds the grid size 6"):
        prepare(study, str(tmp_path / "g.journal"), n_trials=7, tracking_uri=mlflow_store["uri"])


# --------------------------------------------------------------------------------------------------
# Two real workers


@pytest.mark.parametrize(
    ("sampler", "space", "trials"),
    [("random", LR, 4), ("tpe", LR, 4), ("grid", GRID, 6)],
    ids=["random", "tpe", "grid"],
)
def test_two_workers_never_run_the_same_parameters(tmp_path, small_cohort, mlflow_store, sampler, space, trials):
    path = _write_study(
        tmp_path,
        small_cohort,
        space=space,
        trials=trials,
        sampler={"name": sampler, "seed": 0},
        name=f"two_{sampler}",
        overrides={"trainer.max_epochs": 1},
    )
    storage = str(tmp_path / "two.journal")
    argv = [str(path), "--storage", storage, "--workers", "2", "--tracking-uri", mlflow_store["uri"]]
    assert sweep_cli.main(argv) == 0
    trials_run = optuna.load_study(study_name=f"two_{sampler}", storage=_journal(storage)).trials
    assert all(t.state == TrialState.COMPLETE for t in trials_run)
    params = [tuple(sorted(t.params.items())) for t in trials_run]
    assert len(params) >= trials and len(set(params)) == len(params)  # no parameter set twice
    if sampler == "grid":
        assert len(params) == trials  # the whole grid, each point once
    assert {t.user_attrs[WORKER_ATTR] for t in trials_run} == {0, 1}  # both workers ran trials
    client, runs = _runs(mlflow_store["uri"])
    parent = next(r for r in runs if r.data.tags.get("lf.sweep_parent") == "true")
    assert parent.info.status == "FINISHED"
    assert not [r for r in runs if r.info.status == "RUNNING"]


# --------------------------------------------------------------------------------------------------
# The parent run's states


def _parent(uri, name=None):
    _, runs = _runs(uri)
    return next(
        r
        for r in runs
        if r.data.tags.get("lf.sweep_parent") == "true" and (name is None or r.data.tags["lf.sweep"] == name)
    )


def test_the_parent_run_finishes_with_the_study_and_runs_again_on_resume(tmp_path, small_cohort, mlflow_store):
    study = load_study(_write_study(tmp_path, small_cohort, trials=2, overrides={"trainer.max_epochs": 1}))
    storage, uri = str(tmp_path / "p.journal"), mlflow_store["uri"]
    result = run_sweep(study, storage, tracking_uri=uri)
    assert result.reached and _parent(uri).info.status == "FINISHED"
    prepared = prepare(study, storage, n_trials=3, tracking_uri=uri)  # resumed with one more trial to go
    assert prepared.parent_id == result.parent_run_id and _parent(uri).info.status == "RUNNING"
    optimize(study, prepared)
    assert _parent(uri).info.status == "FINISHED"
    prepare(study, storage, n_trials=3, tracking_uri=uri)  # nothing left to run: it stays FINISHED
    assert _parent(uri).info.status == "FINISHED"


def test_an_exception_in_the_worker_fails_the_parent_run(tmp_path, small_cohort, mlflow_store, monkeypatch):
    def storage_gone(*args, **kwargs):
        raise RuntimeError("storage went away")

    monkeypatch.setattr(optuna.Study, "optimize", storage_gone)
    study = load_study(_write_study(tmp_path, small_cohort, trials=2))
    with pytest.raises(RuntimeError, match="storage went away"):
        run_sweep(study, str(tmp_path / "e.journal"), tracking_uri=mlflow_store["uri"])
    assert _parent(mlflow_store["uri"]).info.status == "FAILED"


def test_workers_whose_trials_all_fail_exit_non_zero_and_fail_the_parent(tmp_path, small_cohort, mlflow_store):
    # val/never_logged is a validation metric name, but nothing logs it: every trial fails after its epoch
    path = _write_study(
        tmp_path, small_cohort, trials=1, metric="val/never_logged", overrides={"trainer.max_epochs": 1}
    )
    storage = str(tmp_path / "f.journal")
    argv = [str(path), "--storage", storage, "--workers", "2", "--tracking-uri", mlflow_store["uri"]]
    assert sweep_cli.main(argv) == 1
    trials = optuna.load_study(study_name="study", storage=_journal(storage)).trials
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    _, runs = _runs(mlflow_store["uri"])
    assert _parent(mlflow_store["uri"]).info.status == "FAILED"
    assert not [r for r in runs if r.info.status == "RUNNING"]


def _start_sweep(path, storage, uri, *extra):
    command = [sys.executable, "-m", "lightning_fusion.sweep", str(path), "--storage", storage, "--tracking-uri", uri]
    return subprocess.Popen(
        command + list(extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for_training(name: str, storage: str, uri: str, trials: int, process: subprocess.Popen) -> None:
    """Until ``trials`` trials of the study are RUNNING, each with its MLflow run: the workers are training."""
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        try:
            running = optuna.load_study(study_name=name, storage=_journal(storage)).get_trials(
                states=(TrialState.RUNNING,)
            )
        except KeyError:  # not created yet
            running = []
        runs = [r for r in _runs(uri)[1] if r.data.tags.get("optuna.study") == name]
        if len(running) >= trials and len(runs) >= trials:
            time.sleep(1)
            return
        time.sleep(0.5)
    raise AssertionError(f"the sweep never had {trials} trial(s) training (exit status {process.poll()})")


def _nothing_left_running(name: str, storage: str, uri: str):
    trials = optuna.load_study(study_name=name, storage=_journal(storage)).trials
    assert trials and not [t.number for t in trials if t.state == TrialState.RUNNING]
    _, runs = _runs(uri)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    return trials, runs


@pytest.mark.parametrize(
    ("workers", "sig", "code"),
    [(2, signal.SIGTERM, 143), (1, signal.SIGINT, 130)],
    ids=["sigterm-launcher-of-2", "ctrl-c-one-worker"],
)
def test_an_interrupted_sweep_kills_the_parent_and_leaves_nothing_running(
    tmp_path, small_cohort, mlflow_store, workers, sig, code
):
    name = f"stopped{workers}"
    path = _write_study(tmp_path, small_cohort, trials=4, name=name, overrides={"trainer.max_epochs": 500})
    storage, uri = str(tmp_path / "s.journal"), mlflow_store["uri"]
    process = _start_sweep(path, storage, uri, "--workers", str(workers))
    try:
        _wait_for_training(name, storage, uri, workers, process)
        process.send_signal(sig)
        assert process.wait(timeout=120) == code
    finally:
        if process.poll() is None:
            process.kill()
    trials, runs = _nothing_left_running(name, storage, uri)
    assert _parent(uri, name).info.status == "KILLED"
    stopped = [r for r in runs if r.data.tags.get("optuna.study") == name]
    assert len(stopped) == workers and all(r.info.status == "KILLED" for r in stopped)
    assert all(t.state == TrialState.FAIL for t in trials)


def test_a_killed_workers_trial_on_a_journal_is_failed_by_the_next_worker_and_the_study_finishes(
    tmp_path, small_cohort, mlflow_store
):
    """``kill -9`` of a lone worker inside a trial: a journal has no heartbeat, so the trial stays RUNNING
    until the next worker on this machine fails it (and its MLflow run); that worker finishes the study."""
    name = "killed"
    path = _write_study(tmp_path, small_cohort, trials=1, name=name, overrides={"trainer.max_epochs": 500})
    storage, uri = str(tmp_path / "s.journal"), mlflow_store["uri"]
    process = _start_sweep(path, storage, uri)
    try:
        _wait_for_training(name, storage, uri, 1, process)
        process.kill()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    [left] = optuna.load_study(study_name=name, storage=_journal(storage)).trials
    assert left.state == TrialState.RUNNING  # what the next worker has to clean up

    path = _write_study(tmp_path, small_cohort, trials=1, name=name, overrides={"trainer.max_epochs": 1})
    assert sweep_cli.main([str(path), "--storage", storage, "--tracking-uri", uri]) == 0
    trials, runs = _nothing_left_running(name, storage, uri)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert {r.data.tags["optuna.trial"]: r.info.status for r in runs if "optuna.trial" in r.data.tags} == {
        "0": "FAILED",
        "1": "FINISHED",
    }
    assert _parent(uri, name).info.status == "FINISHED"


def test_a_worker_leaves_the_parent_running_while_another_worker_is_inside_a_trial(
    tmp_path, small_cohort, mlflow_store
):
    study = load_study(_write_study(tmp_path, small_cohort, trials=2))
    prepared = prepare(study, str(tmp_path / "o.journal"), tracking_uri=mlflow_store["uri"])
    storage = prepared.optuna_study._storage
    other = storage.create_new_trial(prepared.optuna_study._study_id)  # another worker's trial, in progress
    storage.set_trial_user_attr(other, WORKER_ATTR, 1)
    storage.set_trial_user_attr(other, PROCESS_ATTR, process_identity(os.getppid()))  # a live process
    assert settle_parent(prepared, "KILLED", mine=[process_identity()]) == "RUNNING"
    assert _parent(mlflow_store["uri"]).info.status == "RUNNING"
    with pytest.raises(ConfigError, match="worker id 1 is in use by"):  # and its id is taken
        check_worker_id_free(prepared.optuna_study, 1, process_identity())
    check_worker_id_free(prepared.optuna_study, 0, process_identity())
    storage.set_trial_user_attr(other, PROCESS_ATTR, process_identity(_dead_pid()))  # that worker died
    assert settle_parent(prepared, "KILLED", mine=[process_identity()]) == "KILLED"
    assert _parent(mlflow_store["uri"]).info.status == "KILLED"
