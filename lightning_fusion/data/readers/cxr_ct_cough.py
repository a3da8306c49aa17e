"""Lung disease from three modalities: CT slices, chest X-rays and cough sounds, in predefined splits.

Layout (``data.root`` is the folder holding ``processed_dataset_split`` or that folder itself)::

    <root>/processed_dataset_split/
        train/
            CT/Healthy/ct1.png ct2.png ... ct10.png
            CT/LungsCancer/...  CT/Pneumonia/...  CT/covid/...
            CXR/Healthy/xray1.jpg ...
            Cough sound/Healthy/cough1.png ...     # spectrogram images, or recordings (.wav/.flac/.ogg)
        valid/ ...                                 # also accepted: val, validation
        test/ ...

Split folders map to the cohort's predefined splits (``train``; ``valid``/``val``/``validation`` →
``val``; ``test``), which the data module uses as they are (:attr:`Cohort.splits`). Class folders
match the configured classes case-insensitively; an unknown class folder is an error with the
closest class names. Modality folder names are configurable (``modality_folders``: modality name →
folder name, matched case-insensitively); folders of a split that no modality uses are ignored with a
warning, as are files that are neither images nor recordings.

Pairing rule
------------
The dataset has no patient ids, so samples are formed by position. Within each split and class the
files of each modality are sorted by file name in natural order (digit runs compare as numbers, case
is ignored: ``img2`` < ``img10``), and the k-th CT, CXR and cough files form sample k, with id
``<split>/<class>/<k:04d>`` (normalised, e.g. ``train/lungscancer/0007``). Every modality must then
hold the same number of files in a split and class; otherwise the reader raises a ``DataError``
naming the split, the class and each modality's count. With ``on_unequal_counts: truncate`` the
files beyond the smallest count are excluded instead and reported in :attr:`Cohort.excluded`
(reason naming split, class and modality → the excluded files, as ``<split folder>/<modality
folder>/<class folder>/<file>``).

Images are read as grayscale (``channels_per_view: 1``; RGB exports are converted) or as RGB with
``channels_per_view: 3``. Recordings are converted to log-mel spectrogram images once and cached
(:mod:`lightning_fusion.data.audio`; parameters under ``spectrogram``), so a cough folder may hold
spectrogram images, recordings, or both.

Besides one modality per folder, the cohort has ``stack``: the paired CT, CXR and cough images of a
sample stacked as the channels of one image (in ``modality_folders`` order; grayscale → 3 channels).
A model on ``[stack]`` alone is input-level ("early") fusion: one backbone sees all three at once.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lightning_fusion.data.audio import AUDIO_SUFFIXES, MelSpectrogramParams, cached_log_mel_png
from lightning_fusion.data.cohort import Cohort, normalise_ids
from lightning_fusion.data.modalities import ImageStackModality
from lightning_fusion.data.readers.base import FolderReader
from lightning_fusion.data.readers.mpi import IMAGE_SUFFIXES
from lightning_fusion.data.readers.registry import READERS
from lightning_fusion.errors import DataError, UnknownNameError
from lightning_fusion.registry import suggest

log = logging.getLogger(__name__)

DATASET_FOLDER = "processed_dataset_split"
SPLIT_FOLDERS = {"train": "train", "valid": "val", "val": "val", "validation": "val", "test": "test"}
UNEQUAL_COUNT_POLICIES = ("error", "truncate")
STACK = "stack"  # every modality's image stacked as channels: input-level (early) fusion
_DIGITS = re.compile(r"(\d+)")


@dataclass
class CxrCtCoughReaderConfig:
    """Options of the CT + chest X-ray + cough layout."""

    classes: list[str] = field(default_factory=lambda: ["Healthy", "LungsCancer", "Pneumonia", "covid"])
    modality_folders: dict[str, str] = field(default_factory=lambda: {"ct": "CT", "cxr": "CXR", "cough": "Cough sound"})
    channels_per_view: int = 1  # 1: grayscale (RGB files converted); 3: RGB
    on_unequal_counts: str = "error"  # error | truncate (drop and report the surplus files)
    spectrogram: MelSpectrogramParams = field(default_factory=MelSpectrogramParams)  # for recordings

    def __post_init__(self) -> None:
        if not self.classes or len({c.casefold() for c in self.classes}) != len(self.classes):
            raise ValueError(f"classes must be distinct names (ignoring case), got {self.classes}")
        folders = [f.casefold() for f in self.modality_folders.values()]
        if not self.modality_folders or len(set(folders)) != len(folders):
            raise ValueError(f"modality_folders must map modalities to distinct folders, got {self.modality_folders}")
        if self.channels_per_view not in (1, 3):
            raise ValueError(f"channels_per_view must be 1 (grayscale) or 3 (RGB), got {self.channels_per_view}")
        if STACK in self.modality_folders:
            raise ValueError(f"modality_folders: {STACK!r} is reserved for the stacked (early fusion) modality")
        if self.on_unequal_counts not in UNEQUAL_COUNT_POLICIES:
            raise UnknownNameError(suggest(self.on_unequal_counts, list(UNEQUAL_COUNT_POLICIES), "on_unequal_counts"))


def natural_key(name: str) -> tuple[list[int | str], str]:
    """Sort key that compares digit runs as numbers and ignores case: ``img2`` < ``img10``."""
    parts = [int(part) if i % 2 else part.casefold() for i, part in enumerate(_DIGITS.split(name))]
    return parts, name


@READERS.register("cxr_ct_cough", config=CxrCtCoughReaderConfig)
class CxrCtCoughReader(FolderReader):
    """Reads the layout into a cohort with one grayscale (or RGB) image modality per folder."""

    holds = f"{DATASET_FOLDER}/ (or its split folders)"

    options: CxrCtCoughReaderConfig

    def read(self, root: Path | None) -> Cohort:
        dataset = self._dataset_folder(root)
        raw_ids: list[str] = []
        labels: list[str] = []
        splits: list[str] = []
        files: dict[str, dict[str, Path]] = {modality: {} for modality in self.options.modality_folders}
        excluded: dict[str, list[str]] = {}
        for split, split_dir in self._split_folders(dataset).items():
            by_class = self._scan_split(split_dir)
            for label in self.options.classes:
                paired = self._pair(dataset, split_dir, label, by_class[label], excluded)
                for k, row in enumerate(paired):
                    raw_ids.append(f"{split}/{label}/{k:04d}")
                    labels.append(label)
                    splits.append(split)
                    for modality, path in row.items():
                        files[modality][raw_ids[-1]] = path
        if not raw_ids:
            raise DataError(f"{dataset}: no samples; the class folders hold no image or audio files")
        ids = normalise_ids(raw_ids, f"{dataset} (sample ids)")
        normalised = dict(zip(raw_ids, ids))
        images = {
            modality: {normalised[raw]: self._as_image(normalised[raw], path) for raw, path in by_id.items()}
            for modality, by_id in files.items()
        }
        modalities = {
            modality: ImageStackModality(
                {sid: [path] for sid, path in by_id.items()},
                channels_per_view=self.options.channels_per_view,
                convert=True,
            )
            for modality, by_id in images.items()
        }
        modalities[STACK] = ImageStackModality(
            {sid: [images[m][sid] for m in images] for sid in set.intersection(*(set(v) for v in images.values()))},
            channels_per_view=self.options.channels_per_view,
            convert=True,
        )
        cohort = Cohort(
            name=self.name,
            classes=list(self.options.classes),
            labels=pd.Series(labels, index=ids, name="label", dtype=object),
            modalities=modalities,
            splits=pd.Series(splits, index=ids, name="split", dtype=object),
            excluded=excluded,
        )
        cohort.check_labels()
        return cohort

    # ---------------------------------------------------------------------------------------------
    def _dataset_folder(self, root: Path | None) -> Path:
        root = self.root_folder(root)
        nested = [p for p in root.iterdir() if p.is_dir() and p.name.casefold() == DATASET_FOLDER]
        return nested[0] if nested else root

    def _split_folders(self, dataset: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in _subfolders(dataset):
            split = SPLIT_FOLDERS.get(folder.name.casefold())
            if split is None:
                raise DataError(f"{folder}: " + suggest(folder.name, list(SPLIT_FOLDERS), "split folder"))
            if split in found:
                raise DataError(
                    f"{dataset}: folders {found[split].name!r} and {folder.name!r} are both the {split} split"
                )
            found[split] = folder
        if not found:
            raise DataError(
                f"{dataset}: no split folders (train, valid, test); data.root must be the folder holding "
                f"{DATASET_FOLDER} or that folder itself"
            )
        return found

    def _scan_split(self, split_dir: Path) -> dict[str, dict[str, list[Path]]]:
        """Class → modality → the class folder's files in natural order (no folder: no files)."""
        present = {folder.name.casefold(): folder for folder in _subfolders(split_dir)}
        by_class: dict[str, dict[str, list[Path]]] = {label: {} for label in self.options.classes}
        for modality, folder_name in self.options.modality_folders.items():
            modality_dir = present.pop(folder_name.casefold(), None)
            if modality_dir is None:
                names = sorted(folder.name for folder in _subfolders(split_dir))
                close = difflib.get_close_matches(folder_name, names, n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}? (set data.reader.modality_folders)" if close else ""
                raise DataError(
                    f"{split_dir}: no folder {folder_name!r} for modality {modality!r}; found {names}{hint}"
                )
            for label, class_dir in self._class_folders(modality_dir).items():
                by_class[label][modality] = _media_files(class_dir)
        if present:
            log.warning(
                "%s: ignoring folders that no modality uses: %s", split_dir, sorted(f.name for f in present.values())
            )
        return by_class

    def _class_folders(self, modality_dir: Path) -> dict[str, Path]:
        by_folder = {label.casefold(): label for label in self.options.classes}
        found: dict[str, Path] = {}
        for folder in _subfolders(modality_dir):
            label = by_folder.get(folder.name.casefold())
            if label is None:
                raise DataError(f"{folder}: " + suggest(folder.name, list(self.options.classes), "class folder"))
            if label in found:
                raise DataError(f"{modality_dir}: folders {found[label].name!r} and {folder.name!r} are both {label!r}")
            found[label] = folder
        return found

    def _pair(
        self,
        dataset: Path,
        split_dir: Path,
        label: str,
        by_modality: dict[str, list[Path]],
        excluded: dict[str, list[str]],
    ) -> list[dict[str, Path]]:
        """The k-th file of every modality, for k below the smallest count (see the pairing rule)."""
        lists = {modality: by_modality.get(modality, []) for modality in self.options.modality_folders}
        counts = {modality: len(paths) for modality, paths in lists.items()}
        paired = min(counts.values())
        if paired != max(counts.values()):
            counts_text = ", ".join(f"{self.options.modality_folders[m]} {n}" for m, n in counts.items())
            where = f"split {split_dir.name!r}, class {label!r}"
            if self.options.on_unequal_counts == "error":
                raise DataError(
                    f"{split_dir}: {where}: unequal file counts ({counts_text}); files are paired by sorted "
                    f"position, so each modality needs the same number (on_unequal_counts: truncate drops and "
                    f"reports the surplus)"
                )
            for modality, paths in lists.items():
                if len(paths) > paired:
                    reason = f"{where}: surplus {modality} file beyond the {paired} paired ({counts_text})"
                    excluded[reason] = [path.relative_to(dataset).as_posix() for path in paths[paired:]]
        return [{modality: paths[k] for modality, paths in lists.items()} for k in range(paired)]

    def _as_image(self, sample_id: str, path: Path) -> Path:
        """Image files as they are; recordings as their cached log-mel spectrogram image."""
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            return path
        try:
            return cached_log_mel_png(path, self.options.spectrogram)
        except DataError as err:
            raise DataError(f"sample {sample_id}: {err}") from None


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _media_files(class_dir: Path) -> list[Path]:
    """Image and audio files of a class folder in natural order; anything else is ignored with a warning."""
    media, ignored = [], []
    for entry in class_dir.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES + AUDIO_SUFFIXES:
            media.append(entry)
        else:
            ignored.append(entry.name)
    if ignored:
        log.warning("%s: ignoring %d entries that are not image or audio files: %s", class_dir, len(ignored), ignored)
    return sorted(media, key=lambda path: natural_key(path.name))
