"""Single images in class folders: one image file = one sample (e.g. cardiac MRI slices).

Layout (folder names are the classes; any depth of sub-folders below them)::

    <root>/Normal/cmr0001_slice1.png
    <root>/Normal/cmr0001_slice2.png
    <root>/Normal/2021/cmr0002_slice1.png
    <root>/Sick/cmr0003_slice1.png
    <root>/Sick/notes.txt              # not an image: ignored, counted in a log line

Rules:

* Classes: by default the class folders found, sorted (case-insensitively); with ``classes`` given,
  every folder must match one of them case-insensitively (an unknown folder is an error with a
  "did you mean") and every class must have a folder. Hidden files and folders are skipped.
* Sample id: the file's path relative to ``root`` without its suffix, normalised
  (``Normal/cmr0001_slice1.png`` → ``normal/cmr0001-slice1``), so equal file names in two class
  folders stay distinct samples.
* Patients: without ``patient_pattern`` each file is its own patient. With it — a regular expression
  with one group, searched in the path relative to the class folder (``cmr0001_slice1.png``) — the
  group is the patient id, shared by all of that patient's images; :attr:`Cohort.groups` then holds
  sample → patient and every split keeps a patient whole. A patient id found under two class folders
  is one patient (slices may carry different labels); its split follows its most frequent label. An
  image file the pattern does not match is an error naming the file.
* Images are converted to ``channels`` (1: grayscale, 3: RGB) when ``convert`` is on: RGB, opaque
  RGBA, palette and 16-bit grayscale files all become the wanted mode (16-bit rescaled to its own
  range); an unreadable image is an error naming the file when it is loaded.
* No predefined split: the datamodule splits by ``data.split`` (seeded, stratified, grouped).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lightning_fusion.data.cohort import Cohort, normalise_ids, normalise_patient_id
from lightning_fusion.data.modalities import ImageStackModality
from lightning_fusion.data.readers.base import FolderReader
from lightning_fusion.data.readers.mpi import IMAGE_SUFFIXES
from lightning_fusion.data.readers.registry import READERS
from lightning_fusion.errors import DataError
from lightning_fusion.registry import suggest

log = logging.getLogger(__name__)


@dataclass
class ImageFoldersConfig:
    """Options of the single-image class-folder layout."""

    classes: list[str] | None = None  # default: the class folders found, sorted
    channels: int = 1  # 1 grayscale, 3 RGB
    convert: bool = True  # convert RGB / RGBA-opaque / 16-bit files to ``channels`` instead of rejecting them
    patient_pattern: str | None = None  # regex, one group: patient id from the path below the class folder

    def __post_init__(self) -> None:
        if self.classes is not None:
            folded = [c.casefold() for c in self.classes]
            if len(self.classes) < 2 or len(set(folded)) != len(folded):
                raise ValueError(f"classes must be at least 2 distinct names (case-insensitively), got {self.classes}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if self.patient_pattern is not None:
            try:
                groups = re.compile(self.patient_pattern).groups
            except re.error as err:
                raise ValueError(f"patient_pattern {self.patient_pattern!r} is not a valid regex: {err}") from None
            if groups != 1:
                raise ValueError(
                    f"patient_pattern {self.patient_pattern!r} must have exactly one group (the patient id), "
                    f"it has {groups}"
                )


@dataclass
class _ImageFile:
    path: Path
    class_name: str
    relative: str  # below the class folder, posix
    class_folder: str  # the class folder's own name


@READERS.register("image_folders", config=ImageFoldersConfig)
class ImageFoldersReader(FolderReader):
    """Reads class folders of single images into a cohort with one ``image`` modality."""

    holds = "the class folders"

    options: ImageFoldersConfig

    def read(self, root: Path | None) -> Cohort:
        root = self.root_folder(root)
        class_of_folder = self._class_folders(root)
        images, ignored = _scan(root, class_of_folder)
        raw_ids = [(Path(image.class_folder) / image.relative).with_suffix("").as_posix() for image in images]
        ids = normalise_ids(raw_ids, f"{root} (image files)")
        labels = pd.Series([image.class_name for image in images], index=ids, name="label", dtype=object)
        modality = ImageStackModality(
            {sid: [image.path] for sid, image in zip(ids, images)},
            channels_per_view=self.options.channels,
            convert=self.options.convert,
        )
        groups = self._patients(ids, images) if self.options.patient_pattern else None
        classes = list(dict.fromkeys(class_of_folder.values()))
        if ignored:
            by_suffix = Counter(path.suffix.lower() or "(no suffix)" for path in ignored)
            log.info(
                "%s: ignored %d non-image file(s) (%s), e.g. %s",
                root,
                len(ignored),
                ", ".join(f"{suffix} ×{n}" for suffix, n in sorted(by_suffix.items())),
                ignored[0].relative_to(root).as_posix(),
            )
        patients = groups.nunique() if groups is not None else len(ids)
        log.info(
            "%s: %d image(s) of %d patient(s); per class %s",
            root,
            len(ids),
            patients,
            labels.value_counts().reindex(classes, fill_value=0).to_dict(),
        )
        cohort = Cohort(name=self.name, classes=classes, labels=labels, modalities={"image": modality}, groups=groups)
        cohort.check_labels()
        return cohort

    def _class_folders(self, root: Path) -> dict[Path, str]:
        """Class folder → class name, in class order."""
        folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_folder_key)
        if not folders:
            expected = f"; expected {self.options.classes}" if self.options.classes else ""
            raise DataError(f"{root}: no class folders{expected}")
        clashing = [f.name for f in folders if sum(g.name.casefold() == f.name.casefold() for g in folders) > 1]
        if clashing:
            raise DataError(f"{root}: class folders {clashing} differ only in case; merge them")
        if self.options.classes is None:
            if len(folders) < 2:
                raise DataError(f"{root}: only one class folder ({folders[0].name}); a classifier needs at least 2")
            return {folder: folder.name for folder in folders}
        by_name = {c.casefold(): c for c in self.options.classes}
        found: dict[str, Path] = {}
        for folder in folders:
            class_name = by_name.get(folder.name.casefold())
            if class_name is None:
                raise DataError(f"{folder}: " + suggest(folder.name, list(self.options.classes), "class folder"))
            found[class_name] = folder
        absent = [c for c in self.options.classes if c not in found]
        if absent:
            raise DataError(f"{root}: no folder for class(es) {absent}; found folders {[f.name for f in folders]}")
        return {found[c]: c for c in self.options.classes}

    def _patients(self, ids: list[str], images: list[_ImageFile]) -> pd.Series:
        """Sample id → patient id from ``patient_pattern``; a file it does not match is an error."""
        pattern = re.compile(self.options.patient_pattern)
        patients = []
        for image in images:
            match = pattern.search(image.relative)
            if match is None or not match.group(1):
                raise DataError(
                    f"{image.path}: patient_pattern {pattern.pattern!r} finds no patient id in {image.relative!r} "
                    "(the path below the class folder)"
                )
            patients.append(normalise_patient_id(match.group(1)))
        groups = pd.Series(patients, index=ids, name="patient", dtype=object)
        classes_per_patient = pd.Series([i.class_name for i in images], index=ids).groupby(groups).nunique()
        mixed = sorted(classes_per_patient.index[classes_per_patient > 1])
        if mixed:
            log.warning(
                "%d patient(s) have images in several class folders (kept together in one split): %s",
                len(mixed),
                ", ".join(mixed[:5]) + (" ..." if len(mixed) > 5 else ""),
            )
        return groups


def _folder_key(folder: Path) -> tuple[str, str]:
    return folder.name.casefold(), folder.name


def _scan(root: Path, class_of_folder: dict[Path, str]) -> tuple[list[_ImageFile], list[Path]]:
    """The image files under each class folder (sorted) and the other files that were skipped."""
    images: list[_ImageFile] = []
    ignored: list[Path] = []
    for folder, class_name in class_of_folder.items():
        found = 0
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts):
                if path.is_file():
                    ignored.append(path)
                continue
            if not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append(path)
                continue
            images.append(_ImageFile(path, class_name, relative.as_posix(), folder.name))
            found += 1
        if not found:
            raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) for class {class_name!r}")
    return images, ignored
