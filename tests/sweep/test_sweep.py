"""Optuna sweeps: study-file checks, conditional sampling, pruning, failures, resume, workers, MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from lightning_fusion.errors import ConfigError
from lightning_fusion.sweep import __main__ as sweep_cli
from lightning_fusion.sweep.runner import run_sweep
from lightning_fusion.sweep.study import load_study, sample
from tests.conftest import PROJECT_ROOT, all_runs, small_overrides

ABLATIONS = sorted((PROJECT_ROOT / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_shipped_study_files_load(path):
    study = load_study(path)
    assert study.spec.trials >= 1 and study.spec.metric.startswith("val/")


def test_the_four_required_studies_ship():
    assert {p.stem for p in ABLATIONS} >= {"unfreeze_point", "fusion_strategy", "hparams", "modality_subsets"}
    assert load_study(PROJECT_ROOT / "ablations" / "unfreeze_point.yaml").spec.trials == 4 * 3  # grid x 3 seeds
    assert load_study(PROJECT_ROOT / "ablations" / "modality_subsets.yaml").spec.trials == 3 * 3


def _write_study(tmp_path: Path, cohort: Path, **study) -> Path:
    """A study over a tiny clinical-only (ANN) experiment on the small cohort: seconds per trial."""
    overrides = small_overrides(cohort, **{"model.modalities": ["tabular"], "trainer.max_epochs": 4})
    experiment = {"name": "tiny", "data": {}, "model": {}, "trainer": {}, "tracking": {}}
    for dotted, value in overrides.items():
        node = experiment
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    experiment["trainer"]["early_stopping_patience"] = 10
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(experiment))
    content = {
        "base": "tiny.yaml",
        "metric": "val/loss",
        "direction": "minimize",
        "trials": 4,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    } | study
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))  # the space's order matters
    return path


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"optim.lrr": {"type": "float", "low": 0.1, "high": 0.2}}, "did you mean 'lr'"),
        ({"model.fusion.name": {"type": "categorical", "choices": []}}, "non-empty list of choices"),
        ({"optim.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "bad range"),
        ({"optim.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "needs low > 0"),
        ({"optim.lr": {"type": "floatt", "low": 0.1, "high": 0.2}}, "did you mean 'float'"),
        ({"model.fusion.name": {"type": "categorical", "choices": ["concat", "gatted"]}}, "did you mean 'gated'"),
        (
            {
                "optim.lr": {"type": "float", "low": 0.01, "high": 0.1, "when": {"optim.optimizer": "adam"}},
                "optim.optimizer": {"type": "categorical", "choices": ["adam", "adamw"]},
            },
            "must come before",
        ),
    ],
)
def test_bad_study_files_are_clear_errors(tmp_path, small_cohort, space, message):
    path = _write_study(tmp_path, small_cohort, space=space)
    with pytest.raises(ConfigError, match=message):
        load_study(path)


def test_test_metrics_cannot_be_tuned_on(tmp_path, small_cohort):
    with pytest.raises(ConfigError, match="the test set is not for tuning"):
        load_study(_write_study(tmp_path, small_cohort, metric="test/auroc"))


def test_conditional_parameters_are_sampled_only_when_their_condition_holds(tmp_path, small_cohort):
    space = {
        "model.fusion.name": {"type": "categorical", "choices": ["concat", "attention"]},
        "model.fusion.heads": {"type": "int", "low": 1, "high": 2, "when": {"model.fusion.name": "attention"}},
        "model.modalities": {"type": "categorical", "choices": [["image", "tabular"]]},
    }
    study = load_study(
        _write_study(tmp_path, small_cohort, space=space, overrides={"model.modalities": ["image", "tabular"]})
    )
    concat = sample(
        optuna.trial.FixedTrial({"model.fusion.name": "concat", "model.modalities": "image+tabular"}), study.spec
    )
    assert concat == {"model.fusion.name": "concat", "model.modalities": ["image", "tabular"]}
    attention = sample(
        optuna.trial.FixedTrial(
            {"model.fusion.name": "attention", "model.fusion.heads": 2, "model.modalities": "image+tabular"}
        ),
        study.spec,
    )
    assert attention["model.fusion.heads"] == 2
    fusion = study.compose(attention).model.fusion
    assert fusion.name == "attention" and fusion.options.heads == 2


def _runs(uri):
    return MlflowClient(uri), all_runs(uri)


def test_sweep_runs_prunes_and_resumes(tmp_path, small_cohort, mlflow_store):
    space = {
        "optim.lr": {"type": "categorical", "choices": [3e-2, 1e-7]},  # 1e-7: the validation loss never moves
        "seed": {"type": "categorical", "choices": [0, 1, 2]},
    }
    path = _write_study(
        tmp_path,
        small_cohort,
        space=space,
        trials=6,
        sampler={"name": "grid", "seed": 0},
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    )
    study = load_study(path)
    storage = str(tmp_path / "optuna.journal")
    result = run_sweep(study, storage, tracking_uri=mlflow_store["uri"])
    states = [t.state.name for t in result.study.trials]
    assert len(states) == 6 and "PRUNED" in states and set(states) <= {"COMPLETE", "PRUNED"}
    client, runs = _runs(mlflow_store["uri"])
    parent = next(r for r in runs if r.data.tags.get("lf.sweep_parent") == "true")
    assert parent.info.status == "FINISHED"  # the study reached its total
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(6))  # no trial run twice
    assert all(r.info.run_name == f"trial-{r.data.tags['optuna.trial']}" for r in children)
    for run in children:
        trial = result.study.trials[int(run.data.tags["optuna.trial"])]
        assert run.data.tags["optuna.state"] == trial.state.name
        assert float(run.data.params["trial.optim.lr"]) == trial.params["optim.lr"]
        assert run.info.status == ("KILLED" if trial.state.name == "PRUNED" else "FINISHED")
        assert "test/accuracy" not in run.data.metrics  # tuning never touches the test set
        assert trial.user_attrs["epochs"] == run.data.metrics["trial/epochs"] >= 1
    # The same command again: the study is complete, nothing new runs, the parent run is reused.
    again = run_sweep(study, storage, tracking_uri=mlflow_store["uri"])
    assert len(again.study.trials) == 6 and again.parent_run_id == parent.info.run_id


def test_a_failing_trial_does_not_stop_the_study(tmp_path, small_cohort, mlflow_store, monkeypatch):
    import lightning_fusion.fit.run as training

    real_fit, calls = training.fit, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated out-of-memory")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", fail_second)
    study = load_study(_write_study(tmp_path, small_cohort, trials=3))
    result = run_sweep(study, str(tmp_path / "s.journal"), tracking_uri=mlflow_store["uri"])
    states = [t.state.name for t in result.study.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 3  # the total counts finished trials


def test_cli_with_two_workers_shares_one_storage(tmp_path, small_cohort, mlflow_store, capsys):
    path = _write_study(tmp_path, small_cohort, trials=4)
    storage = str(tmp_path / "shared.journal")
    assert (
        sweep_cli.main([str(path), "--storage", storage, "--workers", "2", "--tracking-uri", mlflow_store["uri"]]) == 0
    )
    out = capsys.readouterr().out
    assert "best value" in out and "MLflow parent run" in out
    trials = optuna.load_study(
        study_name="study", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    ).trials
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    assert 4 <= len(finished) <= 5  # two workers may each start one last trial together
    client, runs = _runs(mlflow_store["uri"])
    numbers = [r.data.tags["optuna.trial"] for r in runs if "optuna.trial" in r.data.tags]
    assert len(numbers) == len(set(numbers)) == len(trials)  # one run per trial, none run twice
    parents = [r for r in runs if r.data.tags.get("lf.sweep_parent") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"sweep_report.md", "sweep_trials.csv", "sweep_summary.json", "study.yaml"} <= artifacts
    summary = json.loads(open(client.download_artifacts(parents[0].info.run_id, "sweep_summary.json")).read())
    assert summary["counts"]["COMPLETE"] == len(finished)


def test_postgres_storage_two_workers(tmp_path, small_cohort, mlflow_store, postgres_url, capsys):
    path = _write_study(tmp_path, small_cohort, trials=4, name="pg_two_workers")
    code = sweep_cli.main(
        [str(path), "--storage", postgres_url, "--workers", "2", "--tracking-uri", mlflow_store["uri"]]
    )
    assert code == 0
    trials = optuna.load_study(study_name="pg_two_workers", storage=postgres_url).trials
    assert 4 <= sum(t.state.name == "COMPLETE" for t in trials) <= 5
    _, runs = _runs(mlflow_store["uri"])
    numbers = [r.data.tags["optuna.trial"] for r in runs if r.data.tags.get("optuna.study") == "pg_two_workers"]
    assert len(numbers) == len(set(numbers)) == len(trials)
    assert len({tuple(t.params.items()) for t in trials}) == len(trials)  # each worker samples with its own seed
    assert [r.info.status for r in runs if r.data.tags.get("lf.sweep_parent") == "true"] == ["FINISHED"]


def test_postgres_killed_worker_trial_is_failed_and_retried(tmp_path, small_cohort, mlflow_store, postgres_url):
    import signal
    import subprocess
    import sys
    import time

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    # long enough trials that the worker is surely inside one when it is killed
    path = _write_study(tmp_path, small_cohort, trials=2, name="pg_killed", overrides={"trainer.max_epochs": 200})
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lightning_fusion.sweep",
            str(path),
            "--storage",
            postgres_url,
            "--tracking-uri",
            mlflow_store["uri"],
            "--heartbeat",
            "1",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            running = [
                t
                for t in optuna.load_study(study_name="pg_killed", storage=postgres_url).trials
                if t.state.name == "RUNNING"
            ]
        except KeyError:  # the study is not created yet
            running = []
        trial_runs = [r for r in _runs(mlflow_store["uri"])[1] if "optuna.trial" in r.data.tags]
        if running and trial_runs:  # inside a trial, with its MLflow run started
            break
        time.sleep(0.5)
    assert running, "the worker never started a trial"
    time.sleep(1)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    killed = running[0].number
    # A new worker: the killed trial has no heartbeat after the grace period, so it is failed and re-queued.
    time.sleep(3)
    study = load_study(path)
    study.spec.overrides["trainer.max_epochs"] = 3  # the retry and the rest finish quickly
    result = run_sweep(study, postgres_url, tracking_uri=mlflow_store["uri"], heartbeat=(1, 2))
    trials = result.study.trials
    assert trials[killed].state.name == "FAIL"
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == trials[killed].params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    client, runs = _runs(mlflow_store["uri"])
    killed_run = next(
        r
        for r in runs
        if r.data.tags.get("optuna.trial") == str(killed) and r.data.tags.get("optuna.study") == "pg_killed"
    )
    assert killed_run.info.status == "FAILED" and killed_run.data.tags["optuna.state"] == "FAIL"


def test_a_cv_study_trains_one_model_per_fold_and_averages(tmp_path, small_cohort, mlflow_store):
    path = _write_study(tmp_path, small_cohort, trials=2, cv=3, name="cv_study")
    result = run_sweep(load_study(path), str(tmp_path / "cv.journal"), tracking_uri=mlflow_store["uri"])
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        folds = trial.user_attrs["fold_values"]
        assert len(folds) == 3 and trial.value == pytest.approx(sum(folds) / 3)
    _, runs = _runs(mlflow_store["uri"])
    fold_runs = [r for r in runs if r.data.tags.get("optuna.study") == "cv_study"]
    assert sorted((r.data.tags["optuna.trial"], r.data.tags["lf.fold"]) for r in fold_runs) == [
        (t, f) for t in "01" for f in "012"
    ]
    names = {f"trial-{r.data.tags['optuna.trial']}-fold-{r.data.tags['lf.fold']}" for r in fold_runs}
    assert {r.info.run_name for r in fold_runs} == names
    assert all(r.data.tags["optuna.state"] == "COMPLETE" for r in fold_runs)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        load_study(_write_study(tmp_path, small_cohort, cv=1))


@pytest.mark.slow
def test_ddp_trials_share_one_sampled_config_and_prune_together(tmp_path, small_cohort, mlflow_store):
    """Each trial trains on 2 CPU processes (gloo DDP) in a process of its own; the worker samples once."""
    from lightning_fusion.sweep.runner import optimize, prepare

    space = {"optim.lr": {"type": "categorical", "choices": [3e-2, 1e-7]}}
    ddp = {"trainer.devices": 2, "trainer.strategy": "ddp", "trainer.accelerator": "cpu"}
    path = _write_study(
        tmp_path,
        small_cohort,
        space=space,
        trials=2,
        name="ddp_study",
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        overrides=ddp,
    )
    study = load_study(path)
    prepared = prepare(study, str(tmp_path / "ddp.journal"), tracking_uri=mlflow_store["uri"])
    prepared.optuna_study.enqueue_trial({"optim.lr": 3e-2})  # a good trial first, then one that cannot learn
    prepared.optuna_study.enqueue_trial({"optim.lr": 1e-7})
    trials = optimize(study, prepared).study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]  # two trials: no rank started its own
    assert all(t.user_attrs["world_size"] == 2 for t in trials)  # both ranks checked they had rank 0's config
    client, runs = _runs(mlflow_store["uri"])
    children = {int(r.data.tags["optuna.trial"]): r for r in runs if r.data.tags.get("optuna.study") == "ddp_study"}
    assert sorted(children) == [0, 1]  # one MLflow run per trial: only rank 0 logs
    for trial in trials:
        run = children[trial.number]
        assert float(run.data.params["trial.optim.lr"]) == trial.params["optim.lr"]
        assert float(run.data.params["optim.lr"]) == trial.params["optim.lr"]  # what the ranks trained with
        assert run.data.params["trainer.devices"] == "2"
        history = client.get_metric_history(run.info.run_id, "val/loss")
        # the values Optuna pruned on are the ones logged: synchronised over both ranks' halves of val
        logged = [m.value for m in sorted(history, key=lambda m: m.step)]
        assert list(trial.intermediate_values.values()) == pytest.approx(logged)
    pruned = children[1]
    assert pruned.info.status == "KILLED" and pruned.data.tags["optuna.state"] == "PRUNED"
    assert trials[1].user_attrs["epochs"] == 1 < trials[0].user_attrs["epochs"]  # both ranks stopped at once


def test_ranks_with_different_configs_refuse_to_train():
    from types import SimpleNamespace

    from lightning_fusion.sweep.trial import SameTrialOnEveryRank

    class TwoRanks:  # what rank 1 sees when rank 0 composed something else
        def broadcast(self, obj, src=0):
            return "rank-0-digest"

        def reduce_boolean_decision(self, decision, all=True):
            return False

    trainer = SimpleNamespace(strategy=TwoRanks(), global_rank=1, world_size=2)
    with pytest.raises(RuntimeError, match="rank 1: the ranks of this trial composed different configurations"):
        SameTrialOnEveryRank("rank-1-digest").on_fit_start(trainer, None)
    agreeing = SimpleNamespace(
        strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj, reduce_boolean_decision=lambda d, all=True: d),
        global_rank=0,
        world_size=2,
    )
    check = SameTrialOnEveryRank("same")
    check.on_fit_start(agreeing, None)
    assert check.world_size == 2
