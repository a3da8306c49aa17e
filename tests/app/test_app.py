"""The one-patient web app: the form from the model, uploads → the model's own predictions, clear refusals.

A tiny image + clinical-table model is trained once (64 px, so Grad-CAM has a 2x2 feature map) and
one real patient of its cohort is uploaded: through Flask's test client (every bad upload: status and
message) and, in one end-to-end test, through headless Chromium against the real server process.
Signal uploads use an untrained signal + table model (the plumbing is what is tested, not accuracy).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lightning_fusion.app import create_app
from lightning_fusion.app import server as app_server
from lightning_fusion.app.__main__ import main as app_main
from lightning_fusion.config import load_config, to_dict
from lightning_fusion.data.cohort import normalise_patient_id
from lightning_fusion.data.signal import SignalPreprocessor
from lightning_fusion.data.tabular import TabularPreprocessor
from lightning_fusion.errors import UploadError
from lightning_fusion.lit import FusionLitModule
from lightning_fusion.predict.loading import load_model, resolve_model
from lightning_fusion.predict.patient_files import read_signal
from lightning_fusion.predict.trained_model import TrainedModel
from tests.conftest import PROJECT_ROOT, headless_chromium

IMAGE_SIZE = 64  # test_resnet reduces 32x: a 2x2 last feature map (at 32 px Grad-CAM would be blank)
VIEWS = ["QPS AC", "Stress QGS AC", "Rest QGS AC"]  # the MPI reader's view order
MAX_UPLOAD_MB = 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(trained_demo, tmp_path_factory):
    """The session's demo model (image + clinical table), its checkpoint, and one of its patients' files."""
    tmp = tmp_path_factory.mktemp("app")
    root, uri, result = trained_demo["root"], trained_demo["uri"], trained_demo["result"]
    assert trained_demo["config"].data.image_size == IMAGE_SIZE
    checkpoint = resolve_model(f"runs:/{result.run_id}", uri, tmp / "download")
    model = load_model(str(checkpoint))
    folder = sorted(p for p in root.glob("*/*") if p.is_dir())[0]  # <root>/<Class>/<PATIENT-ID>/
    pid = normalise_patient_id(folder.name)
    clinical = pd.read_csv(root / "clinical.csv")
    row = clinical[clinical["patient_id"].map(normalise_patient_id) == pid]
    assert len(row) == 1
    table = tmp / "patient.csv"
    row.to_csv(table, index=False)
    expected = model.predict_dataset().frame.set_index("patient_id").loc[pid]  # through the model's reader
    return {
        "model": model,
        "checkpoint": checkpoint,
        "views": [folder / f"{view}.png" for view in VIEWS],
        "row": row,
        "table": table,
        "patient": str(row["patient_id"].iloc[0]),
        "expected": expected,
    }


@pytest.fixture(scope="module")
def client(trained):
    return create_app(trained["model"], max_upload_mb=MAX_UPLOAD_MB, name="test model").test_client()


def _file(path_or_bytes, name: str) -> tuple[io.BytesIO, str]:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return io.BytesIO(data), name


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _form(trained, image=None, tabular=None) -> dict:
    """The patient's upload; ``image``/``tabular`` replace a modality's files (``[]`` leaves it out)."""
    form = {
        "image": [_file(path, path.name) for path in trained["views"]] if image is None else image,
        "tabular": [_file(trained["table"], "patient.csv")] if tabular is None else tabular,
    }
    return {name: files for name, files in form.items() if files != []}


def _post(client, path: str, form: dict):
    return client.post(path, data=form, content_type="multipart/form-data")


def _probabilities(trained) -> np.ndarray:
    return np.array([trained["expected"][f"prob_{c}"] for c in trained["model"].classes])


def _returned(body: dict, classes) -> np.ndarray:
    return np.array([body["probabilities"][c] for c in classes])


def _overlays(page: str) -> dict[str, Image.Image]:
    """Overlay element id → the decoded PNG of its data: URI."""
    found = re.findall(r'<img id="(cam-[^"]+)"[^>]*?src="data:image/png;base64,([^"]+)"', page, flags=re.S)
    return {key: Image.open(io.BytesIO(base64.b64decode(data))) for key, data in found}


# --------------------------------------------------------------------------------------------------
# The page and the happy path (test client)
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_form_asks_for_each_modality_and_names_the_classes(client, trained):
    response = client.get("/")
    assert response.status_code == 200
    page = html.unescape(response.get_data(as_text=True))
    assert re.search(r'<input type="file" id="input-image" name="image" accept="[^"]*\.png[^"]*"\s+multiple', page)
    assert re.search(r'<input type="file" id="input-tabular" name="tabular" accept="\.csv,\.xlsx"', page)
    assert "3 image files, one per view, in this order: QPS AC, Stress QGS AC, Rest QGS AC; RGB" in page
    assert f"resized to {IMAGE_SIZE}×{IMAGE_SIZE} px" in page
    columns = trained["model"].preprocessors["tabular"].input_columns
    assert f"the model's {len(columns)} columns" in page and ", ".join(columns) in page
    assert all(f'<span class="class">{name}</span>' in page for name in ["normal", "ischemia", "infarction"])
    assert 'id="result"' not in page and 'id="error"' not in page
    described = client.get("/api/model").get_json()
    assert described["classes"] == trained["model"].classes and described["modalities"] == ["image", "tabular"]
    assert described["inputs"][0]["views"] == VIEWS and described["inputs"][1]["columns"] == columns


@pytest.mark.slow
def test_an_uploaded_patient_gets_the_prediction_the_model_gives_it_from_its_dataset(client, trained):
    response = _post(client, "/api/predict", _form(trained))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["predicted"] == trained["expected"]["predicted"]
    np.testing.assert_allclose(_returned(body, trained["model"].classes), _probabilities(trained), atol=1e-5)
    assert list(body["probabilities"]) == trained["model"].classes
    assert body["patient_id"] == trained["patient"]
    cam = body["gradcam"]["image"]
    assert cam["views"] == VIEWS and cam["message"] is None and len(cam["overlays"]) == 3
    for data in cam["overlays"]:
        overlay = Image.open(io.BytesIO(base64.b64decode(data)))
        assert overlay.format == "PNG" and overlay.size == (IMAGE_SIZE, IMAGE_SIZE) and overlay.mode == "RGB"
    assert any("views matched by file name" in note for note in body["notes"])


@pytest.mark.slow
def test_the_result_page_shows_the_class_the_probabilities_and_an_overlay_per_view(client, trained):
    response = _post(client, "/predict", _form(trained))
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    predicted = trained["expected"]["predicted"]
    assert f'<strong id="predicted-class">{predicted}</strong>' in page
    for i, name in enumerate(trained["model"].classes):
        row = re.search(rf'<tr id="prob-{i}" data-class="{name}"[^>]*>\s*<td>{name}</td><td class="p">([0-9.]+)', page)
        assert row and float(row.group(1)) == pytest.approx(trained["expected"][f"prob_{name}"], abs=1e-4)
    overlays = _overlays(page)
    assert sorted(overlays) == ["cam-image-1", "cam-image-2", "cam-image-3"]
    assert all(image.size == (IMAGE_SIZE, IMAGE_SIZE) for image in overlays.values())
    for i, view in enumerate(VIEWS, start=1):
        assert re.search(rf'id="cam-image-{i}" class="overlay"\s+alt="Grad-CAM overlay of image, {view}"', page)
    assert 'id="error"' not in page and f'<span id="patient-id">{trained["patient"]}</span>' in page
    assert '<form id="predict"' in page  # the next patient can be uploaded from the result


@pytest.mark.slow
def test_views_are_ordered_by_their_names_else_taken_in_the_order_sent(client, trained):
    shuffled = [_file(path, path.name) for path in reversed(trained["views"])]
    body = _post(client, "/api/predict", _form(trained, image=shuffled)).get_json()
    np.testing.assert_allclose(_returned(body, trained["model"].classes), _probabilities(trained), atol=1e-5)
    anonymous = [_file(path, f"view{i}.png") for i, path in enumerate(trained["views"])]
    body = _post(client, "/api/predict", _form(trained, image=anonymous)).get_json()
    np.testing.assert_allclose(_returned(body, trained["model"].classes), _probabilities(trained), atol=1e-5)
    assert "image: views taken in the order sent: QPS AC = view0.png, Stress QGS AC = view1.png" in body["notes"][0]


@pytest.mark.slow
def test_a_model_without_grad_cam_still_predicts_and_says_why(client, trained, monkeypatch):
    def undefined(*args, **kwargs):
        raise ValueError("backbone 'vit_tiny' is not a CNN")

    monkeypatch.setattr("lightning_fusion.explain.cam.grad_cam", undefined)  # what the model's maps call
    response = _post(client, "/predict", _form(trained))
    assert response.status_code == 200
    page = html.unescape(response.get_data(as_text=True))
    assert f'<strong id="predicted-class">{trained["expected"]["predicted"]}</strong>' in page
    assert re.search(r'id="cam-message-image" class="warning">no Grad-CAM for image: backbone .vit_tiny. is not', page)
    assert not _overlays(page)


@pytest.mark.slow
def test_uploads_are_saved_in_a_temporary_folder_that_is_gone_after_the_request(client, trained, monkeypatch):
    seen: list[tuple[Path, list[Path]]] = []
    read = app_server.read_patient

    def recording(model, inputs, files, folder):
        try:
            return read(model, inputs, files, folder)
        finally:
            seen.append((folder, sorted(p for p in folder.rglob("*") if p.is_file())))

    monkeypatch.setattr(app_server, "read_patient", recording)
    assert _post(client, "/predict", _form(trained)).status_code == 200
    bad = [_file(path, "../../etc/QPS AC.png") for path in trained["views"][:1]]  # a hostile name, then a 400
    assert _post(client, "/predict", _form(trained, image=bad)).status_code == 400
    assert len(seen) == 2
    for folder, files in seen:
        assert not folder.exists()
        assert all(folder in path.parents for path in files)
    assert len(seen[0][1]) == 4  # 3 views + the table, under the request's folder only


# --------------------------------------------------------------------------------------------------
# Bad uploads: HTTP 400 and a message naming the problem, on the page and from the API
# --------------------------------------------------------------------------------------------------
def _bad_image_name(trained):
    return [_file(trained["views"][0], "QPS AC.txt"), *[_file(p, p.name) for p in trained["views"][1:]]]


def _unreadable_image(trained):
    return [_file(b"not a png at all", "QPS AC.png"), *[_file(p, p.name) for p in trained["views"][1:]]]


def _table_without(column):
    return lambda trained: [_file(_csv(trained["row"].drop(columns=[column])), "patient.csv")]


def _table_with(column, value):
    return lambda trained: [_file(_csv(trained["row"].assign(**{column: value})), "patient.csv")]


BAD_UPLOADS = {
    "missing modality": (
        lambda t: {"tabular": []},
        "missing upload for tabular (clinical table, 1 .csv or .xlsx file)",
    ),
    "image extension": (lambda t: {"image": _bad_image_name(t)}, "image: 'QPS AC.txt' is not an accepted image file"),
    "unreadable image": (
        lambda t: {"image": _unreadable_image(t)},
        "image: unreadable image 'QPS AC.png': cannot identify image file 'QPS AC.png'",
    ),
    "too few views": (
        lambda t: {"image": [_file(p, p.name) for p in t["views"][:2]]},
        "image: expected 3 image files: QPS AC, Stress QGS AC, Rest QGS AC; got 2 (QPS AC.png, Stress QGS AC.png)",
    ),
    "table extension": (
        lambda t: {"tabular": [_file(t["table"], "patient.txt")]},
        "tabular: 'patient.txt' is not an accepted clinical table file; expected .csv, .xlsx",
    ),
    "missing column": (
        lambda t: {"tabular": _table_without("age")(t)},
        "tabular: 'patient.csv' has no column age (the model needs",
    ),
    "two rows": (
        lambda t: {"tabular": [_file(_csv(pd.concat([t["row"], t["row"]])), "patient.csv")]},
        "tabular: 'patient.csv' must hold exactly one row (this patient), found 2",
    ),
    "non-numeric value": (
        lambda t: {"tabular": _table_with("age", "old")(t)},
        "tabular: column 'age' has the non-numeric value 'old'; expected a number",
    ),
    "not a table": (
        lambda t: {"tabular": [_file(b"\xff\xfe\x00garbage\x00", "patient.xlsx")]},
        "tabular: cannot read 'patient.xlsx' as a table",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_upload_is_a_400_with_a_message_that_names_the_problem(client, trained, case):
    change, message = BAD_UPLOADS[case]
    api = _post(client, "/api/predict", _form(trained, **change(trained)))
    assert api.status_code == 400
    assert message in api.get_json()["error"]
    assert "/tmp" not in api.get_json()["error"] and "/uploaded" not in api.get_json()["error"]
    page = _post(client, "/predict", _form(trained, **change(trained)))
    assert page.status_code == 400
    shown = re.search(r'<p id="error" class="error" role="alert">(.*?)</p>', page.get_data(as_text=True), re.S)
    assert shown and message in html.unescape(shown.group(1))
    assert 'id="result"' not in page.get_data(as_text=True)


@pytest.mark.slow
def test_an_upload_over_the_size_limit_is_a_413(client, trained):
    big = [_file(b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1), "QPS AC.png")]
    page = _post(client, "/predict", _form(trained, image=big))
    assert page.status_code == 413
    assert f"the upload is larger than {MAX_UPLOAD_MB} MB in all" in page.get_data(as_text=True)
    api = _post(client, "/api/predict", _form(trained, image=[_file(b"\0" * (2 * 1024 * 1024), "QPS AC.png")]))
    assert api.status_code == 413 and "larger than" in api.get_json()["error"]


# --------------------------------------------------------------------------------------------------
# Signals: an untrained signal + table model (ECG reader options: lead names, sex as text)
# --------------------------------------------------------------------------------------------------
LEADS, SAMPLES = 2, 50


@pytest.fixture(scope="module")
def signal_model() -> TrainedModel:
    overrides = {
        "data.reader": {"name": "ecg"},
        "data.root": "unused",
        "model.modalities": ["signal", "tabular"],
        "model.encoders.signal": {"name": "signal_mlp", "widths": [8]},
        "model.encoders.tabular": {"name": "mlp", "widths": [8]},
        "trainer.accelerator": "cpu",
    }
    config = load_config(None, overrides)
    rng = np.random.default_rng(0)
    signal = SignalPreprocessor(config.data.signal).fit(rng.normal(size=(6, LEADS, SAMPLES)), leads=["I", "II"])
    table = pd.DataFrame({"age": [50.0, 61, 70, 45, 38, 80], "sex": [0.0, 1, 1, 0, 1, 0]})
    tabular = TabularPreprocessor(config.data.tabular).fit(table, np.array([0, 1, 0, 1, 0, 1]))
    specs = {"signal": {"kind": "signal", "shape": [LEADS, SAMPLES]}, "tabular": {"kind": "vector", "shape": [2]}}
    torch.manual_seed(0)
    module = FusionLitModule(to_dict(config), specs, ["normal", "abnormal", "borderline"]).eval()
    return TrainedModel(module, {"signal": signal, "tabular": tabular}, Path("untrained.ckpt"), {})


def _signal_form(signal: tuple[bytes, str], table: bytes = b"IDX,age,sex\n7,61,M\n") -> dict:
    return {"signal": [_file(*signal)], "tabular": [_file(table, "clinical.csv")]}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_signal_as_npy_or_as_csv_gives_the_same_prediction(signal_model):
    client = create_app(signal_model).test_client()
    page = html.unescape(client.get("/").get_data(as_text=True))
    assert f"{LEADS} lead(s) × {SAMPLES} samples: a .npy array of shape ({LEADS}, {SAMPLES})" in page
    assert "leads, in row order: I, II" in page and "text values allowed for sex (m/male/f/female)" in page
    signal = np.random.default_rng(1).normal(size=(LEADS, SAMPLES)).astype(np.float32)
    plain = "\n".join(",".join(f"{v:.9g}" for v in lead) for lead in signal).encode()
    named = "lead," + ",".join(map(str, range(SAMPLES))) + "\n"
    named += "\n".join(f"{name}," + ",".join(f"{v:.9g}" for v in lead) for name, lead in zip(["I", "II"], signal))
    inputs = {
        "signal": signal_model.preprocessors["signal"].transform(signal[None]),
        "tabular": signal_model.preprocessors["tabular"].transform(pd.DataFrame({"age": [61.0], "sex": [1.0]})),
    }
    expected = signal_model.predict_arrays(inputs)[0]
    for upload in [(_npy(signal), "ecg.npy"), (plain, "ecg.csv"), (named.encode(), "ecg.csv")]:
        response = _post(client, "/api/predict", _signal_form(upload))  # sex "M" is 1 (the ECG reader's codes)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        np.testing.assert_allclose(_returned(body, signal_model.classes), expected, atol=1e-6)
        assert body["gradcam"] == {} and body["patient_id"] == "7"


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        ((_npy(np.zeros((3, SAMPLES))), "ecg.npy"), "'ecg.npy': 3 lead(s) × 50 samples; the model needs 2 lead(s)"),
        ((_npy(np.zeros((SAMPLES, LEADS))), "ecg.npy"), "it looks transposed: one row per lead"),
        ((_npy(np.zeros((1, LEADS, SAMPLES))), "ecg.npy"), "expected a (leads, samples) array of shape (2, 50)"),
        ((b"\x93NUMPY garbage", "ecg.npy"), "'ecg.npy': not a readable .npy array"),
        ((b"0," * (SAMPLES - 1) + b"0\n" + b"1," * (SAMPLES - 2) + b"x,1\n", "ecg.csv"), "lead 1, sample 48: 'x'"),
        ((b"1,2,3\n4,5,6\n", "ecg.csv"), "'ecg.csv': 2 lead(s) × 3 samples; the model needs 2 lead(s) × 50 samples"),
        ((b"1,2,3", "ecg.txt"), "signal: 'ecg.txt' is not an accepted signal file; expected .npy, .csv"),
    ],
)
def test_a_signal_that_does_not_fit_is_a_400(signal_model, upload, message):
    client = create_app(signal_model).test_client()
    response = _post(client, "/api/predict", _signal_form(upload))
    assert response.status_code == 400 and message in response.get_json()["error"]


def test_a_clinical_text_value_outside_the_readers_codes_is_named(signal_model):
    client = create_app(signal_model).test_client()
    upload = (_npy(np.zeros((LEADS, SAMPLES))), "ecg.npy")
    response = _post(client, "/api/predict", _signal_form(upload, b"IDX,age,sex\n7,61,X\n"))
    assert response.status_code == 400
    assert (
        "tabular: column 'sex' has the value 'X'; expected a number or one of ['m', 'male', 'f', 'female']"
        in (response.get_json()["error"])
    )


def test_a_one_lead_csv_row_with_an_index_column_and_header(tmp_path):
    """The ECG layout's own signal CSV (``index,0,1,...`` then one row per recording) works for one recording."""
    path = tmp_path / "signal.csv"
    path.write_text("index,0,1,2,3\n17,0.1,0.2,0.3,0.4\n")
    np.testing.assert_allclose(read_signal(path, "signal.csv", (1, 4)), [[0.1, 0.2, 0.3, 0.4]], rtol=1e-6)
    path.write_text("0.1,0.2,0.3,nan\n")
    with pytest.raises(UploadError, match=r"'signal.csv': lead 0, sample 3: 'nan' is not a number"):
        read_signal(path, "signal.csv", (1, 4))


@pytest.mark.slow
def test_names_in_messages_are_escaped_on_the_page(client, trained):
    hostile = [_file(path, "<img src=x onerror=alert(1)>.txt") for path in trained["views"]]
    page = _post(client, "/predict", _form(trained, image=hostile)).get_data(as_text=True)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.txt" in page


def test_a_recording_is_turned_into_the_spectrogram_image_the_reader_would_make(tmp_path):
    """CT + CXR + cough stacked (early-fusion input): a .wav becomes its log-mel image, as in training."""
    import soundfile

    from lightning_fusion.data.audio import MelSpectrogramParams, load_audio, log_mel_image

    overrides = {
        "data.reader": {"name": "cxr_ct_cough"},
        "data.root": "unused",
        "data.image_size": 32,
        "model.modalities": ["stack"],
        "model.encoders": {"stack": {"name": "timm", "backbone": "test_resnet"}},
        "trainer.accelerator": "cpu",
    }
    config = load_config(None, overrides)
    torch.manual_seed(0)
    specs = {"stack": {"kind": "image", "shape": [3, 32, 32]}}
    module = FusionLitModule(to_dict(config), specs, ["Healthy", "LungsCancer", "Pneumonia", "covid"]).eval()
    client = create_app(TrainedModel(module, {}, Path("untrained.ckpt"), {})).test_client()
    page = html.unescape(client.get("/").get_data(as_text=True))
    assert "3 image files, one per view, in this order: CT, CXR, Cough sound; grayscale" in page
    wav = tmp_path / "cough.wav"
    soundfile.write(wav, np.random.default_rng(0).normal(scale=0.1, size=8000).astype(np.float32), 16000)
    spectrogram = io.BytesIO()
    Image.fromarray(log_mel_image(load_audio(wav, 16000), MelSpectrogramParams())).save(spectrogram, format="PNG")
    scan = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40), dtype=np.uint8)).save(scan, format="PNG")
    images = [(scan.getvalue(), "ct1.png"), (scan.getvalue(), "xray1.png")]
    answers = []
    for cough in [(wav.read_bytes(), "cough1.wav"), (spectrogram.getvalue(), "cough1.png")]:
        response = _post(client, "/api/predict", {"stack": [_file(*upload) for upload in [*images, cough]]})
        assert response.status_code == 200, response.get_json()
        answers.append(response.get_json())
    assert answers[0]["probabilities"] == pytest.approx(answers[1]["probabilities"], abs=1e-6)
    assert "stack: cough1.wav converted to a log-mel spectrogram image" in answers[0]["notes"]
    assert "CT = ct1.png, CXR = xray1.png, Cough sound = cough1.wav" in answers[0]["notes"][0]


def test_a_binary_model_decides_at_its_threshold_and_the_page_says_so():
    """The page and the API take the class from the model's operating point, not the larger probability."""
    from lightning_fusion.evaluation.threshold import OperatingPoint

    overrides = {
        "data.reader": {"name": "medmnist", "classes": ["normal", "pneumonia"]},
        "data.root": "unused",
        "data.image_size": 32,
        "model.modalities": ["image"],
        "model.encoders": {"image": {"name": "timm", "backbone": "test_resnet", "reduce_channels": None}},
    }
    torch.manual_seed(0)
    specs = {"image": {"kind": "image", "shape": [1, 32, 32]}}
    module = FusionLitModule(to_dict(load_config(None, overrides)), specs, ["normal", "pneumonia"]).eval()
    scan = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (28, 28), dtype=np.uint8)).save(scan, format="PNG")

    def answer(point):
        client = create_app(TrainedModel(module, {}, Path("untrained.ckpt"), {}, point)).test_client()
        response = _post(client, "/api/predict", {"image": [_file(scan.getvalue(), "xray.png")]})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    pneumonia = answer(None)["probabilities"]["pneumonia"]
    below = answer(OperatingPoint("youden", pneumonia - 1e-3, "pneumonia", "validation"))
    above = answer(OperatingPoint("youden", pneumonia + 1e-3, "pneumonia", "validation"))
    assert (below["predicted"], above["predicted"]) == ("pneumonia", "normal")
    assert f"at least {pneumonia + 1e-3:.3f} (youden, chosen on validation patients)" in above["decision"]


# --------------------------------------------------------------------------------------------------
# The command line and the real server in a browser
# --------------------------------------------------------------------------------------------------
def test_a_model_that_cannot_be_loaded_is_a_one_line_error(tmp_path, capsys):
    assert app_main(["--model", str(tmp_path / "missing.ckpt")]) == 2
    assert "model error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        app_main(["--model", "x.ckpt", "--max-upload-mb", "0"])


def _start_server(checkpoint: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``python -m lightning_fusion.app`` on a free 127.0.0.1 port; its URL from its first line of output."""
    command = [sys.executable, "-m", "lightning_fusion.app", "--model", str(checkpoint), "--port", "0"]
    with log.open("w") as errors:  # stderr to a file: a full pipe would block the server
        process = subprocess.Popen(
            [*command, "--threads", "1"],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=PROJECT_ROOT,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            found = re.match(r"serving (http://127\.0\.0\.1:\d+/)", line)
            if found:
                return process, found.group(1)
            if not line:  # it exited
                break
    process.kill()
    process.wait(timeout=10)
    raise AssertionError(f"the app did not start: {log.read_text()[-2000:]}")


@pytest.mark.slow
def test_the_page_in_a_browser_predicts_an_uploaded_patient(trained, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chromium()
    try:
        process, url = _start_server(trained["checkpoint"], tmp_path / "server.log")
        try:
            driver.get(url)
            assert "QPS AC, Stress QGS AC, Rest QGS AC" in driver.find_element(By.ID, "predict").text
            driver.find_element(By.ID, "input-image").send_keys("\n".join(str(p) for p in trained["views"]))
            driver.find_element(By.ID, "input-tabular").send_keys(str(trained["table"]))
            driver.find_element(By.ID, "submit").click()
            predicted = WebDriverWait(driver, 60).until(
                expected_conditions.presence_of_element_located((By.ID, "predicted-class"))
            )
            assert predicted.text == trained["expected"]["predicted"]
            assert driver.find_elements(By.ID, "error") == []
            overlays = driver.find_elements(By.CSS_SELECTOR, "img.overlay")
            assert [o.get_attribute("id") for o in overlays] == ["cam-image-1", "cam-image-2", "cam-image-3"]
            for overlay in overlays:
                assert overlay.is_displayed()
                width = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay)
                assert width == IMAGE_SIZE
        finally:
            _stop(process)
    finally:
        driver.quit()


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()


def _gated_signal_config():
    """A model trained with keep_missing_modalities: a gated fusion of the ECG signal and its table."""
    return load_config(
        None,
        {
            "data.reader": {"name": "ecg"},
            "data.root": "unused",
            "data.keep_missing_modalities": True,
            "model.modalities": ["signal", "tabular"],
            "model.fusion": "gated",
            "model.encoders.signal": {"name": "signal_mlp", "widths": [8]},
            "model.encoders.tabular": {"name": "mlp", "widths": [8]},
            "trainer.accelerator": "cpu",
        },
    )


def test_a_masking_model_predicts_without_an_optional_upload(signal_model):
    """A model trained with keep_missing_modalities (gated fusion): the table may be left out, as in training."""
    config = _gated_signal_config()
    torch.manual_seed(0)
    module = FusionLitModule(to_dict(config), signal_model.specs, signal_model.classes).eval()
    model = TrainedModel(module, signal_model.preprocessors, Path("untrained.ckpt"), {})
    client = create_app(model).test_client()
    form = client.get("/").get_data(as_text=True)
    assert "leave out the ones" in form and " required>" not in form  # the browser lets a field stay empty
    assert " required>" in create_app(signal_model).test_client().get("/").get_data(as_text=True)
    signal = np.random.default_rng(1).normal(size=(LEADS, SAMPLES)).astype(np.float32)
    response = _post(client, "/api/predict", {"signal": [_file(_npy(signal), "ecg.npy")]})
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert any("tabular: not given" in note for note in answer["notes"])
    inputs = {
        "signal": model.preprocessors["signal"].transform(signal[None]),
        "tabular": np.zeros((1, 2), dtype=np.float32),
    }
    absent = {"signal": np.array([True]), "tabular": np.array([False])}
    expected = model.predict_arrays(inputs, absent)[0]
    assert list(answer["probabilities"].values()) == pytest.approx(list(expected), abs=1e-6)
    # Whatever the placeholder holds, the gate masks it: a random table gives the same answer.
    inputs["tabular"] = np.random.default_rng(2).normal(size=(1, 2)).astype(np.float32)
    assert model.predict_arrays(inputs, absent)[0] == pytest.approx(expected, abs=1e-6)
    # The other models still need every upload; and an empty upload is still refused.
    assert (
        _post(
            create_app(signal_model).test_client(), "/api/predict", {"signal": [_file(_npy(signal), "e.npy")]}
        ).status_code
        == 400
    )
    assert _post(client, "/api/predict", {}).status_code == 400


def test_the_page_shows_each_modalitys_drop_one_delta_and_shapley_value(signal_model):
    """A masking model: the Shapley values add up to P(predicted) minus its training prior; concat says why not."""
    config = _gated_signal_config()
    torch.manual_seed(0)
    weights = [1.0, 2.0, 0.5]  # balanced class weights n / (K n_k): training frequencies 2/7, 1/7, 4/7
    module = FusionLitModule(to_dict(config), signal_model.specs, signal_model.classes, weights).eval()
    model = TrainedModel(module, signal_model.preprocessors, Path("untrained.ckpt"), {})
    signal = np.random.default_rng(1).normal(size=(LEADS, SAMPLES)).astype(np.float32)
    answer = _post(create_app(model).test_client(), "/api/predict", _signal_form((_npy(signal), "ecg.npy"))).get_json()
    found = answer["contributions"]
    predicted = answer["probabilities"][answer["predicted"]]
    prior = {"normal": 2 / 7, "abnormal": 1 / 7, "borderline": 4 / 7}[answer["predicted"]]
    assert found["method"] == "mask" and found["shapley_baseline"] == pytest.approx(prior)
    shares = found["modalities"]
    assert sum(s["shapley"] for s in shares.values()) == pytest.approx(predicted - prior, abs=1e-5)
    assert sum(s["fusion_weight"] for s in shares.values()) == pytest.approx(1, abs=1e-5)  # the gates
    page = _post(create_app(model).test_client(), "/predict", _signal_form((_npy(signal), "ecg.npy")))
    text = page.get_data(as_text=True)
    row = re.search(r'<tr id="contrib-signal">(.*?)</tr>', text, flags=re.S).group(1)
    assert f"{shares['signal']['shapley']:+.3f}" in row and f"{shares['signal']['drop_one']:+.3f}" in row
    assert f"training\nprior {prior:.3f}" in text
    # only the signal given: the table is a null player, the signal holds the whole difference
    alone = _post(create_app(model).test_client(), "/api/predict", {"signal": [_file(_npy(signal), "e.npy")]})
    alone = alone.get_json()
    shares = alone["contributions"]["modalities"]
    assert shares["tabular"]["shapley"] == pytest.approx(0, abs=1e-9) and shares["tabular"]["drop_one"] == 0
    assert shares["signal"]["drop_one"] is None  # nothing would be left without it
    # a fusion that cannot mask: drop-one deltas (inputs zeroed) and the reason there are no Shapley values
    concat = _post(create_app(signal_model).test_client(), "/predict", _signal_form((_npy(signal), "ecg.npy")))
    assert "No Shapley values: modality Shapley values need a fusion that masks absent modalities; model.fusion " in (
        html.unescape(concat.get_data(as_text=True))
    )
