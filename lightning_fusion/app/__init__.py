"""A small local web page that predicts one patient with a trained model.

``python -m lightning_fusion.app --model <checkpoint | runs:/<run id> | models:/<name>/<version>>``
serves, on 127.0.0.1 by default, a form generated from the model (one file input per modality); an
upload of one patient's files returns the predicted class, the class probabilities and the Grad-CAM
overlays of the image modalities. Modules: :mod:`~lightning_fusion.predict.expectations` (what the model
needs), :mod:`~lightning_fusion.predict.patient_files` (files → model inputs), :mod:`~lightning_fusion.app.prediction`
(inputs → probabilities and overlays), :mod:`~lightning_fusion.app.page` (the HTML) and
:mod:`~lightning_fusion.app.server` (the Flask app).
"""

from lightning_fusion.app.server import create_app

__all__ = ["create_app"]
