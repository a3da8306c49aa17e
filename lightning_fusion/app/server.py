"""The Flask app around one loaded model: the upload page, the prediction page and a JSON API.

Routes:

* ``GET /`` — the form generated from the model (one file input per modality, named after it).
* ``POST /predict`` — multipart upload of one patient → the page with the predicted class, the class
  probabilities and the Grad-CAM overlays; a bad upload → the page with the message, HTTP 400; an
  upload over ``max_upload_mb`` → HTTP 413.
* ``POST /api/predict`` — the same form → ``{"predicted", "probabilities", "patient_id", "notes",
  "gradcam": {modality: {"views", "overlays" (base64 PNG), "message"}}}``, and with several modalities
  ``"contributions": {"method", "shapley_baseline", "shapley_note", "modalities": {modality: {"drop_one",
  "shapley", "fusion_weight"}}}`` (``null`` where not defined); errors ``{"error"}`` (400, 413).
* ``GET /api/model`` — what the model needs: modalities, classes and each upload's description.

Each request's files are saved in a :class:`tempfile.TemporaryDirectory` that is deleted before the
response; predictions run one at a time (Grad-CAM hooks the shared model).
"""

from __future__ import annotations

import base64
import tempfile
import threading
from pathlib import Path

from flask import Flask, Request, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from lightning_fusion.app.page import render_page
from lightning_fusion.app.prediction import PatientPrediction, predict_patient
from lightning_fusion.errors import DataError, UploadError
from lightning_fusion.predict.expectations import model_inputs
from lightning_fusion.predict.patient_files import PatientInputs, read_patient
from lightning_fusion.predict.trained_model import TrainedModel

DEFAULT_MAX_UPLOAD_MB = 20.0


def create_app(model: TrainedModel, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, name: str | None = None) -> Flask:
    """A Flask app serving ``model`` (loaded once, by the caller); ``name`` is how the page names it."""
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    app.json.sort_keys = False  # probabilities in the model's class order
    inputs = model_inputs(model)
    lock = threading.Lock()
    shown_name = name or (model.source.name if isinstance(model.source, Path) else str(model.source))

    def page(status: int = 200, **content) -> tuple[str, int]:
        html = render_page(
            model_name=shown_name,
            modalities=model.modalities,
            classes=model.classes,
            inputs=inputs,
            action="/predict",
            max_upload_mb=max_upload_mb,
            optional=model.config.data.keep_missing_modalities and len(model.modalities) > 1,
            **content,
        )
        return html, status

    def predict(incoming: Request) -> tuple[PatientInputs, PatientPrediction]:
        files = {item.name: incoming.files.getlist(item.name) for item in inputs}
        with tempfile.TemporaryDirectory(prefix="lightning-fusion-app-") as folder:
            patient = read_patient(model, inputs, files, Path(folder))
        with lock:
            return patient, predict_patient(model, inputs, patient.arrays, patient.present)

    @app.get("/")
    def index():
        return page()

    @app.post("/predict")
    def predict_page():
        try:
            patient, result = predict(request)
        except DataError as err:  # UploadError, and any check of the model's own loaders
            return page(400, error=str(err))
        return page(result=result, notes=patient.notes, patient_id=patient.patient_id)

    @app.post("/api/predict")
    def predict_api():
        try:
            patient, result = predict(request)
        except DataError as err:
            return jsonify(error=str(err)), 400
        gradcam = {
            cam.modality: {
                "views": cam.view_names,
                "overlays": [base64.b64encode(png).decode("ascii") for png in cam.overlays],
                "message": cam.message,
            }
            for cam in result.cams
        }
        return jsonify(
            predicted=result.predicted,
            decision=result.decision,
            probabilities=result.probabilities,
            patient_id=patient.patient_id,
            notes=patient.notes,
            gradcam=gradcam,
            contributions=_contributions_json(result),
        )

    @app.get("/api/model")
    def describe_model():
        return jsonify(
            model=shown_name,
            modalities=model.modalities,
            classes=model.classes,
            inputs=[item.public() for item in inputs],
        )

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_err):
        message = f"the upload is larger than {max_upload_mb:g} MB in all (the server's --max-upload-mb)"
        if request.path.startswith("/api/"):
            return jsonify(error=message), 413
        return page(413, error=message)

    return app


def _contributions_json(result: PatientPrediction) -> dict | None:
    found = result.contributions
    if found is None:
        return None
    return {
        "method": found.method,
        "shapley_baseline": found.shapley_baseline,
        "shapley_note": found.shapley_note,
        "modalities": {
            share.modality: {"drop_one": share.drop_one, "shapley": share.shapley, "fusion_weight": share.fusion_weight}
            for share in found.shares
        },
    }


__all__ = ["DEFAULT_MAX_UPLOAD_MB", "UploadError", "create_app"]
