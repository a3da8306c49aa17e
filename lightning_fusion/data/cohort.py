"""A cohort: patients with labels, and the modalities each patient has, joined on patient id.

Readers turn a dataset layout into a :class:`Cohort`. Joins are always on a normalised patient id
(:func:`normalise_patient_id`), never on row order. :func:`join_modalities` keeps the patients that
have every modality a model needs and reports the rest, so exclusions are counted, not silent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from lightning_fusion.errors import DataError

log = logging.getLogger(__name__)

_SEPARATORS = re.compile(r"[\s_\-]+")


def normalise_patient_id(raw: Any) -> str:
    """Canonical patient id: trimmed, case-folded, runs of space/underscore/hyphen → ``-``.

    ``"MPI_0001"``, ``" mpi-0001 "`` and ``"Mpi 0001"`` are the same patient; ``7.0`` read from a
    spreadsheet is ``"7"``. Ids that collide after normalisation are reported as duplicates.
    """
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    text = _SEPARATORS.sub("-", str(raw).strip().casefold()).strip("-")
    if not text or text == "nan":
        raise DataError(f"empty patient id {raw!r}")
    return text


def normalise_ids(raw_ids: Iterable[Any], source: str) -> list[str]:
    """Normalise ids from one source, raising :class:`DataError` on duplicates (naming them)."""
    raw_ids = list(raw_ids)
    ids = []
    for position, raw in enumerate(raw_ids):
        try:
            ids.append(normalise_patient_id(raw))
        except DataError as err:
            raise DataError(f"{source}: row {position}: {err}") from None
    seen: dict[str, Any] = {}
    duplicates = []
    for raw, pid in zip(raw_ids, ids):
        if pid in seen:
            duplicates.append(f"{seen[pid]!r} / {raw!r}")
        seen.setdefault(pid, raw)
    if duplicates:
        raise DataError(
            f"{source}: duplicate patient ids {', '.join(duplicates[:5])}" + (" ..." if len(duplicates) > 5 else "")
        )
    return ids


class Modality(Protocol):
    """One modality of a cohort: the patients that have it and how to load one sample."""

    kind: str  # image | vector | signal

    @property
    def patient_ids(self) -> set[str]: ...


@dataclass
class Cohort:
    """Labelled patients and their modalities, as a reader found them.

    Attributes:
        name: dataset name (the ``lf.dataset`` tag).
        classes: class names in label-index order.
        labels: class name per normalised patient id.
        modalities: modality name → source (e.g. image files, a feature table).
        splits: predefined split (``train``/``val``/``test``) per patient id, when the dataset has one.
        excluded: reason → patient ids the reader already excluded (e.g. a missing view).
        excluded_modality: reason → the modality it concerns (e.g. ``"missing a view": "image"``); such
            a reason excludes its patients only from models that use that modality, like the join's own
            ``no <modality>``. Reasons not listed concern the patient as a whole (e.g. an unusable label).
        groups: the patient each sample belongs to, when a patient can have several samples (PTB-XL:
            several ECG records per patient; ids in ``labels`` are then sample ids). Splits keep each
            group whole.
    """

    name: str
    classes: list[str]
    labels: pd.Series
    modalities: dict[str, Any]
    splits: pd.Series | None = None
    excluded: dict[str, list[str]] = field(default_factory=dict)
    groups: pd.Series | None = None
    excluded_modality: dict[str, str] = field(default_factory=dict)

    def check_labels(self) -> None:
        """Every label must be one of ``classes``; the error names the patient and the label."""
        unknown = self.labels[~self.labels.isin(self.classes)]
        if len(unknown):
            examples = ", ".join(f"{pid}: {label!r}" for pid, label in list(unknown.items())[:5])
            raise DataError(f"{self.name}: labels outside the class list {self.classes}: {examples}")


@dataclass
class JoinReport:
    """Which patients a join kept and why the others were excluded.

    ``missing`` (only when the join keeps patients with missing modalities): modality → the kept
    patients that lack it.
    """

    kept: list[str]
    excluded: dict[str, list[str]]
    missing: dict[str, list[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {reason: len(ids) for reason, ids in self.excluded.items()}

    def present(self, modality: str, patient_ids: Sequence[str]) -> np.ndarray:
        """``(N,)`` bool: which of ``patient_ids`` have ``modality``."""
        lacking = set(self.missing.get(modality, ()))
        return np.array([pid not in lacking for pid in patient_ids], dtype=bool)


def join_modalities(
    cohort: Cohort, required: Sequence[str], exclude_labels: Sequence[str] = (), keep_missing: bool = False
) -> JoinReport:
    """Keep the labelled patients that have every ``required`` modality and a wanted label.

    With ``keep_missing``, a patient needs only one of the ``required`` modalities: the others are
    reported in :attr:`JoinReport.missing` (for fusions that mask absent modalities), and a reader's
    exclusion that concerns one modality (e.g. a missing view) makes that modality missing instead of
    excluding the patient.

    Raises:
        DataError: a required modality the cohort does not have, or nothing left to train on.
    """
    missing = [m for m in required if m not in cohort.modalities]
    if missing:
        raise DataError(f"{cohort.name}: no modality {missing}; the dataset has {sorted(cohort.modalities)}")
    unknown_excluded = [label for label in exclude_labels if label not in cohort.classes]
    if unknown_excluded:
        raise DataError(f"data.exclude_labels: {unknown_excluded} are not classes of {cohort.name} {cohort.classes}")

    def concerns_this_model(reason: str) -> bool:
        modality = cohort.excluded_modality.get(reason)
        if keep_missing and modality is not None:
            return False  # the patient is kept without that modality (its source does not list them)
        return modality is None or modality in required

    excluded: dict[str, list[str]] = {
        reason: sorted(ids) for reason, ids in cohort.excluded.items() if ids and concerns_this_model(reason)
    }
    labelled = set(cohort.labels.index)
    for label in exclude_labels:
        ids = sorted(cohort.labels.index[cohort.labels == label])
        if ids:
            excluded[f"label {label!r} excluded by config"] = ids
    reader_excluded = {pid for ids in excluded.values() for pid in ids}  # (+ excluded labels: dropped anyway)
    wanted = labelled - {pid for label in exclude_labels for pid in cohort.labels.index[cohort.labels == label]}
    kept = set(wanted) - reader_excluded  # already reported by the reader; not counted twice
    lacking_by_modality: dict[str, list[str]] = {}
    if keep_missing:
        have_any = set().union(*(cohort.modalities[m].patient_ids for m in required))
        none = sorted(kept - have_any)
        if none:
            excluded[f"none of {list(required)}"] = none
        kept &= have_any
        for modality in required:
            lacking = sorted(kept - cohort.modalities[modality].patient_ids)
            if lacking:
                lacking_by_modality[modality] = lacking
    else:
        for modality in required:
            have = cohort.modalities[modality].patient_ids
            lacking = sorted(kept - have)
            if lacking:
                excluded[f"no {modality}"] = lacking
            kept &= have
    unlabelled = set().union(*(cohort.modalities[m].patient_ids for m in required)) - labelled
    if unlabelled:
        excluded["no label"] = sorted(unlabelled)
    if not kept:
        raise DataError(
            f"{cohort.name}: no patient has a label and {'any' if keep_missing else 'all'} of {list(required)}; "
            f"exclusions: { {k: len(v) for k, v in excluded.items()} }"
        )
    for reason, ids in excluded.items():
        shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
        log.warning("%s: excluded %d patient(s), %s: %s", cohort.name, len(ids), reason, shown)
    for modality, ids in lacking_by_modality.items():
        log.warning("%s: kept %d patient(s) without %s (masked by the fusion)", cohort.name, len(ids), modality)
    return JoinReport(kept=sorted(kept), excluded=excluded, missing=lacking_by_modality)


def class_counts(labels: pd.Series, classes: Sequence[str]) -> dict[str, int]:
    """Patients per class, in class order (zeros included)."""
    counts = labels.value_counts()
    return {c: int(counts.get(c, 0)) for c in classes}


def label_indices(labels: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """Class names → integer indices in ``classes`` order."""
    lookup: Mapping[str, int] = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[label] for label in labels], dtype=np.int64)
