"""``compare``: the unimodal models, trained fusions and procedures on one split, as MLflow parent/child runs."""

from __future__ import annotations

import io
import json
import signal

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lightning_fusion.compare import __main__ as compare_cli
from lightning_fusion.compare import run as comparison
from lightning_fusion.compare.procedures import (
    PROCEDURES,
    DecisionInputs,
    held_out_predictions,
    stacking,
    tuned_late_fusion,
)
from lightning_fusion.config import load_config
from lightning_fusion.errors import ConfigError
from tests.conftest import all_runs, small_overrides
from tests.interrupts import interrupt_while_training, lightning_style_interrupt, raise_or_call

FUSIONS = "concat,late_weighted,stacking,ensemble_mean"


def _runs(uri):
    return MlflowClient(uri), all_runs(uri)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, small_cohort_master):
    """One comparison on the 60-patient cohort, through the command line, shared by the assertions below."""
    tmp = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = small_overrides(
        small_cohort_master,
        **{
            "trainer.max_epochs": 2,
            # every class in validation (stacking needs it)
            "data.split.train": 0.6,
            "data.split.val": 0.2,
            "data.split.test": 0.2,
            "tracking.artifact_root": str(tmp / "mlruns"),
        },
    )
    argv = ["--fusions", FUSIONS, "--tracking-uri", uri]
    for key, value in overrides.items():
        argv += [
            f"--{key}",
            str(value) if not isinstance(value, dict) else "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}",
        ]
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        code = compare_cli.main(argv)
    client, runs = _runs(uri)
    return {"code": code, "out": out.getvalue(), "client": client, "runs": runs}


def test_compare_cli_prints_the_table_and_the_verdict(compared):
    assert compared["code"] == 0
    out = compared["out"]
    for name in (
        "cnn (image)",
        "ann (tabular)",
        "fusion concat",
        "fusion late_weighted",
        "fusion stacking",
        "fusion ensemble_mean",
    ):
        assert f"| {name} |" in out
    assert "best fusion:" in out and "best unimodal:" in out and "McNemar p=" in out
    assert "MLflow parent run" in out


def test_compare_parent_and_child_runs(compared):
    client, runs = compared["client"], compared["runs"]
    parents = [r for r in runs if r.data.tags.get("lf.compare") == "true"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 1 + len(children) == 7
    assert all(r.info.status == "FINISHED" for r in runs)
    kinds = sorted((r.data.tags["lf.model_kind"], r.data.tags["lf.fusion"]) for r in children)
    assert kinds == sorted(
        [
            ("cnn", "none"),
            ("ann", "none"),
            ("fusion", "concat"),
            ("fusion", "late_weighted"),
            ("fusion", "stacking"),
            ("fusion", "ensemble_mean"),
        ]
    )
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {
        "comparison.md",
        "comparison.csv",
        "comparison.png",
        "paired_tests.md",
        "paired_tests.csv",
        "report.html",
        "config.yaml",
        "data_summary.json",
        "decision_curves.png",
        "decision_curves.json",
    } <= artifacts
    report = open(client.download_artifacts(parent.info.run_id, "report.html")).read()
    assert "<h2>Decision curves</h2>" in report and "alt='decision curves'" in report
    paired = pd.read_csv(client.download_artifacts(parent.info.run_id, "paired_tests.csv"))
    fusions = ["fusion concat", "fusion late_weighted", "fusion stacking", "fusion ensemble_mean"]
    assert sorted(zip(paired["model"], paired["versus"])) == sorted(
        (f, u) for f in fusions for u in ("cnn (image)", "ann (tabular)")
    )
    assert (paired["mcnemar_p_holm"] >= paired["mcnemar_p"]).all() and paired["mcnemar_p_holm"].le(1).all()
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "comparison.csv"))
    assert sorted(table["run_id"]) == sorted(r.info.run_id for r in children)
    decision = json.loads(open(client.download_artifacts(parent.info.run_id, "decision_curves.json")).read())
    assert sorted(decision) == sorted(table["model"])  # every model, on the same test patients
    assert parent.data.metrics["compare/cnn_image/balanced_accuracy"] == pytest.approx(
        table.set_index("model").loc["cnn (image)", "balanced_accuracy"], abs=1e-4
    )


def test_procedures_reuse_the_unimodal_models(compared):
    client, runs = compared["client"], compared["runs"]
    unimodal = {r.info.run_id for r in runs if r.data.tags.get("lf.model_kind") in ("cnn", "ann")}
    procedures = [r for r in runs if r.data.tags.get("lf.procedure") == "true"]
    assert len(procedures) == 3
    for run in procedures:
        assert set(run.data.tags["lf.base_runs"].split(",")) == unimodal
        paths = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "checkpoints" not in paths and "procedure.json" in paths  # nothing trained again
        assert "test/balanced_accuracy" in run.data.metrics
    late = next(r for r in procedures if r.data.tags["lf.fusion"] == "late_weighted")
    weights = [v for k, v in late.data.metrics.items() if k.startswith("fusion/weight/")]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1.0)


def test_every_model_is_tested_on_the_same_patients(compared):
    client, runs = compared["client"], compared["runs"]
    patients = {
        r.info.run_id: sorted(
            pd.read_csv(client.download_artifacts(r.info.run_id, "test_predictions.csv"))["patient_id"]
        )
        for r in runs
        if "lf.compare" not in r.data.tags
    }
    assert len(patients) == 6 and len({tuple(p) for p in patients.values()}) == 1


def test_a_failing_model_marks_the_parent_failed(small_cohort, mlflow_store, monkeypatch):
    config = load_config(None, small_overrides(small_cohort, **{"trainer.max_epochs": 1}))
    calls = []
    real_fit = comparison.fit

    def fit_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in the second model")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(comparison, "fit", fit_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        comparison.run_comparison(config, "concat", progress=lambda _: None)
    _, runs = _runs(mlflow_store["uri"])
    parent = next(r for r in runs if r.data.tags.get("lf.compare") == "true")
    assert parent.info.status == "FAILED"
    assert [r.info.status for r in runs if r is not parent] == ["FINISHED"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, lightning_style_interrupt], ids=["ctrl-c", "ctrl-c-in-trainer"])
def test_an_interrupt_marks_the_parent_killed(small_cohort, mlflow_store, monkeypatch, stop):
    config = load_config(None, small_overrides(small_cohort, **{"trainer.max_epochs": 1}))

    def stop_training(*args, **kwargs):
        raise_or_call(stop)

    monkeypatch.setattr(comparison, "fit", stop_training)
    with pytest.raises(BaseException) as raised:
        comparison.run_comparison(config, "concat", progress=lambda _: None)
    assert isinstance(raised.value, (KeyboardInterrupt, SystemExit))
    _, runs = _runs(mlflow_store["uri"])
    assert [r.info.status for r in runs if r.data.tags.get("lf.compare") == "true"] == ["KILLED"]


def test_sigterm_ends_the_compare_command_and_its_runs(small_cohort, mlflow_store):
    argv = ["lightning_fusion.compare", "--fusions", "concat"] + [
        f"--{k}={json.dumps(v) if isinstance(v, dict) else v}"
        for k, v in small_overrides(small_cohort, **{"trainer.max_epochs": 500}).items()
    ]
    code = interrupt_while_training(
        argv, mlflow_store["uri"], signal.SIGTERM, lambda runs: any("lf.model_kind" in r.data.tags for r in runs)
    )
    assert code == 143
    runs = all_runs(mlflow_store["uri"])
    assert [r.info.status for r in runs if r.data.tags.get("lf.compare") == "true"] == ["KILLED"]
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def test_bad_requests_are_config_errors_before_any_run(small_cohort, mlflow_store, capsys):
    base = [f"--data.root={small_cohort}", "--data.reader", "{name: mpi}"]
    assert compare_cli.main(base + ["--fusions", "stackng"]) == 2
    assert "did you mean 'stacking'" in capsys.readouterr().err
    assert compare_cli.main(base + ["--model.modalities", "[image]"]) == 2
    assert "two or more modalities" in capsys.readouterr().err
    assert compare_cli.main(base + ["--trainer.devices", "2"]) == 2
    assert "one process" in capsys.readouterr().err
    assert compare_cli.main(base + ["--model.fusion", "gated", "--data.keep_missing_modalities", "true"]) == 2
    assert "same patients" in capsys.readouterr().err
    assert compare_cli.main(base + ["--fusions", "stacking"]) == 2  # 6 validation patients, no infarction
    assert "validation split has no patient of class ['infarction']" in capsys.readouterr().err
    assert _runs(mlflow_store["uri"])[1] == []


def test_parse_fusions():
    assert comparison.parse_fusions("concat, stacking,concat") == ["concat", "stacking"]
    assert comparison.parse_fusions(None) == list(comparison.DEFAULT_FUSIONS)
    with pytest.raises(ConfigError, match="at least one"):
        comparison.parse_fusions(" , ")
    assert comparison.is_procedure("late_weighted") and not comparison.is_procedure("gated")


# --------------------------------------------------------------------------------------------------
# The procedures themselves (pure numpy)
# --------------------------------------------------------------------------------------------------
def _inputs(seed=0, n_val=40, n_test=30, k=3, overlap=False) -> DecisionInputs:
    rng = np.random.default_rng(seed)

    def probs(n, labels, skill):
        logits = rng.normal(size=(n, k)) + skill * np.eye(k)[labels]
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)

    val_labels = np.arange(n_val) % k
    test_labels = np.arange(n_test) % k
    val_groups = [f"v{i}" for i in range(n_val)]
    train_groups = [f"t{i}" for i in range(50)] + (val_groups[:3] if overlap else [])
    return DecisionInputs(
        val={"cnn": probs(n_val, val_labels, 2.0), "ann": probs(n_val, val_labels, 0.5)},
        val_labels=val_labels,
        val_groups=val_groups,
        train_groups=train_groups,
        test={"cnn": probs(n_test, test_labels, 2.0), "ann": probs(n_test, test_labels, 0.5)},
        num_classes=k,
    )


@pytest.mark.parametrize("name", list(PROCEDURES))
def test_every_procedure_returns_test_probabilities(name):
    inputs = _inputs()
    probs, details = PROCEDURES.get(name)(inputs)
    assert probs.shape == (30, 3) and np.allclose(probs.sum(1), 1) and np.isfinite(probs).all()
    assert details["fitted_on"] and PROCEDURES.metadata(name)["level"] == "decision"


def test_late_weighted_weights_depend_on_validation_only():
    inputs = _inputs()
    weights = tuned_late_fusion(inputs)[1]["weights"]
    assert weights["cnn"] > weights["ann"]  # the more skilful model gets more weight
    shuffled = _inputs(seed=9)  # other test predictions, same validation
    changed = DecisionInputs(inputs.val, inputs.val_labels, inputs.val_groups, inputs.train_groups, shuffled.test, 3)
    assert tuned_late_fusion(changed)[1]["weights"] == weights


def test_stacking_refuses_predictions_for_patients_the_models_trained_on():
    with pytest.raises(AssertionError, match="not out-of-fold"):
        stacking(_inputs(overlap=True))
    with pytest.raises(AssertionError, match="not out-of-fold"):
        held_out_predictions(np.full((2, 2), 0.5), ["a", "b"], ["b", "c"])


def test_stacking_needs_every_class_in_validation():
    inputs = _inputs()
    labels = np.where(inputs.val_labels == 2, 0, inputs.val_labels)
    with pytest.raises(ValueError, match="class index \\[2\\]"):
        stacking(DecisionInputs(inputs.val, labels, inputs.val_groups, inputs.train_groups, inputs.test, 3))


def test_compare_cv_pools_out_of_fold_predictions(small_cohort, mlflow_store):
    config = load_config(None, small_overrides(small_cohort, **{"trainer.max_epochs": 1}))
    result = comparison.run_comparison(config, "concat,late_weighted,ensemble_mean", progress=lambda _: None, cv=2)
    assert result.cv == 2 and result.test_patients == 60  # every patient tested once
    assert all(len(m.test.patient_ids) == 60 and len(set(m.test.patient_ids)) == 60 for m in result.models)
    assert {"balanced_accuracy_fold_mean", "balanced_accuracy_fold_sd", "auroc_fold_mean"} <= set(result.table.columns)
    assert len(result.paired) == 3 * 2  # 3 fusions x 2 unimodal models, on all 60 patients
    _, runs = _runs(mlflow_store["uri"])
    parent = next(r for r in runs if r.data.tags.get("lf.compare") == "true")
    assert parent.data.tags["lf.cv"] == "2"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 * 5  # per fold: cnn, ann, concat, late_weighted, ensemble_mean
    assert sorted({r.data.tags["lf.fold"] for r in children}) == ["0", "1"]
    for fold in "01":  # procedures reuse their own fold's unimodal models
        fold_runs = [r for r in children if r.data.tags["lf.fold"] == fold]
        unimodal = {r.info.run_id for r in fold_runs if r.data.tags["lf.model_kind"] != "fusion"}
        for run in (r for r in fold_runs if r.data.tags.get("lf.procedure")):
            assert set(run.data.tags["lf.base_runs"].split(",")) == unimodal
