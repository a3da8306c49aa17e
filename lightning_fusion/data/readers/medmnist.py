"""MedMNIST ``.npz`` files (e.g. PneumoniaMNIST): images and labels per predefined split.

Layout (one file; the official one has all three splits, a train+val file has no test arrays)::

    <root>/pneumoniamnist.npz
        train_images (N, H, W) or (N, H, W, 3) uint8    train_labels (N,) or (N, 1) class indices
        val_images                                       val_labels
        test_images                                      test_labels        # optional, see below

Rules:

* Sample ids are ``<split>-<index>`` with the 0-based position in the file's arrays, zero-padded to
  5 digits (``train-00000`` is ``train_images[0]``), so every id points back at its array row.
  A label is an index into ``classes``.
* Splits are predefined (:attr:`Cohort.splits`). **Without test arrays** the file's val split becomes
  the test split, and a seeded, stratified ``val_fraction`` of train becomes val (a warning says so);
  MedMNIST images are independent (one per patient), so no patient grouping is needed for that carve.
* **Exact duplicates.** The official data holds byte-identical images, some of them across splits
  (PneumoniaMNIST: 10 train images equal to 8 val images). A train image equal to a val or test
  image (and a val image equal to a test image) leaks evaluation data into training; by default
  (``drop_cross_split_duplicates``) it is excluded and reported in :attr:`Cohort.excluded`
  (``"duplicate of a val/test image"``, ``"duplicate of a test image"``). Identical images within one
  split are kept but grouped (:attr:`Cohort.groups`: sample → its first twin), so the val carved from
  train, or any re-split, never puts two copies on both sides.
* Images are resized to ``data.image_size`` when loaded (:class:`ArrayImageModality`).
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lightning_fusion.data.cohort import Cohort
from lightning_fusion.data.modalities import ArrayImageModality
from lightning_fusion.data.readers.base import FolderReader
from lightning_fusion.data.readers.registry import READERS
from lightning_fusion.data.splits import stratified_split
from lightning_fusion.errors import DataError

log = logging.getLogger(__name__)

FILE_SPLITS = ("train", "val", "test")
TRAIN_DUPLICATE = "duplicate of a val/test image"
VAL_DUPLICATE = "duplicate of a test image"


@dataclass
class MedMNISTConfig:
    """Options of the MedMNIST ``.npz`` layout."""

    file: str | None = None  # relative to data.root, or absolute; default: the single *.npz in data.root
    classes: list[str] = field(default_factory=lambda: ["normal", "pneumonia"])  # label index → name
    val_fraction: float = 0.1  # of train, carved as val when the file has no test arrays
    seed: int = 0  # of that carve
    drop_cross_split_duplicates: bool = True  # exclude train (val) images identical to a val/test (test) image

    def __post_init__(self) -> None:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be at least 2 distinct names, got {self.classes}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class _Split:
    """One split of the file: its images, class indices and sample ids."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    digests: list[bytes]  # of each image's bytes, to find exact duplicates


@READERS.register("medmnist", config=MedMNISTConfig)
class MedMNISTReader(FolderReader):
    """Reads a MedMNIST ``.npz`` into a cohort with one ``image`` modality and predefined splits."""

    holds = "the .npz; or set data.reader.file"

    options: MedMNISTConfig

    def read(self, root: Path | None) -> Cohort:
        path = self._find_file(root)
        file_splits = _load_splits(path, len(self.options.classes))
        has_test = "test" in file_splits
        excluded, keep = self._cross_split_duplicates(file_splits, path)
        groups = _twin_groups(file_splits, path)

        renamed = {"train": "train", "val": "val" if has_test else "test", "test": "test"}
        split_of = {sid: renamed[s.name] for s in file_splits.values() for sid in s.ids}
        labels = pd.Series(
            {sid: self.options.classes[int(y)] for s in file_splits.values() for sid, y in zip(s.ids, s.labels)},
            name="label",
            dtype=object,
        )
        if not has_test:
            carved = self._carve_val(labels, groups, [sid for sid in file_splits["train"].ids if sid in keep])
            split_of.update({sid: "val" for sid in carved})
            log.warning(
                "%s has no test_images/test_labels: its val split (%d images) is the test split, and val is a "
                "stratified %.0f%% of train (%d images, seed %d)",
                path,
                len(file_splits["val"].ids),
                100 * self.options.val_fraction,
                len(carved),
                self.options.seed,
            )
        images = {sid: image for s in file_splits.values() for sid, image in zip(s.ids, s.images)}
        cohort = Cohort(
            name=self.name,
            classes=list(self.options.classes),
            labels=labels,
            modalities={"image": ArrayImageModality(images, source=str(path))},
            splits=pd.Series(split_of, name="split", dtype=object).reindex(labels.index),
            excluded=excluded,
            groups=groups,
        )
        cohort.check_labels()
        kept_splits = cohort.splits[cohort.splits.index.isin(keep)]
        log.info("%s: images per split %s", path, kept_splits.value_counts().reindex(FILE_SPLITS).to_dict())
        return cohort

    def _find_file(self, root: Path | None) -> Path:
        if self.options.file:
            path = Path(self.options.file).expanduser()
            if not path.is_absolute():
                if root is None:
                    raise DataError(f"medmnist: file {self.options.file!r} is relative but data.root is not set")
                path = Path(root) / path
            if not path.is_file():
                raise DataError(f"MedMNIST file not found: {path}")
            return path
        root = self.root_folder(root)
        found = sorted(root.glob("*.npz"))
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise DataError(f"{root}: expected one .npz file, found {len(found)} ({names}); set data.reader.file")
        return found[0]

    def _cross_split_duplicates(self, file_splits: dict[str, _Split], path: Path) -> tuple[dict[str, list[str]], set]:
        """Images equal to one in a later split (train → val/test, val → test): reason → ids; and the ids kept."""
        later: dict[str, set[bytes]] = {}
        seen: set[bytes] = set()
        for name in reversed(FILE_SPLITS):
            if name in file_splits:
                later[name] = set(seen)
                seen |= set(file_splits[name].digests)
        duplicates: dict[str, list[str]] = {}
        for name, reason in (("train", TRAIN_DUPLICATE), ("val", VAL_DUPLICATE)):
            split = file_splits[name]
            ids = [sid for sid, digest in zip(split.ids, split.digests) if digest in later[name]]
            if ids:
                duplicates[reason] = ids
        if duplicates:
            action = "excluded" if self.options.drop_cross_split_duplicates else "KEPT (they leak into evaluation)"
            for reason, ids in duplicates.items():
                log.warning("%s: %d image(s) are a %s, %s: %s", path, len(ids), reason, action, ", ".join(ids[:10]))
        excluded = duplicates if self.options.drop_cross_split_duplicates else {}
        dropped = {sid for ids in excluded.values() for sid in ids}
        keep = {sid for split in file_splits.values() for sid in split.ids} - dropped
        return excluded, keep

    def _carve_val(self, labels: pd.Series, groups: pd.Series, train_ids: list[str]) -> list[str]:
        """A stratified, seeded ``val_fraction`` of train; identical images stay on one side."""
        fraction = self.options.val_fraction
        fractions = {"train": 1 - fraction, "val": fraction, "test": 0.0}
        return stratified_split(labels.loc[train_ids], fractions, self.options.seed, groups.loc[train_ids])["val"]


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


def _twin_groups(file_splits: dict[str, _Split], path: Path) -> pd.Series:
    """Sample id → the id of the first identical image in the same split (itself when unique)."""
    groups: dict[str, str] = {}
    for split in file_splits.values():
        first: dict[bytes, str] = {}
        for sid, digest in zip(split.ids, split.digests):
            groups[sid] = first.setdefault(digest, sid)
        twins = sum(1 for sid in split.ids if groups[sid] != sid)
        if twins:
            log.info("%s: %d %s image(s) are exact copies of an earlier one (grouped)", path, twins, split.name)
    return pd.Series(groups, name="image_group", dtype=object)


def _load_splits(path: Path, n_classes: int) -> dict[str, _Split]:
    """The splits in the file, checked: keys, dtypes, shapes, matching counts, labels in range."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"cannot read MedMNIST file {path}: {err}") from None
    has_test = [key for key in ("test_images", "test_labels") if key in arrays]
    required = ["train_images", "train_labels", "val_images", "val_labels"]
    if len(has_test) == 1:
        required += ["test_images", "test_labels"]
    missing = [key for key in required if key not in arrays]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}; the file has {sorted(arrays)}")
    splits: dict[str, _Split] = {}
    for name in FILE_SPLITS[: 3 if has_test else 2]:
        images, labels = arrays[f"{name}_images"], arrays[f"{name}_labels"]
        _check_images(path, f"{name}_images", images)
        labels = _check_labels(path, name, labels, n_classes)
        if len(labels) != len(images):
            raise DataError(
                f"{path}: {name}_images has {len(images)} images but {name}_labels has {len(labels)} labels"
            )
        width = max(5, len(str(len(images) - 1)))
        ids = [f"{name}-{i:0{width}d}" for i in range(len(images))]
        splits[name] = _Split(name, images, labels, ids, [_digest(image) for image in images])
    return splits


def _check_images(path: Path, key: str, images: np.ndarray) -> None:
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {key} has dtype {images.dtype}; expected uint8")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
        raise DataError(f"{path}: {key} has shape {images.shape}; expected (N, H, W) or (N, H, W, 3)")
    if len(images) == 0:
        raise DataError(f"{path}: {key} holds no images")


def _check_labels(path: Path, split: str, labels: np.ndarray, n_classes: int) -> np.ndarray:
    key = f"{split}_labels"
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {key} has dtype {labels.dtype}; expected integer class indices")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(
            f"{path}: {key} has shape {labels.shape}; expected (N,) or (N, 1) class indices (multi-label data "
            "is not supported)"
        )
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        position = int(bad[0])
        raise DataError(
            f"{path}: {split} split, position {position}: label {int(labels[position])} is not a class index "
            f"0..{n_classes - 1} ({len(bad)} such label(s))"
        )
    return labels.astype(np.int64)
