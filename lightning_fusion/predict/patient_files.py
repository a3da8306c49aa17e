"""Uploaded files of one patient → the model's input arrays, through the model's own loading and preprocessing.

Images go through :class:`~lightning_fusion.data.modalities.ImageStackModality` (the reader's crop,
conversion and resizing), tables through the fitted tabular preprocessing, signals through the fitted
signal normalisation: the arrays are what :func:`~lightning_fusion.data.datamodule.modality_arrays`
gives for a patient of a dataset folder. Every bad upload is an :class:`UploadError` whose message
names the modality or the uploaded file (never a server path). Files are written only under the
caller's ``folder`` (a temporary folder), with sanitised names.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np
import pandas as pd
from werkzeug.utils import secure_filename

from lightning_fusion.data.audio import AUDIO_SUFFIXES, cached_log_mel_png
from lightning_fusion.data.modalities import ImageStackModality
from lightning_fusion.errors import DataError, UploadError
from lightning_fusion.predict.expectations import ModalityInput, reader_options
from lightning_fusion.predict.trained_model import TrainedModel

PATIENT = "uploaded"  # the patient id of an upload, in the messages of the data loaders (removed from ours)


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
            raise UploadError(f"{item.name}: expected {_count_text(item)}; got {len(uploads)} ({', '.join(names)})")
        for name in names:
            if PurePosixPath(name.lower()).suffix not in item.suffixes:
                raise UploadError(
                    f"{item.name}: {name!r} is not an accepted {item.kind_label} file; "
                    f"expected {', '.join(item.suffixes)}"
                )
        saved = _save(uploads, names, folder / f"m{position}")
        if item.kind == "image":
            patient.arrays[item.name] = _read_images(model, item, saved, names, folder, patient.notes)
        elif item.kind == "vector":
            patient.arrays[item.name] = _read_table(model, item, saved[0], names[0], patient)
        elif item.kind == "signal":
            try:
                signal = read_signal(saved[0], names[0], item.shape)
            except UploadError as err:
                raise UploadError(f"{item.name}: {err}") from None
            patient.arrays[item.name] = model.preprocessors[item.name].transform(signal[None])
    try:
        model.check_arrays(patient.arrays)
    except DataError as err:
        raise UploadError(str(err)) from None
    return patient


def _count_text(item: ModalityInput) -> str:
    if item.kind == "image":
        return f"{item.count} image files: {', '.join(item.view_names)}" if item.count > 1 else "1 image file"
    return f"1 {' or '.join(item.suffixes)} file"


def _describe(item: ModalityInput) -> str:
    what = _count_text(item) if item.name == item.kind_label else f"{item.kind_label}, {_count_text(item)}"
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


def _clean(message: str, paths: Sequence[Path], names: Sequence[str], folder: Path) -> str:
    """A loader's message with the saved paths replaced by the uploaded names, and no patient id prefix."""
    for path, name in zip(paths, names):
        message = message.replace(f"'{path}'", repr(name)).replace(str(path), repr(name))
    message = message.replace(str(folder), "upload")
    return message.removeprefix(f"patient {PATIENT}: ").removeprefix(f"sample {PATIENT}: ")


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def view_order(item: ModalityInput, names: Sequence[str]) -> list[int] | None:
    """Positions of the uploads in view order when each view's file-name pattern matches exactly one name."""
    if not item.view_patterns or len(names) != len(item.view_patterns):
        return None
    stems = [PurePosixPath(name).stem.casefold() for name in names]
    order = []
    for pattern in item.view_patterns:
        hits = [i for i, stem in enumerate(stems) if fnmatch.fnmatch(stem, pattern.casefold())]
        if len(hits) != 1:
            return None
        order.append(hits[0])
    return order if len(set(order)) == len(order) else None


def _read_images(
    model: TrainedModel,
    item: ModalityInput,
    paths: list[Path],
    names: list[str],
    folder: Path,
    notes: list[str],
) -> np.ndarray:
    if item.count > 1:
        order = view_order(item, names)
        if order is not None:
            paths, names = [paths[i] for i in order], [names[i] for i in order]
            notes.append(f"{item.name}: views matched by file name: " + ", ".join(names))
        else:
            notes.append(
                f"{item.name}: views taken in the order sent: "
                + ", ".join(f"{view} = {name}" for view, name in zip(item.view_names, names))
            )
    images = []
    for path, name in zip(paths, names):
        if path.suffix in AUDIO_SUFFIXES:  # a recording: its log-mel image, written beside it
            try:
                params = reader_options(model).spectrogram
                images.append(cached_log_mel_png(path, params, cache_dir=path.parent / "spectrograms"))
            except DataError as err:
                raise UploadError(f"{item.name}: {_clean(str(err), paths, names, folder)}") from None
            notes.append(f"{item.name}: {name} converted to a log-mel spectrogram image")
        else:
            images.append(path)
    stack = ImageStackModality({PATIENT: images}, item.channels_per_view, item.crop, convert=True)
    try:
        return stack.load_many([PATIENT], item.image_size)
    except DataError as err:
        shown = [*names, *names]  # the spectrogram PNGs stand for their recordings
        raise UploadError(f"{item.name}: {_clean(str(err), [*paths, *images], shown, folder)}") from None


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------
def read_table_row(path: Path, name: str, item: ModalityInput) -> tuple[pd.DataFrame, list[str], str | None]:
    """The one row of the model's columns as numbers, the columns left empty, and the patient id if given."""
    try:
        frame = pd.read_excel(path) if path.suffix == ".xlsx" else pd.read_csv(path)
    except Exception as err:  # pandas has many parser errors; all mean "not a table we can read"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UploadError(f"{item.name}: cannot read {name!r} as a table: {first}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    repeated = sorted({c for c in item.columns if list(frame.columns).count(c) > 1})
    if repeated:
        raise UploadError(f"{item.name}: {name!r} has the column(s) {repeated} more than once")
    if len(frame) != 1:
        raise UploadError(f"{item.name}: {name!r} must hold exactly one row (this patient), found {len(frame)}")
    missing = [c for c in item.columns if c not in frame.columns]
    if missing:
        hints = []
        for column in missing[:5]:
            close = difflib.get_close_matches(column, list(frame.columns), n=1, cutoff=0.6)
            if close:
                hints.append(f"{close[0]!r} for {column!r}?")
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise UploadError(
            f"{item.name}: {name!r} has no column {shown} (the model needs {len(item.columns)} columns)"
            + (f"; did you mean {' '.join(hints)}" if hints else "")
        )
    codes = {c.casefold(): m for c, m in (item.text_codes or {}).items()}
    values: dict[str, float] = {}
    empty = []
    for column in item.columns:
        raw = frame.at[frame.index[0], column]
        if pd.isna(raw) or (isinstance(raw, str) and not raw.strip()):
            values[column] = np.nan
            empty.append(column)
            continue
        mapping = codes.get(column.casefold())
        if isinstance(raw, str) and mapping is not None:
            key = raw.strip().casefold()
            if key not in {k.casefold() for k in mapping}:
                raise UploadError(
                    f"{item.name}: column {column!r} has the value {raw!r}; expected a number or one of {list(mapping)}"
                )
            values[column] = float({k.casefold(): v for k, v in mapping.items()}[key])
            continue
        number = _number(raw)
        if number is None:
            raise UploadError(f"{item.name}: column {column!r} has the non-numeric value {raw!r}; expected a number")
        if not np.isfinite(number):
            shown = repr(raw) if isinstance(raw, str) else str(raw)
            raise UploadError(f"{item.name}: column {column!r} has the value {shown}; expected a finite number")
        values[column] = float(number)
    patient_id = None
    if item.id_column and item.id_column in frame.columns and pd.notna(frame.at[frame.index[0], item.id_column]):
        patient_id = str(frame.at[frame.index[0], item.id_column]).strip() or None
    return pd.DataFrame([values], columns=list(item.columns), dtype="float64"), empty, patient_id


def _read_table(model: TrainedModel, item: ModalityInput, path: Path, name: str, patient: PatientInputs) -> np.ndarray:
    row, empty, patient_id = read_table_row(path, name, item)
    if empty:
        patient.notes.append(f"{item.name}: empty, imputed as in training: {', '.join(empty)}")
    if patient_id and patient.patient_id is None:
        patient.patient_id = patient_id
    try:
        return model.preprocessors[item.name].transform(row, source=name)
    except DataError as err:
        raise UploadError(f"{item.name}: {err}") from None


# --------------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------------
def read_signal(path: Path, name: str, shape: Sequence[int]) -> np.ndarray:
    """A ``(leads, samples)`` ``float32`` signal of exactly ``shape`` from a ``.npy`` or ``.csv`` file."""
    shape = tuple(int(n) for n in shape)
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise UploadError(f"{name!r}: not a readable .npy array: {err}") from None
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
            raise UploadError(f"{name!r}: expected a numeric array, got {getattr(array, 'dtype', type(array))}")
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2:
            raise UploadError(
                f"{name!r}: expected a (leads, samples) array of shape {shape}, got {array.ndim} dimensions "
                f"{array.shape}"
            )
    else:
        array = _csv_signal(path, name, shape)
    if array.shape != shape:
        hint = "; it looks transposed: one row per lead" if array.shape == shape[::-1] else ""
        raise UploadError(
            f"{name!r}: {array.shape[0]} lead(s) × {array.shape[1]} samples; the model needs {shape[0]} lead(s) × "
            f"{shape[1]} samples{hint}"
        )
    bad = ~np.isfinite(array.astype(np.float64))
    if bad.any():
        lead, sample = (int(i) for i in np.argwhere(bad)[0])
        raise UploadError(
            f"{name!r}: {int(bad.sum())} missing or non-finite value(s), first at lead {lead}, sample {sample}"
        )
    return array.astype(np.float32)


def _csv_signal(path: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """One row per lead; a header row and a first column of lead names or indices are dropped when they hold text.

    Of the readings with and without them, the first whose numbers have the expected shape is used.
    """
    try:
        cells = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, skip_blank_lines=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UploadError(f"{name!r}: cannot read it as a CSV of one row per lead: {first}") from None
    text = [[str(cell).strip() for cell in row] for row in cells.fillna("").to_numpy(dtype=object)]
    parsed = [[_number(cell) for cell in row] for row in text]
    numbers = np.array([[np.nan if v is None else v for v in row] for row in parsed], dtype=np.float64)
    words = np.array([[v is None and cell != "" for v, cell in zip(*pair)] for pair in zip(parsed, text)], dtype=bool)
    numbers, words = numbers.reshape(cells.shape), words.reshape(cells.shape)
    if not words.size:
        raise UploadError(f"{name!r}: the CSV holds no values")
    has_header, has_labels = bool(words[0].any()), bool(words[:, 0].any())
    for header, labels in ((0, 0), (0, 1), (1, 0), (1, 1)):
        if (header and not has_header) or (labels and not has_labels):
            continue
        block = numbers[header:, labels:]
        if block.shape == shape and np.isfinite(block).all():
            return block
    header = int(has_header and (words[0, 1:].any() or not words[1:, 0].any()))
    labels = int(bool(words[header:, 0].any()) or bool(header and words[0, 0]))
    block = numbers[header:, labels:]
    if block.shape == shape:  # the right size, but a cell that is not a number
        row, column = (int(i) for i in np.argwhere(~np.isfinite(block))[0])
        value = text[row + header][column + labels]
        raise UploadError(
            f"{name!r}: lead {row}, sample {column}: {value!r} is not a number"
            if value
            else f"{name!r}: lead {row}, sample {column} is empty"
        )
    return block


def _number(value: object) -> float | None:
    """``value`` as a float (``nan`` and ``inf`` included), or ``None`` when it is not a number."""
    if isinstance(value, str):
        value = value.strip()
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


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
