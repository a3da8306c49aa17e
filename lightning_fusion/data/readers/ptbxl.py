"""PTB-XL (12-lead ECG, PhysioNet): one sample per ECG record, grouped by patient, split by ``strat_fold``.

Layout, exactly as PhysioNet distributes it::

    <root>/ptbxl_database.csv                 # one row per record: ecg_id, patient_id, age, sex, height,
                                              #   weight, scp_codes, strat_fold, filename_lr, filename_hr, ...
    <root>/scp_statements.csv                 # first column: statement code; diagnostic (1 or empty),
                                              #   diagnostic_class (NORM, MI, STTC, HYP, CD), ...
    <root>/records100/00000/00001_lr.hea      # WFDB record, 100 Hz, 10 s, 12 leads (filename_lr)
    <root>/records100/00000/00001_lr.dat
    <root>/records100/01000/01000_lr.{hea,dat}
    <root>/records500/00000/00001_hr.{hea,dat}   # 500 Hz (filename_hr), read with sampling_rate: 500

Samples are records: the sample id is the ``ecg_id`` (``"1"``, ``"2"``, ...) and ``Cohort.groups`` maps
it to the ``patient_id`` (``15709.0`` → ``"15709"``), so a patient's records never cross splits.

Label rule (classes ``normal`` and ``abnormal``). ``scp_codes`` is a Python dict literal of SCP
statement → likelihood (0–100; 0 means unknown). The diagnostic statements are the codes whose
``scp_statements.csv`` row has ``diagnostic == 1``.

* ``normal``: ``NORM`` with likelihood ≥ ``norm_min_likelihood`` (default 100) and no other diagnostic
  statement (the "strictly normal" ECGs);
* ``abnormal``: at least one diagnostic statement other than ``NORM``, at any likelihood (0 included,
  as in the PTB-XL benchmark of Strodthoff et al. 2021), with or without ``NORM``;
* otherwise the record is excluded and reported: no diagnostic statement at all (rhythm or form
  statements only), or ``NORM`` below the threshold and nothing else.

Splits come from ``strat_fold`` (PTB-XL's patient-stratified folds): ``train_folds`` (default 1–8),
``val_folds`` (9), ``test_folds`` (10). Records in none of them are excluded and reported; a
configured fold without any record is a :class:`DataError` that names it and the folds present.

Modalities:

* ``signal`` — the WFDB record read with ``wfdb.rdrecord`` as ``(12, samples)`` ``float32`` millivolts
  (1000 samples at 100 Hz, 5000 at 500 Hz), lead names from the header (``I, II, III, AVR, AVL, AVF,
  V1, ..., V6``). An unreadable record is a :class:`DataError` naming the ``ecg_id`` and the file.
* ``tabular`` — ``age``, ``sex`` (0 male, 1 female), ``height`` (cm), ``weight`` (kg) as floats. Missing
  values stay ``NaN`` for the data module to impute on training records
  (``data.tabular.missing_indicators: true`` adds the missing-value indicators; height is missing for
  ~40 % of PTB-XL). PTB-XL codes ages above 89 as 300 (de-identification); they are read as 90.
* ``image`` (``render_image: true``) — the record drawn as a grayscale ECG printout
  (:mod:`lightning_fusion.data.ecg_render`, layout ``3x4`` or ``12x1``), rendered on first load and
  cached on disk; only the records a data module loads are rendered.

Decoded signals are cached as ``.npy`` under ``$LF_CACHE_DIR/ptbxl_signals`` (``cache_signals``), keyed
by the record files' paths, times and sizes: the 1,549 kept records of the development subset load
in ~12 s through wfdb and ~0.6 s from the cache.

Missing record files are checked up front for the records that pass the label and fold filters:
with ``missing_records: exclude`` (default) they are excluded and reported (a partial download
still trains, and the summary says what is missing); with ``missing_records: error`` the first few
are named in a :class:`DataError`.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import wfdb

from lightning_fusion.data.cache import cache_root, source_key, write_file_atomically
from lightning_fusion.data.cohort import Cohort, normalise_ids, normalise_patient_id
from lightning_fusion.data.ecg_render import ECGImageCache, RenderedECGModality, RenderOptions
from lightning_fusion.data.modalities import SignalModality, TableModality
from lightning_fusion.data.readers.base import FolderReader
from lightning_fusion.data.readers.registry import READERS
from lightning_fusion.errors import DataError
from lightning_fusion.registry import did_you_mean

log = logging.getLogger(__name__)

DATABASE = "ptbxl_database.csv"
STATEMENTS = "scp_statements.csv"
CLASSES = ["normal", "abnormal"]
NORM = "NORM"
TABLE_COLUMNS = ["age", "sex", "height", "weight"]
REQUIRED_COLUMNS = ["ecg_id", "patient_id", *TABLE_COLUMNS, "scp_codes", "strat_fold"]
FILENAME_COLUMN = {100: "filename_lr", 500: "filename_hr"}
AGE_CODE_OVER_89, AGE_OVER_89 = 300.0, 90.0
SIGNAL_CACHE_VERSION = 1
SPLIT_OF_OPTION = {"train_folds": "train", "val_folds": "val", "test_folds": "test"}
MISSING_RECORDS = ("exclude", "error")


@dataclass
class PTBXLReaderConfig:
    """Options of the PTB-XL layout (the defaults are the standard benchmark split)."""

    sampling_rate: int = 100  # 100: records100 (filename_lr); 500: records500 (filename_hr)
    norm_min_likelihood: float = 100.0  # NORM likelihood a "normal" record needs
    train_folds: list[int] = field(default_factory=lambda: list(range(1, 9)))
    val_folds: list[int] = field(default_factory=lambda: [9])
    test_folds: list[int] = field(default_factory=lambda: [10])
    missing_records: str = "exclude"  # exclude (and report) | error
    render_image: bool = False  # add an "image" modality: the ECG drawn as a printout
    image_layout: str = "3x4"  # 3x4 (standard printout) | 12x1 (one row per lead)
    image_width: int = 512
    image_height: int = 384
    cache_signals: bool = True  # keep decoded records as .npy under $LF_CACHE_DIR/ptbxl_signals (wfdb is slow)

    def __post_init__(self) -> None:
        if self.sampling_rate not in FILENAME_COLUMN:
            raise ValueError(f"sampling_rate must be 100 or 500 (Hz), got {self.sampling_rate}")
        if not 0 <= self.norm_min_likelihood <= 100:
            raise ValueError(f"norm_min_likelihood must be in [0, 100], got {self.norm_min_likelihood}")
        owner: dict[int, str] = {}
        for option in SPLIT_OF_OPTION:
            folds = getattr(self, option)
            if not folds:
                raise ValueError(f"{option} must name at least one strat_fold")
            for fold in folds:
                if fold < 1:
                    raise ValueError(f"{option}: strat_fold numbers start at 1, got {fold}")
                if fold in owner and owner[fold] != option:
                    raise ValueError(f"strat_fold {fold} is in both {owner[fold]} and {option}")
                owner[fold] = option
        if self.missing_records not in MISSING_RECORDS:
            raise ValueError(f"missing_records must be one of {MISSING_RECORDS}, got {self.missing_records!r}")
        RenderOptions(self.image_width, self.image_height, self.image_layout)  # same checks as the renderer

    def split_of_fold(self) -> dict[int, str]:
        """strat_fold → ``train``/``val``/``test``."""
        return {fold: split for option, split in SPLIT_OF_OPTION.items() for fold in getattr(self, option)}


def record_label(
    codes: Mapping[str, float], diagnostic: set[str], norm_min_likelihood: float
) -> tuple[str | None, str | None]:
    """``(label, None)`` for a labelled record, ``(None, reason)`` for an excluded one (the module's rule)."""
    statements = {code: likelihood for code, likelihood in codes.items() if code in diagnostic}
    if any(code != NORM for code in statements):
        return "abnormal", None
    if NORM in statements:
        if statements[NORM] >= norm_min_likelihood:
            return "normal", None
        return None, f"NORM likelihood below {norm_min_likelihood:g} and no other diagnostic statement"
    return None, "no diagnostic statement"


@READERS.register("ptbxl", config=PTBXLReaderConfig)
class PTBXLReader(FolderReader):
    """Reads PTB-XL into a cohort of records with ``signal``, ``tabular`` and optionally ``image``."""

    holds = "ptbxl_database.csv"

    options: PTBXLReaderConfig

    def __init__(self, options: PTBXLReaderConfig) -> None:
        super().__init__(options)
        self.records: dict[str, Path] = {}  # sample id → WFDB record path without suffix
        self.leads: list[str] = []

    def read(self, root: Path | None) -> Cohort:
        root = self.root_folder(root)
        if not (root / DATABASE).is_file():
            raise DataError(f"PTB-XL database not found: {root / DATABASE}")
        filename_column = FILENAME_COLUMN[self.options.sampling_rate]
        database = read_database(root / DATABASE, filename_column)
        statements = read_statements(root / STATEMENTS)
        diagnostic = diagnostic_codes(statements, root / STATEMENTS)
        _check_statements(database, set(statements.index), root / DATABASE, root / STATEMENTS)
        self._check_folds(database, root / DATABASE)

        excluded: dict[str, list[str]] = {}
        labels: dict[str, str] = {}
        split_of_fold = self.options.split_of_fold()
        for sample_id, codes, fold in zip(database.index, database["scp_codes"], database["strat_fold"]):
            label, reason = record_label(codes, diagnostic, self.options.norm_min_likelihood)
            if reason is None and fold not in split_of_fold:
                reason = f"strat_fold {fold} not in train_folds/val_folds/test_folds"
            if reason is not None:
                excluded.setdefault(reason, []).append(sample_id)
            else:
                labels[sample_id] = label
        records = {sid: root / database.at[sid, filename_column] for sid in labels}
        missing = {sid: path for sid, path in records.items() if not _record_files_exist(path)}
        if missing:
            self._report_missing(missing, filename_column)
            excluded[f"record file missing ({filename_column})"] = sorted(missing, key=_id_order)
            for sid in missing:
                del labels[sid], records[sid]
        if not labels:
            counts = {reason: len(ids) for reason, ids in excluded.items()}
            raise DataError(f"{root / DATABASE}: no record left after the label, fold and file checks: {counts}")
        self.records = records
        kept = list(labels)
        self.leads = self._header_leads(kept[0])
        modalities: dict[str, Any] = {
            "signal": SignalModality(
                self.load_signal, kept, source=str(root / f"records{self.options.sampling_rate}"), leads=self.leads
            ),
            "tabular": TableModality(database.loc[kept, TABLE_COLUMNS].astype("float64"), source=str(root / DATABASE)),
        }
        if self.options.render_image:
            options = RenderOptions(self.options.image_width, self.options.image_height, self.options.image_layout)
            modalities["image"] = RenderedECGModality(
                {sid: _record_files(records[sid]) for sid in kept},
                self.load_signal,
                self.leads,
                float(self.options.sampling_rate),
                ECGImageCache(options),
            )
        cohort = Cohort(
            name=self.name,
            classes=list(CLASSES),
            labels=pd.Series(labels, name="label", dtype=object),
            modalities=modalities,
            splits=database.loc[kept, "strat_fold"].map(split_of_fold).astype(object).rename("split"),
            excluded={reason: sorted(ids, key=_id_order) for reason, ids in excluded.items()},
            groups=database.loc[kept, "patient"].astype(object).rename("patient_id"),
        )
        cohort.check_labels()
        return cohort

    def load_signal(self, sample_id: str) -> np.ndarray:
        """The record as ``(leads, samples)`` ``float32`` millivolts; a bad file names the ecg_id and path.

        Decoded once with wfdb, then (``cache_signals``) read back from a ``.npy`` keyed by the record
        files' paths, times and sizes: wfdb's header parsing costs ~7 ms a record, the ``.npy`` ~0.1 ms.
        """
        if not self.options.cache_signals:
            return self._read_record(sample_id)
        params = {"sampling_rate": self.options.sampling_rate, "leads": self.leads}
        key = source_key(_record_files(self.records[sample_id]), params, SIGNAL_CACHE_VERSION)
        target = cache_root() / "ptbxl_signals" / key[:2] / f"{key}.npy"
        if target.is_file():
            return np.load(target)
        signal = self._read_record(sample_id)
        write_file_atomically(target, lambda stream: np.save(stream, signal))
        return signal

    def _read_record(self, sample_id: str) -> np.ndarray:
        path = self.records[sample_id]
        try:
            record = wfdb.rdrecord(str(path))
        except Exception as err:  # wfdb raises OSError, ValueError, IndexError, ... for a bad record
            raise DataError(f"ecg_id {sample_id}: cannot read WFDB record {path}: {err}") from None
        if record.fs != self.options.sampling_rate:
            raise DataError(
                f"ecg_id {sample_id}: {path} is sampled at {record.fs} Hz, expected {self.options.sampling_rate} Hz"
            )
        if list(record.sig_name) != self.leads:
            raise DataError(f"ecg_id {sample_id}: {path} has leads {record.sig_name}, expected {self.leads}")
        units = {unit.casefold() for unit in record.units}
        if units != {"mv"}:
            raise DataError(f"ecg_id {sample_id}: {path} has units {sorted(units)}, expected mV")
        return record.p_signal.T.astype(np.float32)

    def _header_leads(self, sample_id: str) -> list[str]:
        path = self.records[sample_id]
        try:
            header = wfdb.rdheader(str(path))
        except Exception as err:  # as in load_signal
            raise DataError(f"ecg_id {sample_id}: cannot read WFDB header {path}.hea: {err}") from None
        return list(header.sig_name)

    def _check_folds(self, database: pd.DataFrame, path: Path) -> None:
        present = sorted(int(fold) for fold in database["strat_fold"].unique())
        configured = self.options.split_of_fold()
        absent = sorted(fold for fold in configured if fold not in present)
        if not absent:
            return
        by_option = {option: [f for f in getattr(self.options, option) if f in absent] for option in SPLIT_OF_OPTION}
        named = ", ".join(f"{option} {folds}" for option, folds in by_option.items() if folds)
        if len(present) >= 3:
            hint = (
                f"e.g. --data.reader.train_folds [{','.join(map(str, present[:-2]))}] "
                f"--data.reader.val_folds [{present[-2]}] --data.reader.test_folds [{present[-1]}]"
            )
        else:
            hint = "the dataset needs at least 3 folds for train, validation and test"
        raise DataError(
            f"{path}: no record has strat_fold {absent} ({named}); the folds present are {present}. "
            f"Set the folds to ones that exist, {hint}"
        )

    def _report_missing(self, missing: Mapping[str, Path], filename_column: str) -> None:
        shown = ", ".join(f"ecg_id {sid}: {path}.hea/.dat" for sid, path in list(missing.items())[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        if self.options.missing_records == "error":
            raise DataError(
                f"{len(missing)} WFDB record file(s) named in {filename_column} are missing: {shown}{more}; "
                "complete the download, or set --data.reader.missing_records exclude to leave them out"
            )
        log.warning("ptbxl: %d record file(s) missing, excluded: %s%s", len(missing), shown, more)


def read_database(path: Path, filename_column: str) -> pd.DataFrame:
    """``ptbxl_database.csv`` indexed by normalised ecg_id, with ``patient`` (normalised patient id),
    parsed ``scp_codes`` dicts, integer ``strat_fold`` and float ``age``/``sex``/``height``/``weight``."""
    try:
        frame = pd.read_csv(path)
    except Exception as err:  # pandas raises many parser errors; all mean "cannot read this file"
        raise DataError(f"cannot read {path}: {err}") from err
    _require_columns(frame, [*REQUIRED_COLUMNS, filename_column], path)
    frame.index = pd.Index(normalise_ids(frame["ecg_id"], f"{path} column 'ecg_id'"), name="ecg_id")
    patients = []
    for sample_id, raw in frame["patient_id"].items():
        try:
            patients.append(normalise_patient_id(raw))
        except DataError:
            raise DataError(f"{path}: ecg_id {sample_id}: empty patient_id") from None
    frame["patient"] = patients
    frame["scp_codes"] = [_parse_codes(text, sample_id, path) for sample_id, text in frame["scp_codes"].items()]
    folds = pd.to_numeric(frame["strat_fold"], errors="coerce")
    bad_folds = folds.isna() | (folds != folds.round())
    if bad_folds.any():
        examples = {sid: frame.at[sid, "strat_fold"] for sid in frame.index[bad_folds][:5]}
        raise DataError(f"{path}: column 'strat_fold' must hold whole fold numbers; ecg_id → value: {examples}")
    frame["strat_fold"] = folds.astype(int)
    for column in TABLE_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            examples = {sid: frame.at[sid, column] for sid in frame.index[bad][:5]}
            raise DataError(f"{path}: column {column!r} is not numeric; ecg_id → value: {examples}")
        frame[column] = values.astype("float64")
    bad_sex = frame["sex"].notna() & ~frame["sex"].isin([0.0, 1.0])
    if bad_sex.any():
        examples = {sid: frame.at[sid, "sex"] for sid in frame.index[bad_sex][:5]}
        raise DataError(f"{path}: column 'sex' must be 0 (male) or 1 (female); ecg_id → value: {examples}")
    frame.loc[frame["age"] == AGE_CODE_OVER_89, "age"] = AGE_OVER_89
    missing_names = frame[filename_column].isna()
    if missing_names.any():
        raise DataError(f"{path}: no {filename_column} for ecg_id {list(frame.index[missing_names][:5])}")
    return frame


def _parse_codes(text: Any, sample_id: str, path: Path) -> dict[str, float]:
    problem = f"{path}: ecg_id {sample_id}: scp_codes {text!r} is not a dict literal of statement → likelihood"
    try:
        codes = ast.literal_eval(str(text))
    except (ValueError, SyntaxError):
        raise DataError(problem) from None
    if not isinstance(codes, dict):
        raise DataError(problem)
    parsed = {}
    for code, likelihood in codes.items():
        if not isinstance(code, str) or isinstance(likelihood, bool) or not isinstance(likelihood, (int, float)):
            raise DataError(problem)
        parsed[code] = float(likelihood)
    return parsed


def read_statements(path: Path) -> pd.DataFrame:
    """``scp_statements.csv`` indexed by statement code (its first column)."""
    if not path.is_file():
        raise DataError(f"PTB-XL statement table not found: {path}")
    try:
        statements = pd.read_csv(path, index_col=0)
    except Exception as err:  # pandas parser errors
        raise DataError(f"cannot read {path}: {err}") from err
    _require_columns(statements, ["diagnostic"], path)
    statements.index = statements.index.astype(str)
    return statements


def diagnostic_codes(statements: pd.DataFrame, path: Path) -> set[str]:
    """The statement codes with ``diagnostic == 1`` in ``scp_statements.csv`` (read from ``path``)."""
    flags = pd.to_numeric(statements["diagnostic"], errors="coerce")
    bad = flags.notna() & (flags != 1)
    bad |= flags.isna() & statements["diagnostic"].notna()
    if bad.any():
        examples = dict(statements.loc[bad, "diagnostic"].head(5))
        raise DataError(f"{path}: column 'diagnostic' must be 1 or empty; code → value: {examples}")
    diagnostic = set(statements.index[flags == 1])
    if NORM not in diagnostic:
        raise DataError(f"{path}: statement {NORM!r} is missing or not marked diagnostic")
    return diagnostic


def _check_statements(database: pd.DataFrame, known: set[str], database_path: Path, path: Path) -> None:
    for sample_id, codes in database["scp_codes"].items():
        unknown = [code for code in codes if code not in known]
        if unknown:
            raise DataError(
                f"{database_path}: ecg_id {sample_id}: scp_codes statement {unknown[0]!r} is not in {path.name}"
                + did_you_mean(unknown[0], sorted(known))
            )


def _require_columns(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    present = [str(c) for c in frame.columns]
    for column in columns:
        if column not in present:
            raise DataError(f"{path}: no column {column!r}" + did_you_mean(column, present))


def _id_order(sample_id: str) -> tuple[int, str]:
    """Numeric order for ecg_ids ("2" before "10")."""
    return len(sample_id), sample_id


def _record_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + ".hea"), path.with_name(path.name + ".dat")]


def _record_files_exist(path: Path) -> bool:
    return all(file.is_file() for file in _record_files(path))
