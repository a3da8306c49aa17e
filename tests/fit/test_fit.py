"""End to end: fit → test → MLflow, the run's contents, failure handling and the CLI."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from lightning_fusion.config import load_config
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.demo import generate_mpi_cohort
from lightning_fusion.errors import DataError
from lightning_fusion.fit import __main__ as fit_cli
from lightning_fusion.fit.run import fit
from lightning_fusion.lit import FusionLitModule
from tests.conftest import small_overrides

CLASSES = ["normal", "ischemia", "infarction"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real fusion run on a 160-patient cohort, shared by the assertions below."""
    tmp = tmp_path_factory.mktemp("fit")
    root = generate_mpi_cohort(tmp / "mpi", 160, seed=5, image_size=32)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = small_overrides(
        root,
        **{
            "trainer.max_epochs": 8,
            "tracking.tracking_uri": uri,
            "tracking.artifact_root": str(tmp / "mlruns"),
            "tracking.experiment": "e2e",
        },
    )
    config = load_config(None, overrides)
    result = fit(config)
    client = MlflowClient(uri)
    return {"result": result, "client": client, "run": client.get_run(result.run_id), "config": config, "tmp": tmp}


def _all_runs(uri):
    """Every run in the store at ``uri`` (explicit URI: Lightning's logger sets MLflow's global one)."""
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _artifacts(client, run_id, path=None):
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


@pytest.mark.slow
def test_fit_beats_chance(trained):
    metrics = trained["result"].test_metrics
    # 3 classes: chance balanced accuracy is 1/3 and chance AUROC 0.5.
    assert metrics["test/auroc"] > 0.7
    assert metrics["test/balanced_accuracy"] > 0.45


@pytest.mark.slow
def test_run_is_finished_with_metrics_tags_params(trained):
    run = trained["run"]
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for stage in ("val", "test"):
        for name in ("loss", "accuracy", "balanced_accuracy", "f1_macro", "auroc"):
            assert f"{stage}/{name}" in metrics, f"{stage}/{name}"
    for name in ("precision", "recall", "f1"):
        for cls in CLASSES:
            assert f"test/{name}/{cls}" in metrics
    history = trained["client"].get_metric_history(run.info.run_id, "val/loss")
    assert len(history) >= 2  # per epoch
    assert run.data.tags["lf.model_kind"] == "fusion"
    assert run.data.tags["lf.fusion"] == "concat"
    assert run.data.tags["lf.backbone"] == "test_resnet"
    assert run.data.tags["lf.dataset"] == "mpi"
    assert run.data.params["optim.lr"] == "0.001"
    assert run.data.params["model.encoders.image.backbone"] == "test_resnet"


@pytest.mark.slow
def test_run_artifacts(trained):
    client, run_id = trained["client"], trained["result"].run_id
    artifacts = _artifacts(client, run_id)
    for name in (
        "config.yaml",
        "confusion_matrix.json",
        "confusion_matrix.png",
        "classification_report.txt",
        "classification_report.json",
        "test_predictions.csv",
        "data_summary.json",
        "splits.json",
        "report.html",
        "roc.png",
        "pr.png",
        "decision_curve.png",
        "reliability.png",
        "curves.json",
        "calibration.json",
        "intervals.json",
    ):
        assert name in artifacts, name
    assert any(a.startswith("checkpoints/") and a.endswith(".ckpt") for a in artifacts)
    local = Path(client.download_artifacts(run_id, "", str(trained["tmp"] / "dl")))
    matrix = json.loads((local / "confusion_matrix.json").read_text())
    predictions = pd.read_csv(local / "test_predictions.csv")
    summary = json.loads((local / "data_summary.json").read_text())
    assert matrix["classes"] == CLASSES
    # Decision curves (one-vs-rest for 3 classes) beside ROC/PR, in the points file and the report
    decision = json.loads((local / "curves.json").read_text())["decision"]
    test_classes = [c for c, n in summary["counts"]["test"].items() if 0 < n < sum(summary["counts"]["test"].values())]
    assert sorted(decision) == sorted(test_classes)
    assert all(
        np.isclose(curve["treat_all"][0], curve["prevalence"] - (1 - curve["prevalence"]) / 99)
        for curve in decision.values()
    )
    assert "alt='decision_curve.png'" in (local / "report.html").read_text()
    assert np.sum(matrix["matrix"]) == len(predictions) == sum(summary["counts"]["test"].values())
    assert set(predictions.columns) == {"patient_id", "true", "predicted", *(f"prob_{c}" for c in CLASSES)}
    splits = json.loads((local / "splits.json").read_text())
    assert sorted(predictions["patient_id"]) == sorted(splits["test"])
    # The logged test accuracy is the accuracy of the saved predictions.
    accuracy = (predictions["true"] == predictions["predicted"]).mean()
    assert trained["run"].data.metrics["test/accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert load_config(None, yaml.safe_load((local / "config.yaml").read_text())) == trained["config"]
    # Explanations of the first test patients (32 px: a 1x1 feature map, so the overlays exist but say little).
    explained = json.loads((local / "explanations" / "explanations.json").read_text())
    assert len(explained["patients"]) == 4 and set(explained["patients"]) <= set(splits["test"])
    for pid in explained["patients"]:
        assert sorted(p.name for p in (local / "explanations" / pid).glob("*.png")) == [
            "image_view0.png",
            "image_view1.png",
            "image_view2.png",
        ]
    attributions = pd.read_csv(local / "explanations" / "tabular_attributions.csv")
    assert set(attributions["patient_id"]) == set(explained["patients"])
    drops = pd.read_csv(local / "explanations" / "modality_contributions.csv")
    assert list(drops["patient_id"]) == explained["patients"]
    assert {"delta_without_image", "delta_without_tabular"} <= set(drops.columns)
    # Intervals around the logged value, computed from the saved predictions; the report shows them.
    metrics = trained["run"].data.metrics
    for name in ("accuracy", "balanced_accuracy", "f1_macro", "auroc"):
        assert (
            metrics[f"test/{name}_ci_low"] <= metrics[f"test/{name}"] + 1e-6 <= metrics[f"test/{name}_ci_high"] + 2e-6
        )
    assert 0 <= metrics["test/ece"] <= 1 and 0 <= metrics["test/brier"] <= 2
    report = (local / "report.html").read_text()
    assert "data:image/png;base64," in report and "bootstrap" in report and "Excluded" not in report


@pytest.mark.slow
def test_checkpoint_reloads_without_the_yaml(trained):
    client, run_id = trained["client"], trained["result"].run_id
    ckpt_path = next(a for a in _artifacts(client, run_id) if a.endswith(".ckpt"))
    local = client.download_artifacts(run_id, ckpt_path, str(trained["tmp"] / "ckpt"))
    module = FusionLitModule.load_from_checkpoint(local, map_location="cpu", weights_only=True)
    module.eval()
    config = trained["config"]
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    with torch.no_grad():
        probs = module(batch).softmax(dim=1).numpy()
    predictions = pd.read_csv(
        Path(client.download_artifacts(run_id, "test_predictions.csv", str(trained["tmp"] / "p")))
    )
    expected = predictions.set_index("patient_id").loc[batch["patient_id"], [f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_bad_input_leaves_no_run(small_cohort, mlflow_store):
    (sorted((small_cohort / "Normal").iterdir())[0] / "QPS AC.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="unreadable image"):
        fit(load_config(None, small_overrides(small_cohort)))
    assert _all_runs(mlflow_store["uri"]) == []


def test_crash_during_training_marks_the_run_failed(small_cohort, mlflow_store, monkeypatch):
    def explode(self, batch, batch_idx):
        raise RuntimeError("boom in training")

    monkeypatch.setattr(FusionLitModule, "training_step", explode)
    with pytest.raises(RuntimeError, match="boom in training"):
        fit(load_config(None, small_overrides(small_cohort)))
    runs = _all_runs(mlflow_store["uri"])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_crash_after_testing_marks_the_run_failed(small_cohort, mlflow_store, monkeypatch):
    """Lightning closes its loggers after fit and test; an error after that must still mean FAILED."""
    import lightning_fusion.fit.run as training

    def explode(*args, **kwargs):
        raise OSError("disk full while writing artifacts")

    monkeypatch.setattr(training, "log_tested_model", explode)
    with pytest.raises(OSError, match="disk full"):
        fit(load_config(None, small_overrides(small_cohort, **{"trainer.max_epochs": 1})))
    runs = _all_runs(mlflow_store["uri"])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_late_fusion_weights_of_the_tested_checkpoint_are_logged(small_cohort, mlflow_store, tmp_path):
    overrides = {"model.fusion": {"name": "late_weighted"}, "trainer.max_epochs": 2}
    result = fit(load_config(None, small_overrides(small_cohort, **overrides)))
    client = MlflowClient(mlflow_store["uri"])
    metrics = client.get_run(result.run_id).data.metrics
    weights = {m: metrics[f"fusion/weight/{m}"] for m in ("image", "tabular")}
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)
    logged_file = client.download_artifacts(result.run_id, "fusion_weights.json", str(tmp_path))
    logged = json.loads(Path(logged_file).read_text())
    assert logged == pytest.approx(weights)
    checkpoint = client.download_artifacts(result.run_id, f"checkpoints/{result.best_checkpoint}", str(tmp_path))
    module = FusionLitModule.load_from_checkpoint(checkpoint, weights_only=True)
    assert module.model.fusion.overall_weights() == pytest.approx(weights)  # the best checkpoint's weights


@pytest.mark.parametrize(("modalities", "kind"), [(["image"], "cnn"), (["tabular"], "ann")])
def test_unimodal_models_are_one_override_away(small_cohort, mlflow_store, modalities, kind):
    result = fit(
        load_config(None, small_overrides(small_cohort, **{"model.modalities": modalities, "trainer.max_epochs": 1}))
    )
    assert result.tags["lf.model_kind"] == kind and result.tags["lf.fusion"] == "none"
    assert np.isfinite(result.test_metrics["test/loss"])


def test_one_seed_trains_the_same_model_twice(small_cohort, mlflow_store):
    """Every random draw follows ``seed``, the per-sample image augmentation in the loader included."""
    settings = {"model.modalities": ["image"], "trainer.max_epochs": 1, "data.pipeline": "per_sample"}
    settings |= {"data.augment.p": 1.0, "evaluation.explain_patients": 0, "tracking.log_model": False}
    config = load_config(None, small_overrides(small_cohort, **settings))
    first, second = (fit(config, keep_predictions=True).predictions["test"] for _ in range(2))
    assert np.array_equal(first.patient_ids, second.patient_ids) and np.array_equal(first.probs, second.probs)


def test_cli_print_config_and_errors(capsys, tmp_path):
    assert fit_cli.main(["--print-config", "--trainer.max_epochs", "3"]) == 0
    assert "max_epochs: 3" in capsys.readouterr().out
    assert fit_cli.main(["--optim.lrr", "0.1"]) == 2
    assert "unknown config key 'lrr'; did you mean 'lr'" in capsys.readouterr().err
    assert fit_cli.main(["--data.reader.name", "mpi", "--data.root", str(tmp_path / "missing")]) == 2
    assert "data error: mpi data folder not found" in capsys.readouterr().err


def test_cli_offline_pretrained_weights_is_a_clear_error_and_no_run(small_cohort, mlflow_store, capsys, monkeypatch):
    monkeypatch.setattr("lightning_fusion.encoders.image._in_hub_cache", lambda backbone: False)
    args = ["--data.reader.name", "mpi", "--data.root", str(small_cohort), "--data.image_size", "32"]
    args += ["--model.encoders.image.backbone", "resnet18", "--model.encoders.image.pretrained", "true"]
    assert fit_cli.main(args) == 2  # conftest sets HF_HUB_OFFLINE=1
    assert "weights error: pretrained weights for 'resnet18' are not in the local Hugging Face cache" in (
        capsys.readouterr().err
    )
    client = MlflowClient(mlflow_store["uri"])
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_cli_trains_and_prints_a_summary(small_cohort, mlflow_store, capsys):
    argv = [
        f"--{k}={v}" if not isinstance(v, dict) else f"--{k}={json.dumps(v)}"
        for k, v in small_overrides(small_cohort, **{"trainer.max_epochs": 1}).items()
    ]
    assert fit_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "fusion model (image,tabular, fusion concat) on mpi" in out
    assert "test  accuracy" in out and "MLflow run" in out
    assert re.search(r"balanced_accuracy \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", out), out


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(small_cohort, mlflow_store):
    """Real DDP (gloo, 2 processes) in its own process: metrics synchronised, predictions gathered once."""
    import subprocess
    import sys

    overrides = small_overrides(
        small_cohort, **{"trainer.max_epochs": 1, "trainer.devices": 2, "trainer.strategy": "ddp"}
    )
    argv = [f"--{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in overrides.items()]
    done = subprocess.run(
        [sys.executable, "-m", "lightning_fusion.fit", *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _all_runs(mlflow_store["uri"])
    assert [r.info.status for r in runs] == ["FINISHED"]  # one run, not one per process
    client = MlflowClient(mlflow_store["uri"])
    local = Path(client.download_artifacts(runs[0].info.run_id, "test_predictions.csv", str(Path.cwd() / "dl")))
    predictions = pd.read_csv(local)
    splits = json.loads(
        Path(client.download_artifacts(runs[0].info.run_id, "splits.json", str(Path.cwd() / "dl"))).read_text()
    )
    assert sorted(predictions["patient_id"]) == sorted(splits["test"])  # every test patient once, no DDP padding


def test_spawned_ddp_is_rejected_up_front():
    from lightning_fusion.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy 'ddp_spawn' is not supported by fit; use 'ddp'"):
        load_config(None, {"trainer.strategy": "ddp_spawn"})
