"""SPECT myocardial perfusion imaging (MPI): view images per patient + a clinical metrics table.

Layout (class folders; folder names match class names case-insensitively)::

    <root>/Normal/<patient>/QPS AC.png
    <root>/Normal/<patient>/Stress QGS AC.png
    <root>/Normal/<patient>/Rest QGS AC.png
    <root>/Ischemia/<patient>/...
    <root>/Infarction/<patient>/...
    <root>/clinical.csv            # or .xlsx: an id column + numeric metrics

or, with ``labels_file`` set, patient folders directly under the root and the labels in a table::

    <root>/<patient>/{QPS AC,Stress QGS AC,Rest QGS AC}.png
    <root>/labels.csv              # or .xlsx: the id column + a label column
    <root>/clinical.csv

Each patient's views are matched by file-name patterns (case-insensitive globs on the file stem,
one file per view) and stacked in view order: 3 RGB views → a 9-channel image. Patients missing a
view are excluded and reported. ``demo_mpi`` is the same reader on the synthetic cohort that the
package generates (:mod:`lightning_fusion.demo.mpi_cohort`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lightning_fusion.data.cache import cache_root
from lightning_fusion.data.cohort import Cohort, normalise_ids
from lightning_fusion.data.modalities import ImageStackModality, TableModality
from lightning_fusion.data.readers.base import FolderReader
from lightning_fusion.data.readers.registry import READERS
from lightning_fusion.errors import DataError
from lightning_fusion.registry import suggest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class MPIReaderConfig:
    """Options of the MPI layout."""

    classes: list[str] = field(default_factory=lambda: ["normal", "ischemia", "infarction"])
    views: list[str] = field(default_factory=lambda: ["QPS AC", "Stress QGS AC", "Rest QGS AC"])
    channels_per_view: int = 3
    crop: list[int] | None = None  # (top, bottom, left, right) pixels, e.g. to drop a patient banner
    clinical_file: str | None = "clinical.csv"  # .csv or .xlsx under root; null: images only
    id_column: str = "patient_id"  # in the clinical table and the labels table
    labels_file: str | None = None  # .csv/.xlsx under root; set it when patient folders are not in class folders
    label_column: str = "label"

    def __post_init__(self) -> None:
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct names, got {self.classes}")
        if not self.views:
            raise ValueError("views must name at least one view")
        if self.crop is not None and (len(self.crop) != 4 or min(self.crop) < 0):
            raise ValueError(f"crop must be 4 non-negative pixel counts (top, bottom, left, right), got {self.crop}")


@READERS.register("mpi", config=MPIReaderConfig)
class MPIReader(FolderReader):
    """Reads the MPI layout into a cohort with ``image`` and (optionally) ``tabular`` modalities."""

    holds = "the class folders"

    options: MPIReaderConfig

    def read(self, root: Path | None) -> Cohort:
        root = self.root_folder(root)
        if self.options.labels_file:
            labels, image_files, missing_view = self._scan_flat(root)
        else:
            labels, image_files, missing_view = self._scan_class_folders(root)
        modalities: dict[str, object] = {
            "image": ImageStackModality(image_files, self.options.channels_per_view, self.options.crop)
        }
        if self.options.clinical_file:
            modalities["tabular"] = _read_clinical(root / self.options.clinical_file, self.options.id_column)
        excluded = {"missing a view": sorted(missing_view)} if missing_view else {}
        cohort = Cohort(
            name=self.name,
            classes=list(self.options.classes),
            labels=labels,
            modalities=modalities,
            excluded=excluded,
            excluded_modality={"missing a view": "image"},
        )
        cohort.check_labels()
        return cohort

    def _scan_class_folders(self, root: Path) -> tuple[pd.Series, dict[str, list[Path]], list[str]]:
        """``<root>/<class>/<patient>/``: the label is the class folder (matched case-insensitively)."""
        by_folder = {c.casefold(): c for c in self.options.classes}
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(f"{root}: no class folders; expected {self.options.classes}")
        patient_dirs: list[Path] = []
        classes: list[str] = []
        for folder in folders:
            label = by_folder.get(folder.name.casefold())
            if label is None:
                raise DataError(f"{folder}: " + suggest(folder.name, list(self.options.classes), "class folder"))
            for patient_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                patient_dirs.append(patient_dir)
                classes.append(label)
        if not patient_dirs:
            raise DataError(f"{root}: the class folders hold no patient folders")
        ids = normalise_ids([p.name for p in patient_dirs], f"{root} (patient folders)")
        image_files, missing_view = self._views_of(dict(zip(ids, patient_dirs)))
        return pd.Series(classes, index=ids, name="label", dtype=object), image_files, missing_view

    def _scan_flat(self, root: Path) -> tuple[pd.Series, dict[str, list[Path]], list[str]]:
        """Patient folders under ``root``; labels from ``labels_file`` (matched case-insensitively)."""
        path = root / self.options.labels_file
        table = read_table(path, "labels table")
        for column in (self.options.id_column, self.options.label_column):
            if column not in table.columns:
                raise DataError(f"{path}: " + suggest(column, [str(c) for c in table.columns], "column"))
        ids = normalise_ids(table[self.options.id_column], f"{path} column {self.options.id_column!r}")
        by_name = {c.casefold(): c for c in self.options.classes}
        labels = {}
        for pid, raw in zip(ids, table[self.options.label_column]):
            if pd.isna(raw):
                raise DataError(f"{path}: patient {pid} has no {self.options.label_column!r} value")
            label = by_name.get(str(raw).strip().casefold())
            if label is None:
                raise DataError(f"{path}: patient {pid}: " + suggest(str(raw), list(self.options.classes), "label"))
            labels[pid] = label
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(f"{root}: no patient folders")
        folder_ids = normalise_ids([p.name for p in folders], f"{root} (patient folders)")
        image_files, missing_view = self._views_of(dict(zip(folder_ids, folders)))
        return pd.Series(labels, name="label", dtype=object), image_files, missing_view

    def _views_of(self, folders: dict[str, Path]) -> tuple[dict[str, list[Path]], list[str]]:
        """Each patient's view files in view order, and the patients missing a view."""
        image_files: dict[str, list[Path]] = {}
        missing_view: list[str] = []
        for pid, folder in folders.items():
            views = self._match_views(folder)
            if views is None:
                missing_view.append(pid)
            else:
                image_files[pid] = views
        return image_files, missing_view

    def _match_views(self, patient_dir: Path) -> list[Path] | None:
        images = [p for p in sorted(patient_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        matched = []
        for pattern in self.options.views:
            hits = [p for p in images if fnmatch.fnmatch(p.stem.casefold(), pattern.casefold())]
            if len(hits) > 1:
                raise DataError(
                    f"{patient_dir}: view pattern {pattern!r} matches several files: {[h.name for h in hits]}"
                )
            if not hits:
                return None
            matched.append(hits[0])
        return matched


def read_table(path: Path, what: str) -> pd.DataFrame:
    """A CSV or Excel (.xlsx/.xls) table; a missing or unreadable file is a :class:`DataError` naming it."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return pd.read_excel(path) if path.suffix.lower() in (".xlsx", ".xls") else pd.read_csv(path)
    except Exception as err:  # pandas raises many parser errors; all mean "cannot read this file"
        raise DataError(f"cannot read {what} {path}: {err}") from err


def _read_clinical(path: Path, id_column: str) -> TableModality:
    frame = read_table(path, "clinical table")
    if id_column not in frame.columns:
        raise DataError(f"{path}: " + suggest(id_column, [str(c) for c in frame.columns], "id column"))
    frame.index = pd.Index(normalise_ids(frame.pop(id_column), f"{path} column {id_column!r}"), name="patient_id")
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise DataError(f"{path}: non-numeric columns {bad}; encode them as numbers or drop them")
    if frame.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides {id_column!r}")
    return TableModality(frame.astype("float64"), source=str(path))


@dataclass
class DemoMPIConfig:
    """The built-in synthetic perfusion cohort (generated once, then cached)."""

    patients: int = 300
    seed: int = 0
    image_size: int = 64

    def __post_init__(self) -> None:
        if self.patients < 10:
            raise ValueError(f"patients must be >= 10, got {self.patients}")


@READERS.register("demo_mpi", config=DemoMPIConfig)
class DemoMPIReader(MPIReader):
    """The MPI reader on the synthetic cohort; ``data.root`` (or a cache folder) holds it."""

    def __init__(self, options: DemoMPIConfig) -> None:
        super().__init__(MPIReaderConfig())
        self.demo = options

    def default_root(self) -> Path:
        return cache_root() / f"demo_mpi-n{self.demo.patients}-s{self.demo.seed}-px{self.demo.image_size}"

    def prepare(self, root: Path | None) -> None:
        from lightning_fusion.demo import generate_mpi_cohort

        generate_mpi_cohort(root or self.default_root(), self.demo.patients, self.demo.seed, self.demo.image_size)

    def read(self, root: Path | None) -> Cohort:
        root = Path(root) if root else self.default_root()
        if not (root / "cohort.json").is_file():
            self.prepare(root)
        return super().read(root)
