"""The one HTML page: the upload form generated from the model, and the result or the error above it.

Self-contained (inline CSS, no scripts, images as ``data:`` URIs). Element ids for tests and scripts:
``input-<modality>`` (file inputs), ``predict`` (the form), ``error``, ``result``, ``predicted-class``,
``prob-<i>`` (one table row per class, ``data-class`` = its name), ``cam-<modality>-<view>`` (overlay
images, views counted from 1), ``cam-message-<modality>``, and with several modalities ``contributions``
(the table) with a row ``contrib-<modality>`` each (cells ``drop-one``, ``shapley``, ``weight``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from typing import Any

from jinja2 import Environment

from lightning_fusion.app.prediction import PatientPrediction
from lightning_fusion.predict.expectations import ModalityInput

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 1.6rem; }
code { background: #f3f3f3; padding: 0 .25rem; } .muted { color: #666; font-size: .9rem; }
.class { display: inline-block; background: #eef; border-radius: .3rem; padding: 0 .4rem; margin: 0 .15rem; }
.error { background: #fdecea; border: 1px solid #e0a39b; padding: .6rem .8rem; border-radius: .3rem; }
.warning { background: #fff7e0; border: 1px solid #e6cf8b; padding: .4rem .7rem; border-radius: .3rem; }
fieldset { border: 1px solid #ccc; border-radius: .4rem; margin: .8rem 0; }
legend { font-weight: 600; } label { display: block; margin-bottom: .3rem; }
details { margin-top: .3rem; font-size: .9rem; color: #444; }
table { border-collapse: collapse; } td, th { padding: .2rem .7rem .2rem 0; text-align: left; }
tr.top td { font-weight: 600; } .bar { display: inline-block; height: .8rem; background: #4a7bd0; }
.views { display: flex; flex-wrap: wrap; gap: .8rem; } figure { margin: 0; }
.views img { width: 200px; height: auto; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: .85rem; color: #555; } button { font-size: 1rem; padding: .35rem 1.2rem; }
</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<p>Model <code>{{ model_name }}</code>: {{ modalities | join(" + ") }} &rarr;
{% for name in classes %}<span class="class">{{ name }}</span>{% endfor %}</p>
<p class="muted">Research software: the prediction of a trained model, not a diagnosis.</p>
</header>
<main>
{% if error %}<p id="error" class="error" role="alert">{{ error }}</p>{% endif %}
{% if result %}
<section id="result">
<h2>Prediction{% if patient_id %} for <span id="patient-id">{{ patient_id }}</span>{% endif %}</h2>
<p id="predicted">Predicted class: <strong id="predicted-class">{{ result.predicted }}</strong>
({{ "%.1f" | format(100 * result.probabilities[result.predicted]) }} %)</p>
<p id="decision" class="muted">Decision: {{ result.decision }}</p>
<table id="probabilities">
<tr><th>class</th><th>probability</th><th></th></tr>
{% for name, p in result.probabilities.items() %}
<tr id="prob-{{ loop.index0 }}" data-class="{{ name }}"{% if name == result.predicted %} class="top"{% endif %}>
<td>{{ name }}</td><td class="p">{{ "%.4f" | format(p) }}</td>
<td><span class="bar" style="width: {{ (240 * p) | round | int }}px"></span></td></tr>
{% endfor %}
</table>
{% if result.contributions %}{% set c = result.contributions %}
<h2>Modality contributions <span class="muted">(to P({{ result.predicted }}))</span></h2>
<table id="contributions">
<tr><th>modality</th><th>without it</th><th>Shapley value</th>
{% if c.has_weights %}<th>fusion weight</th>{% endif %}</tr>
{% for share in c.shares %}
<tr id="contrib-{{ share.modality | dom_id }}"><td>{{ share.modality }}</td>
<td class="drop-one">{{ share.drop_one | signed }}</td><td class="shapley">{{ share.shapley | signed }}</td>
{% if c.has_weights %}<td class="weight">
{{ "n/a" if share.fusion_weight is none else "%.3f" | format(share.fusion_weight) }}</td>{% endif %}</tr>
{% endfor %}
</table>
<p class="muted">Without it: the probability minus the probability with the modality
{{ "marked absent" if c.method == "mask" else "replaced by zeros" }} (n/a: nothing would be left).
{% if c.shapley_baseline is not none %}Shapley value: the modality's share of the move from the class's training
prior {{ "%.3f" | format(c.shapley_baseline) }} to this probability, over every subset of the modalities (the
shares add up to the difference).{% else %}No Shapley values: {{ c.shapley_note }}.{% endif %}</p>
{% endif %}
{% for cam in result.cams %}
<h2>Grad-CAM: {{ cam.modality }} <span class="muted">(evidence for {{ result.predicted }})</span></h2>
{% if cam.message %}<p id="cam-message-{{ cam.modality | dom_id }}" class="warning">{{ cam.message }}</p>{% endif %}
{% if cam.overlays %}<div class="views">
{% for png in cam.overlays %}
<figure><img id="cam-{{ cam.modality | dom_id }}-{{ loop.index }}" class="overlay"
 alt="Grad-CAM overlay of {{ cam.modality }}, {{ cam.view_names[loop.index0] }}"
 src="data:image/png;base64,{{ png | b64 }}"><figcaption>{{ cam.view_names[loop.index0] }}</figcaption></figure>
{% endfor %}
</div>{% endif %}
{% endfor %}
{% if notes %}<ul id="notes" class="muted">{% for note in notes %}<li>{{ note }}</li>{% endfor %}</ul>{% endif %}
</section>
{% endif %}
<form id="predict" method="post" action="{{ action }}" enctype="multipart/form-data">
<h2>One patient's files</h2>
{% if optional %}<p class="muted">This model was trained to predict without some of its modalities: leave out the ones
the patient does not have (at least one is needed).</p>{% endif %}
{% for item in inputs %}
<fieldset>
<legend>{{ item.name }} ({{ item.kind_label }})</legend>
<label for="input-{{ item.name | dom_id }}">{{ item.summary }}</label>
<input type="file" id="input-{{ item.name | dom_id }}" name="{{ item.name }}" accept="{{ item.suffixes | join(',') }}"
{% if item.count > 1 %} multiple{% endif %}{% if not optional %} required{% endif %}>
{% if item.details %}<details><summary>
{{ item.details_title }}</summary>
<p>{{ item.details_text }}</p></details>{% endif %}
</fieldset>
{% endfor %}
<button id="submit" type="submit">Predict</button>
<p class="muted">At most {{ max_upload_mb }} MB in all. The files are read into memory for this one prediction
and deleted; nothing is kept.</p>
</form>
</main>
</body>
</html>
"""


def dom_id(text: str) -> str:
    """``text`` as a safe element id part (letters, digits, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "x"


_ENVIRONMENT = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_ENVIRONMENT.filters["dom_id"] = dom_id
_ENVIRONMENT.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
_ENVIRONMENT.filters["signed"] = lambda value: "n/a" if value is None else f"{value:+.3f}"
_PAGE = _ENVIRONMENT.from_string(_TEMPLATE)


def render_page(
    *,
    model_name: str,
    modalities: Sequence[str],
    classes: Sequence[str],
    inputs: Sequence[ModalityInput],
    action: str,
    max_upload_mb: float,
    result: PatientPrediction | None = None,
    notes: Sequence[str] = (),
    patient_id: str | None = None,
    error: str | None = None,
    optional: bool = False,
) -> str:
    """The page: the form, and above it the prediction or the error (HTML-escaped)."""
    context: dict[str, Any] = {
        "title": "lightning_fusion: predict one patient",
        "model_name": model_name,
        "modalities": list(modalities),
        "classes": list(classes),
        "inputs": list(inputs),
        "action": action,
        "max_upload_mb": f"{max_upload_mb:g}",
        "result": result,
        "notes": list(notes),
        "patient_id": patient_id,
        "error": error,
        "optional": optional,
    }
    return _PAGE.render(context)
