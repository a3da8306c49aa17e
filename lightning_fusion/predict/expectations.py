"""What a trained model needs from one patient's upload: one :class:`ModalityInput` per modality.

Derived from the model alone (its modality specs, fitted preprocessing and the options of the reader
it was trained through), so the form, the upload checks and the Grad-CAM captions agree:

* ``image`` — ``C / channels_per_view`` image files (views), stacked in view order. Channels per view
  are the reader's ``channels_per_view`` (or ``channels``) option when it divides C, else 3 when C is
  a multiple of 3, else 1. View names come from the reader (MPI ``views``, the CT/CXR/cough folders of
  an early-fusion ``stack``). The reader's ``crop`` is applied. Readers that turn recordings into
  spectrogram images (``spectrogram`` option) also accept the recordings.
* ``vector`` — a table (CSV or .xlsx) with one row holding the fitted preprocessing's input columns.
* ``signal`` — a ``(leads, samples)`` array as ``.npy``, or a CSV with one row per lead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning_fusion.data.audio import AUDIO_SUFFIXES
from lightning_fusion.data.readers.mpi import IMAGE_SUFFIXES
from lightning_fusion.predict.trained_model import TrainedModel

TABLE_SUFFIXES = (".csv", ".xlsx")
SIGNAL_SUFFIXES = (".npy", ".csv")
KIND_LABELS = {"image": "image", "vector": "clinical table", "signal": "signal"}


@dataclass(frozen=True)
class ModalityInput:
    """The upload one modality needs, and how it is described on the form."""

    name: str  # the modality, also the form field name
    kind: str  # image | vector | signal
    suffixes: tuple[str, ...]  # accepted file name endings (lower case, with the dot)
    count: int  # files expected: views for images, 1 otherwise
    summary: str  # one line for the form
    details: tuple[str, ...] = ()  # e.g. the table's column names
    channels_per_view: int = 3  # images
    view_names: tuple[str, ...] = ()  # images: one name per view
    view_patterns: tuple[str, ...] = ()  # images: the reader's file-name globs per view (MPI), for ordering
    crop: tuple[int, ...] | None = None  # images: (top, bottom, left, right)
    image_size: int = 0  # images
    columns: tuple[str, ...] = ()  # tables: the model's input columns
    text_codes: dict[str, dict[str, float]] | None = None  # tables: column → text value → number (ECG reader)
    id_column: str | None = None  # tables: the patient id column, shown when present
    shape: tuple[int, ...] = ()  # signals: (leads, samples); images: (C, H, W)
    leads: tuple[str, ...] = ()  # signals: lead names when known

    @property
    def kind_label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)

    def public(self) -> dict[str, Any]:
        """What the JSON description of the model says about this upload."""
        described = {"modality": self.name, "kind": self.kind, "files": self.count, "suffixes": list(self.suffixes)}
        described["description"] = self.summary
        if self.kind == "image":
            described |= {"views": list(self.view_names), "channels_per_view": self.channels_per_view}
        elif self.kind == "vector":
            described["columns"] = list(self.columns)
        elif self.kind == "signal":
            described |= {"leads": len(self.leads) or self.shape[0], "samples": self.shape[1]}
            if self.leads:
                described["lead_names"] = list(self.leads)
        return described


def reader_options(model: TrainedModel) -> Any:
    """The typed options of the reader the model was trained through (``None`` if they cannot be built)."""
    try:
        return model.config.data.reader.create().options
    except Exception:  # an unknown or changed reader: describe the uploads from the specs alone
        return None


def model_inputs(model: TrainedModel) -> list[ModalityInput]:
    """One :class:`ModalityInput` per modality of the model, in the model's modality order."""
    options = reader_options(model)
    inputs = []
    for modality in model.modalities:
        spec = model.specs[modality]
        kind, shape = spec["kind"], tuple(int(n) for n in spec["shape"])
        if kind == "image":
            inputs.append(_image_input(model, modality, shape, options))
        elif kind == "vector":
            inputs.append(_table_input(model, modality, options))
        elif kind == "signal":
            inputs.append(_signal_input(model, modality, shape))
        else:
            raise ValueError(f"modality {modality!r} of kind {kind!r}: no upload for it")
    return inputs


def channels_per_view(channels: int, options: Any) -> int:
    """1 (grayscale) or 3 (RGB) channels per view of a ``channels``-channel image stack."""
    for attribute in ("channels_per_view", "channels"):
        value = getattr(options, attribute, None)
        if value in (1, 3) and channels % value == 0:
            return value
    return 3 if channels % 3 == 0 else 1


def _image_input(model: TrainedModel, modality: str, shape: tuple[int, ...], options: Any) -> ModalityInput:
    channels, height, width = shape
    per_view = channels_per_view(channels, options)
    views = channels // per_view
    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    configured = list(getattr(options, "views", None) or [])  # MPI: file-name globs, one per view
    folders = dict(getattr(options, "modality_folders", None) or {})  # CT/CXR/cough: modality → folder
    if len(configured) == views:
        names = patterns = tuple(configured)
    elif modality in folders and views == 1:
        names = (folders[modality],)
    elif len(folders) == views:  # the stacked early-fusion modality: the folders' images, in folder order
        names = tuple(folders.values())
    if not names:
        names = tuple(f"view {i + 1}" for i in range(views)) if views > 1 else ("image",)
    suffixes = IMAGE_SUFFIXES + (AUDIO_SUFFIXES if getattr(options, "spectrogram", None) is not None else ())
    crop = tuple(int(n) for n in options.crop) if getattr(options, "crop", None) else None
    colour = "RGB" if per_view == 3 else "grayscale"
    if views > 1:
        summary = f"{views} image files, one per view, in this order: {', '.join(names)}; {colour}"
    else:
        summary = f"1 image file; {colour}"
    summary += f" (other modes are converted); resized to {height}×{width} px"
    if crop:
        summary += f" after cropping {crop} px (top, bottom, left, right)"
    details = [f"file types: {', '.join(IMAGE_SUFFIXES)}"]
    if views > 1 and patterns:
        details.append(
            "select all files at once; files named like the views (as in the training data) are put in view "
            "order, other names are taken in the order sent"
        )
    elif views > 1:
        details.append("select all files at once; they are taken in the order sent")
    if suffixes != IMAGE_SUFFIXES:
        details.append(f"recordings ({', '.join(AUDIO_SUFFIXES)}) become log-mel spectrogram images, as in training")
    return ModalityInput(
        name=modality,
        kind="image",
        suffixes=suffixes,
        count=views,
        summary=summary,
        details=tuple(details),
        channels_per_view=per_view,
        view_names=names,
        view_patterns=patterns,
        crop=crop,
        image_size=int(model.config.data.image_size),
        shape=shape,
    )


def _table_input(model: TrainedModel, modality: str, options: Any) -> ModalityInput:
    preprocessor = model.preprocessors[modality]
    columns = tuple(str(c) for c in preprocessor.input_columns)
    codes = getattr(options, "text_codes", None)
    id_column = getattr(options, "id_column", None) or getattr(options, "clinical_id_column", None)
    summary = (
        f"a CSV (or .xlsx) table with one row (this patient) and the model's {len(columns)} columns; other columns "
        "are ignored, an empty cell is imputed as in training"
    )
    if codes:
        summary += "; text values allowed for " + ", ".join(f"{c} ({'/'.join(m)})" for c, m in codes.items())
    return ModalityInput(
        name=modality,
        kind="vector",
        suffixes=TABLE_SUFFIXES,
        count=1,
        summary=summary,
        details=columns,
        columns=columns,
        text_codes={str(c): {str(k): float(v) for k, v in m.items()} for c, m in codes.items()} if codes else None,
        id_column=id_column,
    )


def _signal_input(model: TrainedModel, modality: str, shape: tuple[int, ...]) -> ModalityInput:
    leads, samples = shape
    names = tuple(getattr(model.preprocessors.get(modality), "leads", None) or ())
    summary = (
        f"{leads} lead(s) × {samples} samples: a .npy array of shape ({leads}, {samples}), "
        f"or a CSV with one row per lead ({leads} row(s) of {samples} numbers; a header row and a lead-name "
        "column are allowed)"
    )
    return ModalityInput(
        name=modality,
        kind="signal",
        suffixes=SIGNAL_SUFFIXES,
        count=1,
        summary=summary,
        details=(f"leads, in row order: {', '.join(names)}",) if names else (),
        shape=shape,
        leads=names,
    )
