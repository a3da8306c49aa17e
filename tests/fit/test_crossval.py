"""Cross-validation: grouped, stratified folds with inner validation; ``fit --cv`` parent/child runs and OOF."""

from __future__ import annotations

import json
import signal

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lightning_fusion.config import load_config
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.data.splits import cross_validation_folds
from lightning_fusion.errors import DataError, LeakageError
from lightning_fusion.fit import __main__ as fit_cli
from tests.conftest import all_runs, small_overrides
from tests.interrupts import interrupt_while_training, lightning_style_interrupt, raise_or_call


def _records(n_patients=40, seed=0):
    """Several records per patient (as in PTB-XL), one label per patient, imbalanced classes."""
    rng = np.random.default_rng(seed)
    labels, groups = {}, {}
    for p in range(n_patients):
        label = "rare" if p % 8 == 0 else ("a" if p % 3 else "b")
        for r in range(rng.integers(1, 4)):
            labels[f"rec{p}-{r}"] = label
            groups[f"rec{p}-{r}"] = f"patient{p}"
    return pd.Series(labels), pd.Series(groups)


@pytest.mark.parametrize("k", [3, 5])
def test_folds_are_grouped_stratified_and_test_every_sample_once(k):
    labels, groups = _records()
    folds = cross_validation_folds(labels, k, seed=1, groups=groups, val_fraction=0.2)
    assert len(folds) == k
    tested = [s for f in folds for s in f["test"]]
    assert sorted(tested) == sorted(labels.index)  # every record tested exactly once
    for fold in folds:
        patients = {name: {groups[s] for s in ids} for name, ids in fold.items()}
        assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"])
        assert not patients["val"] & patients["test"]
        assert fold["val"] and set(labels[fold["test"]]) == {"a", "b", "rare"}  # every class in every test fold
    test_patients = [{groups[s] for s in f["test"]} for f in folds]
    assert all(not (a & b) for i, a in enumerate(test_patients) for b in test_patients[i + 1 :])
    assert folds == cross_validation_folds(labels, k, seed=1, groups=groups, val_fraction=0.2)  # seeded


def test_folds_refuse_too_few_patients_of_a_class():
    labels, groups = _records(n_patients=24)  # 3 'rare' patients
    with pytest.raises(DataError, match=r"fewer patients than folds \{'rare': 3\}"):
        cross_validation_folds(labels, 5, seed=0, groups=groups)


def test_a_leaky_given_split_is_an_error(small_cohort):
    config = load_config(None, small_overrides(small_cohort))
    probe = MultimodalDataModule(config.data, config.model.modalities)
    _, _, labels = probe.read_labels()
    ids = sorted(labels.index)
    leaky = {"train": ids[:40], "val": ids[40:50], "test": ids[45:]}
    with pytest.raises(LeakageError):
        MultimodalDataModule(config.data, config.model.modalities, splits=leaky).setup()


def test_fit_cv_records_folds_oof_predictions_and_aggregates(small_cohort, mlflow_store, capsys):
    argv = ["--cv", "3"] + [
        f"--{k}={json.dumps(v) if isinstance(v, dict) else v}"
        for k, v in small_overrides(small_cohort, **{"trainer.max_epochs": 1}).items()
    ]
    assert fit_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "3-fold cross-validation" in out and "balanced_accuracy" in out and "pooled OOF" in out
    client = MlflowClient(mlflow_store["uri"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if r.data.tags.get("lf.cv") == "3")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["lf.fold"] for r in children) == ["0", "1", "2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    oof = pd.read_csv(client.download_artifacts(parent.info.run_id, "oof_predictions.csv"))
    assert oof["patient_id"].is_unique and len(oof) == 60
    assert {"patient_id", "repeat", "fold", "true", "prob_normal", "prob_ischemia", "prob_infarction"} <= set(
        oof.columns
    )
    folds = pd.read_csv(client.download_artifacts(parent.info.run_id, "cv_folds.csv"))
    mean = parent.data.metrics["cv/balanced_accuracy_mean"]
    assert mean == pytest.approx(folds["balanced_accuracy"].mean())
    assert parent.data.metrics["oof/balanced_accuracy_ci_low"] <= parent.data.metrics["oof/balanced_accuracy"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "cv_folds.md", "cv_splits.json", "oof_roc.png", "oof_reliability.png"} <= artifacts
    # each fold's scaler was fitted on that fold's training patients: the fitted means differ between folds
    means = []
    for child in children:
        summary = json.loads(open(client.download_artifacts(child.info.run_id, "data_summary.json")).read())
        means.append(json.dumps(summary["preprocessing"]["tabular"], sort_keys=True))
    assert len(set(means)) == 3
    # what the MLflow UI opens on: the folds by name, the parent's description, a saved view of the folds
    parent_id, experiment_id = parent.info.run_id, parent.info.experiment_id
    assert sorted(r.info.run_name for r in children) == ["fold-0", "fold-1", "fold-2"]
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("**demo: test balanced accuracy ") and "over 3 fold models, pooled out-of-fold" in note
    assert "| metric | mean ± sd over folds | pooled out-of-fold [interval] |" in note
    assert "| repeat | fold | n_train |" in note and "run_id" not in note
    view = json.loads(client.get_experiment(experiment_id).tags[f"mlflow.sharedViewState.lf-{parent_id}"])
    assert json.loads(view["state"])["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent_id}'"
    assert f"  folds: http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning" in out
    assert f"viewStateShareKey=lf-{parent_id}\n  summary: " in out


@pytest.mark.parametrize(
    ("stop", "status"),
    [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED"), (lightning_style_interrupt, "KILLED")],
    ids=["error", "ctrl-c", "ctrl-c-in-trainer"],
)
def test_the_cv_parent_run_ends_failed_on_an_error_and_killed_on_an_interrupt(
    small_cohort, mlflow_store, monkeypatch, stop, status
):
    from lightning_fusion.fit import crossval

    def stop_training(*args, **kwargs):
        raise_or_call(stop)

    monkeypatch.setattr(crossval, "fit", stop_training)
    config = load_config(None, small_overrides(small_cohort, **{"trainer.max_epochs": 1}))
    with pytest.raises(BaseException) as raised:
        crossval.cross_validate(config, 3, progress=lambda _: None)
    assert isinstance(raised.value, (RuntimeError, KeyboardInterrupt, SystemExit))
    runs = all_runs(mlflow_store["uri"])
    assert [r.info.status for r in runs if r.data.tags.get("lf.cv") == "3"] == [status]


def test_sigterm_ends_fit_cv_and_its_runs(small_cohort, mlflow_store):
    argv = ["lightning_fusion.fit", "--cv", "3"] + [
        f"--{k}={json.dumps(v) if isinstance(v, dict) else v}"
        for k, v in small_overrides(small_cohort, **{"trainer.max_epochs": 500}).items()
    ]
    code = interrupt_while_training(argv, mlflow_store["uri"], signal.SIGTERM, lambda runs: len(runs) >= 2)
    assert code == 128 + signal.SIGTERM  # a stop, not a failure (it was 1)
    runs = all_runs(mlflow_store["uri"])
    assert [r.info.status for r in runs if r.data.tags.get("lf.cv") == "3"] == ["KILLED"]
    assert [r.info.status for r in runs if "lf.fold" in r.data.tags] == ["KILLED"]  # the fold it was training
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def test_fit_cv_argument_errors(capsys):
    with pytest.raises(SystemExit):
        fit_cli.main(["--cv", "1"])
    assert "at least 2 folds" in capsys.readouterr().err
