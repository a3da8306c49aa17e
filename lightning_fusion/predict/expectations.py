"""What a trained model needs from one patient's upload: one :class:`ModalityInput` per modality.

Derived from the model alone (its modality specs, fitted preprocessing and the options of the reader
it was trained through), so the form, the upload checks and the Grad-CAM captions agree. Each kind
describes its own upload (``describe_upload`` in :mod:`lightning_fusion.data.kinds`):

* ``image`` — ``C / channels_per_view`` image files (views), stacked in view order. Channels per view
  are the reader's ``channels_per_view`` (or ``channels``) option when it divides C, else 3 when C is
  a multiple of 3, else 1. View names come from the reader (MPI ``views``, the CT/CXR/cough folders of
  an early-fusion ``stack``). The reader's ``crop`` is applied. Readers that turn recordings into
  spectrogram images (``spectrogram`` option) also accept the recordings.
* ``vector`` — a table (CSV or .xlsx) with one row holding the fitted preprocessing's input columns.
* ``signal`` — a ``(leads, samples)`` array as ``.npy``, or a CSV with one row per lead.
"""

from __future__ import annotations

from typing import Any

from lightning_fusion.data.kinds import KINDS
from lightning_fusion.data.kinds.upload import ModalityInput
from lightning_fusion.predict.trained_model import TrainedModel


def reader_options(model: TrainedModel) -> Any:
    """The typed options of the reader the model was trained through (``None`` if they cannot be built)."""
    try:
        return model.config.data.reader.create().options
    except Exception:  # an unknown or changed reader: describe the uploads from the specs alone
        return None


def model_inputs(model: TrainedModel) -> list[ModalityInput]:
    """One :class:`ModalityInput` per modality of the model, in the model's modality order (the kind describes it)."""
    options = reader_options(model)
    inputs = []
    for modality in model.modalities:
        spec = model.specs[modality]
        kind, shape = spec["kind"], tuple(int(n) for n in spec["shape"])
        if kind not in KINDS:
            raise ValueError(f"modality {modality!r} of kind {kind!r}: no upload for it")
        inputs.append(KINDS.get(kind).describe_upload(model, modality, shape, options))
    return inputs


__all__ = ["ModalityInput", "model_inputs", "reader_options"]
