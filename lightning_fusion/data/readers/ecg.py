"""ECG multimodal study: a lead image, the digitised single-lead signal and clinical data per recording.

Layout (one folder per recording index; tables keyed by the same index)::

    <root>/images/1/lead_II.jpg       # lead image(s) of recording 1 (e.g. a 2500×250 strip), RGB or grayscale
    <root>/images/2/lead_II.jpg
    <root>/ecg_signals.csv            # index,0,1,...,499   one row per index, one column per time point
    <root>/clinical.xlsx              # IDX, age, sex, systolic_bp, diastolic_bp, diabetes, ...
    <root>/labels.xlsx                # index, label        label ∈ normal / abnormal / borderline

Modalities: ``image`` (the files of ``images/<index>/``, sorted by name and stacked as channels;
grayscale and RGB exports are both converted to ``channels_per_view``), ``signal`` (one lead, the
CSV row) and ``tabular`` (the clinical table). Rules:

* **Indices.** Joins are on the normalised index (:func:`~lightning_fusion.data.cohort.normalise_patient_id`);
  a purely numeric index is compared as a number, so folder ``007``, cell ``7`` and ``7.0`` are one
  recording. An index present in some modalities but not all is kept in each modality and reported by
  the datamodule's join (``no image``, ``no label``, ...). A duplicate index in any table or folder
  name is a :class:`~lightning_fusion.data.cohort.DataError` naming the file and the ids.
* **Images.** Every index folder must hold exactly ``images_per_record`` image files; a folder with
  another number is excluded and reported (``Cohort.excluded``), never silently trimmed.
* **Signals.** The index column is ``signal_index_column``; when the CSV has no column of that name and
  its first header cell is empty (``pandas.DataFrame.to_csv`` with an unnamed index writes that), the
  first column is the index. Every other column is a time point, in file order. A short row (empty
  cells), a long row or a non-numeric cell is a ``DataError`` naming the index.
* **Clinical.** Feature columns must be numeric. Text columns listed in ``text_codes`` (column name
  matched case-insensitively) are mapped to numbers, values matched case-insensitively after strip;
  by default ``sex``: ``M``/``male`` → 1, ``F``/``female`` → 0 (a 0/1 ``sex`` column is used as is). A
  value outside the mapping, or any other non-numeric column, is a ``DataError`` naming the column.
* **Labels.** ``label_column`` of ``labels_file``, matched to ``classes`` case-insensitively after
  strip; an unknown or empty label is a ``DataError`` naming the index and the label. Borderline
  recordings are kept: an experiment drops them with ``data.exclude_labels: [borderline]``.

:mod:`lightning_fusion.demo.ecg` writes a synthetic dataset in this layout.
"""

from __future__ import annotations

import csv
import itertools
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lightning_fusion.data.cohort import Cohort, normalise_ids
from lightning_fusion.data.modalities import ImageStackModality, SignalModality, TableModality
from lightning_fusion.data.readers.base import FolderReader
from lightning_fusion.data.readers.mpi import IMAGE_SUFFIXES
from lightning_fusion.data.readers.registry import READERS
from lightning_fusion.errors import DataError
from lightning_fusion.registry import suggest

log = logging.getLogger(__name__)

_UNNAMED_FIRST_COLUMN = "Unnamed: 0"  # pandas' name for an empty first header cell


@dataclass
class ECGReaderConfig:
    """Options of the ECG layout (file names are relative to ``data.root``; null leaves a modality out)."""

    classes: list[str] = field(default_factory=lambda: ["normal", "abnormal", "borderline"])
    images_dir: str | None = "images"
    images_per_record: int = 1
    channels_per_view: int = 3
    crop: list[int] | None = None  # (top, bottom, left, right) pixels removed from each image
    signals_file: str | None = "ecg_signals.csv"
    signal_index_column: str = "index"
    clinical_file: str | None = "clinical.xlsx"  # .xlsx or .csv
    clinical_id_column: str = "IDX"
    text_codes: dict[str, dict[str, float]] = field(
        default_factory=lambda: {"sex": {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}}
    )
    labels_file: str = "labels.xlsx"  # .xlsx or .csv
    label_id_column: str = "index"
    label_column: str = "label"

    def __post_init__(self) -> None:
        if not self.classes or len({c.casefold() for c in self.classes}) != len(self.classes):
            raise ValueError(f"classes must be distinct names (case-insensitively), got {self.classes}")
        if self.images_per_record < 1:
            raise ValueError(f"images_per_record must be >= 1, got {self.images_per_record}")
        if self.channels_per_view not in (1, 3):
            raise ValueError(f"channels_per_view must be 1 or 3, got {self.channels_per_view}")
        if self.crop is not None and (len(self.crop) != 4 or min(self.crop) < 0):
            raise ValueError(f"crop must be 4 non-negative pixel counts (top, bottom, left, right), got {self.crop}")
        if not (self.images_dir or self.signals_file or self.clinical_file):
            raise ValueError("images_dir, signals_file and clinical_file are all null: no modality to read")


@READERS.register("ecg", config=ECGReaderConfig)
class ECGReader(FolderReader):
    """Reads the ECG layout into a cohort with ``image``, ``signal`` and ``tabular`` modalities."""

    holds = "images/, ecg_signals.csv, ..."

    options: ECGReaderConfig

    def read(self, root: Path | None) -> Cohort:
        options = self.options
        root = self.root_folder(root)
        paths = {
            "images": root / options.images_dir if options.images_dir else None,
            "signals": root / options.signals_file if options.signals_file else None,
            "clinical": root / options.clinical_file if options.clinical_file else None,
            "labels": root / options.labels_file,
        }
        missing = [str(path) for path in paths.values() if path is not None and not path.exists()]
        if missing:
            raise DataError(f"ECG dataset {root}: not found: {', '.join(missing)}")

        labels = _read_labels(paths["labels"], options.label_id_column, options.label_column, options.classes)
        modalities: dict[str, Any] = {}
        excluded: dict[str, list[str]] = {}
        excluded_modality: dict[str, str] = {}
        if paths["images"] is not None:
            files, wrong_count = _scan_images(paths["images"], options.images_per_record)
            modalities["image"] = ImageStackModality(files, options.channels_per_view, options.crop, convert=True)
            if wrong_count:
                reason = f"image folder without exactly {options.images_per_record} image file(s)"
                excluded[reason] = wrong_count
                excluded_modality[reason] = "image"
        if paths["signals"] is not None:
            modalities["signal"] = _read_signals(paths["signals"], options.signal_index_column)
        if paths["clinical"] is not None:
            modalities["tabular"] = _read_clinical(paths["clinical"], options.clinical_id_column, options.text_codes)
        cohort = Cohort(
            name=self.name,
            classes=list(options.classes),
            labels=labels,
            modalities=modalities,
            excluded=excluded,
            excluded_modality=excluded_modality,
        )
        cohort.check_labels()
        return cohort


def index_key(raw: Any) -> Any:
    """A purely numeric index as a number (``"007"`` → ``"7"``); anything else unchanged."""
    if isinstance(raw, str) and raw.strip().isdigit():
        return str(int(raw.strip()))
    return raw


def _ids(raw_ids: Iterable[Any], source: str) -> list[str]:
    return normalise_ids([index_key(raw) for raw in raw_ids], source)


def _read_table(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_excel(path) if path.suffix.lower() in (".xlsx", ".xls") else pd.read_csv(path)
    except Exception as err:  # pandas/openpyxl raise many parser errors; all mean "cannot read this file"
        raise DataError(f"cannot read {what} {path}: {err}") from err


def _require_column(frame: pd.DataFrame, column: str, path: Path, what: str) -> None:
    if column not in frame.columns:
        raise DataError(f"{path}: " + suggest(column, [str(c) for c in frame.columns], what))


def _read_labels(path: Path, id_column: str, label_column: str, classes: list[str]) -> pd.Series:
    frame = _read_table(path, "labels table")
    _require_column(frame, id_column, path, "index column")
    _require_column(frame, label_column, path, "label column")
    ids = _ids(frame[id_column], f"{path} column {id_column!r}")
    by_text = {c.casefold(): c for c in classes}
    names, unknown = [], []
    for pid, raw in zip(ids, frame[label_column]):
        name = None if pd.isna(raw) else by_text.get(str(raw).strip().casefold())
        names.append(name)
        if name is None:
            unknown.append(f"index {pid}: {'(empty)' if pd.isna(raw) else repr(raw)}")
    if unknown:
        raise DataError(f"{path} column {label_column!r}: unknown label(s) {_listing(unknown)}; classes are {classes}")
    return pd.Series(names, index=ids, name="label", dtype=object)


def _scan_images(folder: Path, per_record: int) -> tuple[dict[str, list[Path]], list[str]]:
    """Image files per index folder (sorted by name), and the indices whose folder holds another count."""
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder of index folders (<index>/*.jpg)")
    record_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not record_dirs:
        raise DataError(f"{folder}: no index folders; expected {folder}/<index>/*.jpg")
    ids = _ids([p.name for p in record_dirs], f"{folder} (index folders)")
    files: dict[str, list[Path]] = {}
    wrong_count: list[str] = []
    for pid, record_dir in zip(ids, record_dirs):
        images = sorted(
            (p for p in record_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
            key=lambda p: p.name,
        )
        if len(images) == per_record:
            files[pid] = images
        else:
            wrong_count.append(pid)
            log.warning(
                "%s holds %d image file(s), expected %d: index %s excluded", record_dir, len(images), per_record, pid
            )
    return files, sorted(wrong_count)


def _read_signals(path: Path, index_column: str) -> SignalModality:
    try:
        frame = pd.read_csv(path)
    except pd.errors.ParserError as err:
        raise DataError(_describe_long_row(path, err)) from None
    except Exception as err:
        raise DataError(f"cannot read signals table {path}: {err}") from err
    column = _signal_index_column(frame, index_column, path)
    ids = _ids(frame.pop(column), f"{path} column {column!r}")
    if frame.shape[1] == 0:
        raise DataError(f"{path}: no time-point columns besides the index column {column!r}")
    values = frame.apply(pd.to_numeric, errors="coerce")
    not_numbers = (values.isna() & frame.notna()).to_numpy()
    if not_numbers.any():
        rows, cols = np.nonzero(not_numbers)
        cells = [f"index {ids[r]} column {frame.columns[c]!r}: {frame.iat[r, c]!r}" for r, c in zip(rows, cols)]
        raise DataError(f"{path}: non-numeric signal value(s): {_listing(cells)}")
    matrix = values.to_numpy(dtype=np.float32)
    missing = ~np.isfinite(matrix)
    if missing.any():
        rows = np.flatnonzero(missing.any(axis=1))
        short = [f"index {ids[r]} ({int(missing[r].sum())} of {matrix.shape[1]} cells empty)" for r in rows]
        raise DataError(
            f"{path}: short row(s) or empty/non-finite cells; every recording needs {matrix.shape[1]} samples: "
            f"{_listing(short)}"
        )
    row_of = {pid: row for row, pid in enumerate(ids)}
    return SignalModality(lambda pid: matrix[row_of[pid]], ids, source=str(path))


def _signal_index_column(frame: pd.DataFrame, wanted: str, path: Path) -> str:
    if wanted in frame.columns:
        return wanted
    first = str(frame.columns[0])
    if first == _UNNAMED_FIRST_COLUMN:
        log.info("%s: no column %r; using the unnamed first column as the index", path, wanted)
        return first
    # Time-point columns are named by numbers; offer only the other names.
    names = [str(c) for c in frame.columns if not re.fullmatch(r"[-+]?\d+(\.\d+)?", str(c))]
    raise DataError(
        f"{path}: " + suggest(wanted, names or [first], "index column") + " (or leave the first header cell empty)"
    )


def _describe_long_row(path: Path, err: Exception) -> str:
    """Turn pandas' "Expected N fields in line L, saw M" into a message naming the recording index."""
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
    if not found:
        return f"cannot read signals table {path}: {err}"
    expected, line_number, saw = (int(g) for g in found.groups())
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        line = next(itertools.islice(handle, line_number - 1, line_number), "")
    first_cell = next(csv.reader([line]), [""])[0]
    return (
        f"{path}: index {index_key(first_cell)!s} (line {line_number}) has {saw} cells, the header has {expected}: "
        "a signal row of the wrong length"
    )


def _read_clinical(path: Path, id_column: str, text_codes: Mapping[str, Mapping[str, float]]) -> TableModality:
    frame = _read_table(path, "clinical table")
    _require_column(frame, id_column, path, "id column")
    frame.index = pd.Index(_ids(frame.pop(id_column), f"{path} column {id_column!r}"), name="patient_id")
    codes = {
        str(name).casefold(): {str(k).strip().casefold(): float(v) for k, v in m.items()}
        for name, m in text_codes.items()
    }
    for column in frame.columns:
        mapping = codes.get(str(column).strip().casefold())
        if mapping is not None and not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = _apply_codes(frame[column], mapping, path)
    bad = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise DataError(
            f"{path}: non-numeric columns {bad}; encode them as numbers, drop them, "
            "or map their text with the reader option text_codes"
        )
    if frame.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides {id_column!r}")
    return TableModality(frame.astype("float64"), source=str(path))


def _apply_codes(column: pd.Series, mapping: Mapping[str, float], path: Path) -> pd.Series:
    """Text values → numbers with ``mapping`` (keys case-folded); empty cells stay missing."""
    coded, unknown = [], []
    for pid, raw in column.items():
        if pd.isna(raw):
            coded.append(np.nan)
            continue
        value = mapping.get(str(raw).strip().casefold())
        if value is None:
            unknown.append(f"index {pid}: {raw!r}")
        coded.append(value)
    if unknown:
        raise DataError(
            f"{path} column {column.name!r}: value(s) outside text_codes[{str(column.name).casefold()!r}] "
            f"{sorted(mapping)}: {_listing(unknown)}"
        )
    return pd.Series(coded, index=column.index, name=column.name, dtype="float64")


def _listing(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` items, comma-separated, with the total when there are more."""
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")
