"""Using a trained model: safe loading, restored preprocessing, predictions equal to the run's own."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from lightning_fusion.config import load_config
from lightning_fusion.data.cohort import normalise_patient_id
from lightning_fusion.demo import generate_mpi_cohort
from lightning_fusion.errors import DataError, ModelLoadError
from lightning_fusion.fit.run import fit
from lightning_fusion.predict import __main__ as predict_cli
from lightning_fusion.predict.loading import load_model, resolve_model
from lightning_fusion.predict.trained_model import load_trained
from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def trained(trained_demo):
    """The session's demo fusion model (image + clinical table, fitted imputation and scaling)."""
    return trained_demo


def _run_test_predictions(trained) -> pd.DataFrame:
    client = MlflowClient(trained["uri"])
    local = client.download_artifacts(trained["result"].run_id, "test_predictions.csv", str(trained["tmp"]))
    return pd.read_csv(local)


@pytest.mark.slow
def test_a_logged_run_predicts_its_test_patients_as_it_tested_them(trained):
    model = load_model(f"runs:/{trained['result'].run_id}", trained["uri"])
    assert model.modalities == ["image", "tabular"] and model.classes == ["normal", "ischemia", "infarction"]
    assert set(model.preprocessors) == {"tabular"}  # fitted on the training patients, restored from the checkpoint
    predicted = model.predict_dataset().frame.set_index("patient_id")
    tested = _run_test_predictions(trained).set_index("patient_id")
    probs = [c for c in tested.columns if c.startswith("prob_")]
    rows = predicted.loc[tested.index]
    np.testing.assert_allclose(rows[probs].to_numpy(), tested[probs].to_numpy(), atol=1e-5)
    assert (rows["predicted"] == tested["predicted"]).all() and (rows["true"] == tested["true"]).all()
    assert (rows["training_split"] == "test").all()
    assert set(predicted["training_split"]) == {"train", "val", "test"}  # the whole dataset, each patient flagged


@pytest.mark.slow
def test_predict_cli_on_a_new_dataset_folder(trained, tmp_path, capsys):
    new = generate_mpi_cohort(tmp_path / "new", 12, seed=99, image_size=32)
    checkpoint = resolve_model(f"runs:/{trained['result'].run_id}", trained["uri"], tmp_path / "dl")
    output = tmp_path / "out" / "predictions.csv"
    code = predict_cli.main(["--model", str(checkpoint), "--data.root", str(new), "--output", str(output)])
    assert code == 0
    frame = pd.read_csv(output)
    assert len(frame) == 12 and "training_split" not in frame  # new patients: nothing to flag
    assert np.allclose(frame.filter(like="prob_").sum(axis=1), 1.0)
    assert (frame["confidence"] == frame.filter(like="prob_").max(axis=1)).all()
    out = capsys.readouterr().out
    assert "12 patients predicted" in out
    assert (
        predict_cli.main(
            ["--model", str(checkpoint), "--data.root", str(new), "--output", str(output), "--explain", "2"]
        )
        == 0
    )
    folder = output.with_name("predictions_explanations")
    summary = json.loads((folder / "explanations.json").read_text())
    assert summary["patients"] == list(frame["patient_id"][:2])
    assert summary["predicted"] == list(frame["predicted"][:2])  # the classes explained are the ones predicted
    attributions = pd.read_csv(folder / "tabular_attributions.csv")
    model = load_trained(checkpoint)
    assert (
        list(attributions["feature"][attributions["patient_id"] == summary["patients"][0]])
        == model.feature_names()["tabular"]
    )
    assert all((folder / pid / "image_view0.png").is_file() for pid in summary["patients"])


@pytest.mark.slow
@pytest.mark.slow
def test_one_patient_folder_is_predicted_like_the_same_patient_in_its_dataset(trained, tmp_path, capsys):
    folder = tmp_path / "patient"
    source = next((trained["root"] / "Normal").iterdir())
    shutil.copytree(source, folder)
    table = pd.read_csv(trained["root"] / "clinical.csv")
    row = table[[normalise_patient_id(p) == normalise_patient_id(source.name) for p in table["patient_id"]]]
    row.to_csv(folder / "clinical.csv", index=False)
    (folder / "notes.txt").write_text("not a modality")
    model = f"runs:/{trained['result'].run_id}"
    output = tmp_path / "one.csv"
    argv = ["--model", model, "--tracking-uri", trained["uri"], "--patient", str(folder), "--output", str(output)]
    assert predict_cli.main(argv) == 0
    one = pd.read_csv(output)
    assert "not used: notes.txt" in capsys.readouterr().out
    everyone = load_model(model, trained["uri"]).predict_dataset().frame.set_index("patient_id")
    expected = everyone.loc[normalise_patient_id(source.name)]
    assert one["patient_id"].tolist() == [normalise_patient_id(source.name)]
    probs = [c for c in one.columns if c.startswith("prob_")]
    np.testing.assert_allclose(one[probs].to_numpy()[0], expected[probs].to_numpy(dtype=float), atol=1e-6)
    (folder / "clinical.csv").unlink()
    assert predict_cli.main(argv) == 2  # the table is missing: a data error naming it, no output rewritten
    assert "missing upload for tabular" in capsys.readouterr().err


def test_a_patient_without_a_needed_modality_is_reported_not_predicted(trained, tmp_path):
    new = generate_mpi_cohort(tmp_path / "new", 12, seed=7, image_size=32)
    table = pd.read_csv(new / "clinical.csv")
    table.iloc[1:].to_csv(new / "clinical.csv", index=False)  # the first patient loses its clinical row
    model = load_model(f"runs:/{trained['result'].run_id}", trained["uri"])
    result = model.predict_dataset(new)
    assert len(result.frame) == 11
    assert result.excluded == {"no tabular": [normalise_patient_id(table.iloc[0]["patient_id"])]}


def test_model_references_that_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="remote checkpoints are not loaded"):
        resolve_model("https://example.org/model.ckpt")
    with pytest.raises(ModelLoadError, match="no such checkpoint"):
        resolve_model(str(tmp_path / "missing.ckpt"))
    (tmp_path / "two").mkdir()
    for name in ("a.ckpt", "b.ckpt"):
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(ModelLoadError, match="expected one .ckpt file"):
        resolve_model(str(tmp_path / "two"))


class _Payload:  # a pickled object: loading it would run code, so weights_only refuses it
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoints_that_are_not_ours_or_not_safe(tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"lr": 0.1}}, other)
    with pytest.raises(ModelLoadError, match="not a lightning_fusion checkpoint"):
        load_trained(other)
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "x": _Payload()}, unsafe)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_trained(unsafe)


@pytest.mark.slow
def test_weights_that_do_not_fit_the_config_are_an_error(trained, tmp_path):
    path = resolve_model(f"runs:/{trained['result'].run_id}", trained["uri"], tmp_path / "dl")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["config"]["model"]["head"]["widths"] = [7]
    broken = tmp_path / "broken.ckpt"
    torch.save(checkpoint, broken)
    with pytest.raises(ModelLoadError, match="do not fit the model"):
        load_trained(broken)
    del checkpoint["lightning_fusion"]
    torch.save(checkpoint, broken)
    with pytest.raises(ModelLoadError, match="no fitted preprocessing"):
        load_trained(broken)


@pytest.mark.slow
def test_inputs_of_another_shape_or_without_a_modality_are_clear_errors(trained, tmp_path):
    model = load_model(f"runs:/{trained['result'].run_id}", trained["uri"])
    other = generate_mpi_cohort(tmp_path / "big", 12, seed=1, image_size=48)
    arrays = model.dataset_arrays(model.read_cohort(other))[1]
    size = model.config.data.image_size
    assert size != 48 and arrays["image"].shape[1:] == (size, size, 9)  # at the model's size, not the files' 48 px
    with pytest.raises(DataError, match="trained on samples of shape"):
        model.predict_arrays({"image": arrays["image"][:, :20], "tabular": arrays["tabular"]})
    with pytest.raises(DataError, match="missing \\['tabular'\\]"):
        model.predict_arrays({"image": arrays["image"]})


def _raw_patients(model, count):
    """Raw inputs of the first patients of the training dataset, as a REST client would send them."""
    from lightning_fusion.data.datamodule import modality_arrays

    cohort = model.read_cohort()
    ids = sorted(cohort.labels.index)[:count]
    raw = {
        "image": modality_arrays(cohort, "image", ids, model.config.data, None),
        "tabular": cohort.modalities["tabular"].rows(ids).to_numpy(np.float64),
    }
    return ids, raw


@pytest.mark.slow
def test_the_logged_pyfunc_model_predicts_raw_inputs_and_loads_from_the_registry(trained, monkeypatch):
    import mlflow

    run_id = trained["result"].run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    mlflow.set_tracking_uri(trained["uri"])
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    served = torch.load(resolve_model(f"runs:/{run_id}/model", trained["uri"]), weights_only=True)
    assert "optimizer_states" not in served and {"state_dict", "hyper_parameters", "lightning_fusion"} <= set(served)
    inputs = {s.name: s for s in pyfunc.metadata.get_input_schema().inputs}
    size = trained["config"].data.image_size
    assert inputs["image"].shape == (-1, size, size, 9) and inputs["tabular"].type == np.dtype("float64")
    model = load_model(f"runs:/{run_id}", trained["uri"])
    ids, raw = _raw_patients(model, 4)
    raw["tabular"][0, 0] = np.nan  # a missing value: the fitted imputation fills it
    answer = pyfunc.predict(raw)
    probs = model.predict_arrays(model.inputs_from_raw(raw))
    np.testing.assert_allclose(answer[[f"prob_{c}" for c in model.classes]].to_numpy(), probs, atol=1e-6)
    assert list(answer["predicted"]) == [model.classes[i] for i in probs.argmax(axis=1)]
    # Registered, it loads by name and version; predict and the pyfunc share one checkpoint.
    client = MlflowClient(trained["uri"])
    client.create_registered_model("demo-fusion")
    client.create_model_version("demo-fusion", f"runs:/{run_id}/model", run_id=run_id)
    registered = load_model("models:/demo-fusion/1", trained["uri"])
    np.testing.assert_allclose(registered.predict_arrays(registered.inputs_from_raw(raw)), probs, atol=1e-6)
    with pytest.raises(DataError, match="images must be whole numbers 0-255"):  # e.g. scaled to [0, 1]
        model.inputs_from_raw({"image": raw["image"] / 255.0, "tabular": raw["tabular"]})
    assert np.array_equal(model.inputs_from_raw(raw | {"image": raw["image"].astype(np.int64)})["image"], raw["image"])
    with pytest.raises(DataError, match="expected \\(N, 45\\) values"):
        model.inputs_from_raw({"image": raw["image"], "tabular": raw["tabular"][:, :3]})


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_rest_prediction(trained, tmp_path):
    import json as json_
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_id = trained["result"].run_id
    env = dict(os.environ, MLFLOW_TRACKING_URI=trained["uri"])
    mlflow_cli = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/model"]
    server = subprocess.Popen(
        [*mlflow_cli, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "serve.log", "w"),  # noqa: SIM115 - closed with the process
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).status == 200:
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                time.sleep(1)
        model = load_model(f"runs:/{run_id}", trained["uri"])
        _, raw = _raw_patients(model, 1)
        complete = ~np.isnan(raw["tabular"][0])
        raw["tabular"] = np.where(complete, raw["tabular"], None).tolist()  # JSON null for a missing value
        body = json_.dumps({"inputs": {"image": raw["image"].tolist(), "tabular": raw["tabular"]}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        answer = json_.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"][0]
    finally:
        server.terminate()
        server.wait(timeout=30)
    expected = model.predict_arrays(
        model.inputs_from_raw({"image": raw["image"], "tabular": np.array(raw["tabular"], dtype=float)})
    )[0]
    assert answer["predicted"] == model.classes[int(expected.argmax())]
    assert [answer[f"prob_{c}"] for c in model.classes] == pytest.approx(list(expected), abs=1e-6)


@pytest.mark.slow
def test_a_model_trained_on_the_real_ptbxl_subset_predicts_explains_and_serves(shared_data, tmp_path, monkeypatch):
    """Signal + metadata on real PTB-XL records (1 short epoch): predict = the run's test predictions."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(
        PROJECT_ROOT / "experiments" / "ptbxl_fusion.yaml",
        {
            "data.root": str(shared_data / "ptbxl"),
            "data.reader.train_folds": [1, 2, 3, 4, 5, 6, 7],
            "data.reader.val_folds": [8],
            "data.reader.test_folds": [9],
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": 3,
            "trainer.accelerator": "cpu",
            "evaluation.explain_patients": 2,
            "tracking.tracking_uri": uri,
            "tracking.artifact_root": str(tmp_path / "mlruns"),
        },
    )
    run_id = fit(config).run_id
    model = load_model(f"runs:/{run_id}", uri)
    assert model.modalities == ["signal", "tabular"] and set(model.preprocessors) == {"signal", "tabular"}
    predicted = model.predict_dataset().frame.set_index("patient_id")
    client = MlflowClient(uri)
    tested = pd.read_csv(client.download_artifacts(run_id, "test_predictions.csv", str(tmp_path))).set_index(
        "patient_id"
    )
    tested.index = tested.index.astype(str)
    probs = [f"prob_{c}" for c in model.classes]
    np.testing.assert_allclose(predicted.loc[tested.index, probs].to_numpy(), tested[probs].to_numpy(), atol=1e-5)
    explained = json.loads(
        open(client.download_artifacts(run_id, "explanations/explanations.json", str(tmp_path))).read()
    )
    assert len(explained["patients"]) == 2 and "modality_contributions" in explained  # no image: no Grad-CAM
    assert set(explained["methods"]) == {"signal", "tabular"}
    assert list(explained["skipped"]) == ["modality_shapley"]  # concat cannot mask a modality: said, not left out
    assert "model.fusion 'concat' does not" in explained["skipped"]["modality_shapley"]
    leads = pd.read_csv(client.download_artifacts(run_id, "explanations/signal_attributions.csv", str(tmp_path)))
    assert len(leads) == 2 * 12 and set(leads["lead"]) >= {"I", "II", "V1", "V6"}
    # The pyfunc model takes the raw signal and metadata of a record.
    cohort = model.read_cohort()
    ids = list(tested.index[:2])
    raw = {"signal": cohort.modalities["signal"].load_many(ids), "tabular": cohort.modalities["tabular"].rows(ids)}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    answer = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(
        {"signal": raw["signal"], "tabular": raw["tabular"].to_numpy(np.float64)}
    )
    np.testing.assert_allclose(answer[probs].to_numpy(), tested.loc[ids, probs].to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_the_logged_input_example_is_a_zero_placeholder_that_the_model_accepts(trained, tmp_path):
    """No patient's data inside a model that may be registered and served elsewhere; still a valid request."""
    import mlflow
    from mlflow.models import Model

    local = MlflowClient(trained["uri"]).download_artifacts(trained["result"].run_id, "model", str(tmp_path))
    example = Model.load(local).load_input_example(local)
    model = load_model(f"runs:/{trained['result'].run_id}", trained["uri"])
    size = trained["config"].data.image_size
    assert set(example) == {"image", "tabular"} and example["image"].shape == (1, size, size, 9)
    assert example["image"].dtype == np.uint8 and example["tabular"].shape == (
        1,
        len(model.preprocessors["tabular"].input_columns),
    )
    assert all(not np.any(values) for values in example.values())
    answer = mlflow.pyfunc.load_model(local).predict(example)
    assert len(answer) == 1 and answer["predicted"].iloc[0] in model.classes
