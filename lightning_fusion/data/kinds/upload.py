"""One patient's upload of one modality: what it must be (:class:`ModalityInput`) and what reading it gave.

Each kind describes its upload (:meth:`~lightning_fusion.data.kinds.base.ModalityKind.describe_upload`)
and reads the saved files (:meth:`~lightning_fusion.data.kinds.base.ModalityKind.read_upload`);
:mod:`lightning_fusion.predict.patient_files` checks counts and suffixes and saves the files first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_fusion.data.kinds.registry import KINDS

PATIENT = "uploaded"  # the patient id of an upload, in the messages of the data loaders (removed from ours)


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
    spectrogram: Any = None  # images: the reader's log-mel parameters, when it accepts recordings

    @property
    def kind_label(self) -> str:
        return KINDS.get(self.kind).label if self.kind in KINDS else self.kind

    @property
    def count_text(self) -> str:
        """The files expected, in words."""
        return KINDS.get(self.kind).count_text(self)

    @property
    def details_title(self) -> str:
        return KINDS.get(self.kind).details_title(self)

    @property
    def details_text(self) -> str:
        return KINDS.get(self.kind).details_separator.join(self.details)

    def public(self) -> dict[str, Any]:
        """What the JSON description of the model says about this upload."""
        described = {"modality": self.name, "kind": self.kind, "files": self.count, "suffixes": list(self.suffixes)}
        described["description"] = self.summary
        return described | KINDS.get(self.kind).public(self)


@dataclass
class UploadReading:
    """One modality's upload as a model input, and what was noticed while reading it."""

    array: np.ndarray  # (1, ...) as the kind's load gives it
    notes: list[str] = field(default_factory=list)
    patient_id: str | None = None  # from a table's id column, when it has one


def clean_message(message: str, paths: Sequence[Path], names: Sequence[str], folder: Path) -> str:
    """A loader's message with the saved paths replaced by the uploaded names, and no patient id prefix."""
    for path, name in zip(paths, names):
        message = message.replace(f"'{path}'", repr(name)).replace(str(path), repr(name))
    message = message.replace(str(folder), "upload")
    return message.removeprefix(f"patient {PATIENT}: ").removeprefix(f"sample {PATIENT}: ")


def number(value: object) -> float | None:
    """``value`` as a float (``nan`` and ``inf`` included), or ``None`` when it is not a number."""
    if isinstance(value, str):
        value = value.strip()
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
