"""Uploaded files of one patient → the model's input arrays, through the model's own loading and preprocessing.

Each modality's kind reads its files (``read_upload`` in :mod:`lightning_fusion.data.kinds`): images
go through :class:`~lightning_fusion.data.modalities.ImageStackModality` (the reader's crop,
conversion and resizing), tables through the fitted tabular preprocessing, signals through the fitted
signal normalisation: the arrays are what :func:`~lightning_fusion.data.datamodule.modality_arrays`
gives for a patient of a dataset folder. Every bad upload is an :class:`UploadError` whose message
names the modality or the uploaded file (never a server path). Files are written only under the
caller's ``folder`` (a temporary folder), with sanitised names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np
from werkzeug.utils import secure_filename

from lightning_fusion.data.kinds import kind_of
from lightning_fusion.data.kinds.image import view_order
from lightning_fusion.data.kinds.signal import read_signal
from lightning_fusion.data.kinds.upload import PATIENT, ModalityInput
from lightning_fusion.data.kinds.vector import read_table_row
from lightning_fusion.errors import DataError, UploadError
from lightning_fusion.predict.trained_model import TrainedModel


class UploadedFile(Protocol):
    """What is needed of an uploaded file (werkzeug's ``FileStorage`` is one)."""

    filename: str | None

    def save(self, dst: str) -> None: ...


@dataclass
class PatientInputs:
    """The model's inputs for one patient, and what was noticed while reading the files."""

    arrays: dict[str, np.ndarray]  # modality → (1, ...) as modality_arrays gives them
    notes: list[str] = field(default_factory=list)
    patient_id: str | None = None  # from the table's id column, when it has one
    present: dict[str, np.ndarray] = field(default_factory=dict)  # modality → (1,) bool, when one was not given


def display_name(filename: str | None) -> str:
    """The uploaded file's own name, without any folders a client sent (shown, never used as a path)."""
    return PurePosixPath((filename or "").replace("\\", "/")).name


def read_patient(
    model: TrainedModel, inputs: Sequence[ModalityInput], files: Mapping[str, Sequence[UploadedFile]], folder: Path
) -> PatientInputs:
    """Check, save (under ``folder``) and read one patient's uploads; :class:`UploadError` if any is unusable."""
    chosen = {item.name: [f for f in files.get(item.name, []) if display_name(f.filename)] for item in inputs}
    missing = [item for item in inputs if not chosen[item.name]]
    optional = model.config.data.keep_missing_modalities and len(inputs) > 1  # the fusion masks absent ones
    if missing and (not optional or len(missing) == len(inputs)):
        raise UploadError("missing upload for " + "; ".join(_describe(item) for item in missing))
    patient = PatientInputs({})
    for item in missing:  # a masking model: a zero placeholder, marked absent (as in training)
        patient.arrays[item.name] = np.zeros((1, *model.input_shape(item.name)), dtype=model.input_dtype(item.name))
        patient.present = {i.name: np.array([i not in missing]) for i in inputs}
        patient.notes.append(f"{item.name}: not given; the model predicts without it (trained to)")
    for position, item in enumerate(inputs):
        if item in missing:
            continue
        uploads = chosen[item.name]
        names = [display_name(f.filename) for f in uploads]
        if len(uploads) != item.count:
            raise UploadError(f"{item.name}: expected {item.count_text}; got {len(uploads)} ({', '.join(names)})")
        for name in names:
            if PurePosixPath(name.lower()).suffix not in item.suffixes:
                raise UploadError(
                    f"{item.name}: {name!r} is not an accepted {item.kind_label} file; "
                    f"expected {', '.join(item.suffixes)}"
                )
        saved = _save(uploads, names, folder / f"m{position}")
        reading = kind_of(item).read_upload(item, saved, names, folder, model.preprocessors.get(item.name))
        patient.arrays[item.name] = reading.array
        patient.notes += reading.notes
        if reading.patient_id and patient.patient_id is None:
            patient.patient_id = reading.patient_id
    try:
        model.check_arrays(patient.arrays)
    except DataError as err:
        raise UploadError(str(err)) from None
    return patient


def _describe(item: ModalityInput) -> str:
    what = item.count_text if item.name == item.kind_label else f"{item.kind_label}, {item.count_text}"
    return f"{item.name} ({what})"


def _save(uploads: Sequence[UploadedFile], names: Sequence[str], folder: Path) -> list[Path]:
    """Each upload as ``<folder>/<position>-<sanitised name>``: names cannot clash or leave the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for position, (upload, name) in enumerate(zip(uploads, names)):
        suffix = PurePosixPath(name.lower()).suffix  # one of the accepted suffixes: checked before
        stem = secure_filename(PurePosixPath(name).stem) or "upload"
        path = folder / f"{position}-{stem}{suffix}"
        upload.save(str(path))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# A patient folder on disk (predict --patient)
# --------------------------------------------------------------------------------------------------
@dataclass
class LocalFile:
    """A file on disk that reads like an upload."""

    path: Path

    @property
    def filename(self) -> str:
        return self.path.name

    def save(self, dst: str) -> None:
        Path(dst).write_bytes(self.path.read_bytes())


def assign_folder_files(inputs: Sequence[ModalityInput], folder: Path) -> tuple[dict[str, list[LocalFile]], list[str]]:
    """The files of one patient's folder per modality, and the names of the files left out.

    A file whose name starts with a modality's name (``tabular.csv``, ``signal.npy``) belongs to it;
    any other goes by file type when exactly one modality (not already given a named file) accepts that
    type. A file two modalities could take (a ``.csv`` beside a table and a signal) is an error asking
    for the prefix. Counts are checked afterwards, as for an upload.
    """
    if not folder.is_dir():
        raise UploadError(f"{folder}: no such patient folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    chosen: dict[str, list[Path]] = {item.name: [] for item in inputs}
    free = []
    for path in files:
        named = [
            i
            for i in inputs
            if path.name.casefold().startswith(i.name.casefold()) and path.suffix.lower() in i.suffixes
        ]
        if named:
            chosen[named[0].name].append(path)
        else:
            free.append(path)
    named_modalities = {name for name, paths in chosen.items() if paths}
    left_out = []
    for path in free:
        takers = [i for i in inputs if path.suffix.lower() in i.suffixes and i.name not in named_modalities]
        if len(takers) > 1:
            names = " or ".join(f"{t.name}{path.suffix.lower()}" for t in takers)
            raise UploadError(
                f"{folder}: {path.name!r} could be {' or '.join(t.name for t in takers)}; name it {names}"
            )
        if takers:
            chosen[takers[0].name].append(path)
        else:
            left_out.append(path.name)
    return {name: [LocalFile(p) for p in paths] for name, paths in chosen.items()}, left_out


def read_patient_folder(model: TrainedModel, inputs: Sequence[ModalityInput], folder: Path) -> PatientInputs:
    """One patient's files in ``folder`` → model inputs, with the web page's checks and messages."""
    import tempfile

    files, left_out = assign_folder_files(inputs, folder)
    with tempfile.TemporaryDirectory(prefix="lf-patient-") as work:
        patient = read_patient(model, inputs, files, Path(work))
    if left_out:
        patient.notes.append(f"not used: {', '.join(left_out)}")
    return patient


# The per-kind file readers live with their kinds; these names are kept importable from here.
__all__ = [
    "PATIENT",
    "LocalFile",
    "PatientInputs",
    "UploadedFile",
    "assign_folder_files",
    "display_name",
    "read_patient",
    "read_patient_folder",
    "read_signal",
    "read_table_row",
    "view_order",
]
