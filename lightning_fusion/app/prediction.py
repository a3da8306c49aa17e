"""One patient's model inputs → class probabilities, a Grad-CAM overlay per view of each image modality, and
what each modality adds to the predicted class (drop-one deltas; Shapley values for a fusion that masks).

The heat maps explain the predicted class (:func:`lightning_fusion.explain.cam.grad_cam`; for an ensemble
the mean of its members' maps). Where Grad-CAM
is undefined for the model (a non-CNN backbone, a stacked early-fusion input) or carries no spatial
information (a 1×1 last feature map), the reason is kept as a message instead of an overlay.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from lightning_fusion.data.dataset import collate_arrays
from lightning_fusion.data.kinds import kind_of
from lightning_fusion.explain.cam import view_overlays
from lightning_fusion.predict.expectations import ModalityInput
from lightning_fusion.predict.trained_model import TrainedModel


@dataclass
class CamResult:
    """The Grad-CAM overlays of one image modality (PNG bytes, one per view), or why there are none."""

    modality: str
    view_names: list[str]
    overlays: list[bytes] = field(default_factory=list)
    message: str | None = None


@dataclass
class ModalityShare:
    """What one modality adds to the predicted class's probability (``None``: not defined for it or the model).

    Attributes:
        drop_one: the probability minus the probability without the modality.
        shapley: its exact Shapley value (fusions that mask absent modalities).
        fusion_weight: the fusion's own weight of the modality for this patient, if the fusion has weights.
    """

    modality: str
    drop_one: float | None
    shapley: float | None
    fusion_weight: float | None


@dataclass
class Contributions:
    """The modality shares of one patient and how they were computed."""

    shares: list[ModalityShare]
    method: str  # "mask" (marked absent) or "zeros" (input replaced by zeros)
    shapley_baseline: float | None  # v(no modality): the predicted class's training prior
    shapley_note: str | None  # why there are no Shapley values, when there are none

    @property
    def has_weights(self) -> bool:
        """Whether the fusion gave modality weights (a column of its own on the page)."""
        return any(share.fusion_weight is not None for share in self.shares)


@dataclass
class PatientPrediction:
    """The predicted class, every class's probability, the Grad-CAM results of the image modalities, and
    (several modalities) each modality's contribution."""

    predicted: str
    probabilities: dict[str, float]
    cams: list[CamResult]
    decision: str = ""  # how the class was chosen: a binary model's threshold, else the most probable class
    contributions: Contributions | None = None


def predict_patient(
    model: TrainedModel,
    inputs: Sequence[ModalityInput],
    arrays: dict[str, np.ndarray],
    present: dict[str, np.ndarray] | None = None,
) -> PatientPrediction:
    """Probabilities for the one patient in ``arrays`` and the Grad-CAM of its predicted class.

    ``present`` marks modalities that were not given (a model trained to mask them). Not thread-safe
    (Grad-CAM hooks the model): callers serialise calls on one model.
    """
    probabilities = model.predict_arrays(arrays, present or None)[0]
    predicted = int(model.predicted_indices(probabilities[None])[0])  # at the model's operating point
    kinds = {m: spec["kind"] for m, spec in model.specs.items()}
    batch = collate_arrays(arrays, kinds, present)
    absent = {m for m, flags in (present or {}).items() if not flags[0]}
    cams = []
    for item in inputs:
        if kind_of(item).explanation == "grad_cam":
            cams.append(
                CamResult(item.name, list(item.view_names), message=f"{item.name} was not given")
                if item.name in absent
                else _cam(model, arrays, present, batch, item, predicted)
            )
    return PatientPrediction(
        predicted=model.classes[predicted],
        probabilities={name: float(p) for name, p in zip(model.classes, probabilities)},
        cams=cams,
        decision=_decision(model),
        contributions=_contributions(model, arrays, present, predicted) if len(model.modalities) > 1 else None,
    )


def _contributions(
    model: TrainedModel, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray] | None, target: int
) -> Contributions:
    drops = model.modality_contributions(arrays, present, target)  # an ensemble: the members' mean

    def first(values: dict[str, np.ndarray] | None, modality: str) -> float | None:
        value = float(values[modality][0]) if values is not None else float("nan")
        return value if np.isfinite(value) else None  # NaN: the patient's only modality, nothing left without it

    shares = [
        ModalityShare(m, first(drops.deltas, m), first(drops.shapley, m), first(drops.fusion_weights, m))
        for m in model.modalities
    ]
    baseline = float(drops.shapley_baseline[0]) if drops.shapley_baseline is not None else None
    return Contributions(shares, drops.method, baseline, drops.shapley_skipped)


def _decision(model: TrainedModel) -> str:
    point = model.operating_point
    if point is None:
        return "the most probable class"
    fitted = "chosen on validation patients" if point.fitted_on == "validation" else "fixed"
    return f"{point.positive_class} when its probability is at least {point.threshold:.3f} ({point.method}, {fitted})"


def _cam(
    model: TrainedModel,
    arrays: dict[str, np.ndarray],
    present: dict[str, np.ndarray] | None,
    batch: dict,
    item: ModalityInput,
    target: int,
) -> CamResult:
    result = CamResult(item.name, list(item.view_names))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            maps = model.class_activation_maps(arrays, present, item.name, target)  # an ensemble: the members' mean
        except ValueError as err:
            result.message = f"no Grad-CAM for {item.name}: {err}"
            return result
    notes = [str(w.message) for w in caught if "Grad-CAM" in str(w.message)]
    if notes:
        result.message = "; ".join(dict.fromkeys(notes))
    for overlay in view_overlays(batch[item.name][0], maps[0], views=item.count):
        buffer = io.BytesIO()
        Image.fromarray(overlay).save(buffer, format="PNG")
        result.overlays.append(buffer.getvalue())
    return result
