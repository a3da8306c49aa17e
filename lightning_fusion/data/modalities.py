"""Modality sources: where one modality's data is for each patient, and how it is loaded and checked.

* :class:`ImageStackModality` — one or more image files per patient (e.g. 3 SPECT views), each
  cropped, resized and stacked along the channel axis: 3 RGB views → ``(H, W, 9)`` ``uint8``.
* :class:`TableModality` — one row of numeric features per patient (e.g. clinical metrics).

Loading validates as it goes: an unreadable image or one with the wrong number of channels is a
:class:`~lightning_fusion.data.cohort.DataError` naming the patient and the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from lightning_fusion.data.cohort import DataError

_MODES = {1: "L", 3: "RGB"}


class ImageStackModality:
    """Image files per patient, stacked into one ``(H, W, views × channels_per_view)`` array.

    Args:
        files: patient id → the ordered files of its views.
        channels_per_view: 3 for RGB views, 1 for grayscale.
        crop: pixels removed from each edge before resizing, ``(top, bottom, left, right)`` (e.g. the
            patient-details banner that clinical software burns into exported images).
    """

    kind = "image"

    def __init__(
        self,
        files: Mapping[str, Sequence[Path]],
        channels_per_view: int = 3,
        crop: Sequence[int] | None = None,
    ) -> None:
        if channels_per_view not in _MODES:
            raise ValueError(f"channels_per_view must be 1 or 3, got {channels_per_view}")
        self.files = {pid: [Path(f) for f in paths] for pid, paths in files.items()}
        self.channels_per_view = channels_per_view
        self.crop = tuple(crop) if crop else None

    @property
    def patient_ids(self) -> set[str]:
        return set(self.files)

    def load(self, patient_id: str, image_size: int) -> np.ndarray:
        """The patient's views as one ``(image_size, image_size, C)`` ``uint8`` array."""
        views = [self._load_view(patient_id, path, image_size) for path in self.files[patient_id]]
        return np.concatenate(views, axis=2)

    def load_many(self, patient_ids: Sequence[str], image_size: int) -> np.ndarray:
        """``(N, H, W, C)`` ``uint8`` for the given patients, in order (decoded once, kept in memory)."""
        return np.stack([self.load(pid, image_size) for pid in patient_ids])

    def _load_view(self, patient_id: str, path: Path, image_size: int) -> np.ndarray:
        try:
            with Image.open(path) as image:
                image.load()
        except FileNotFoundError:
            raise DataError(f"patient {patient_id}: image file not found: {path}") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataError(f"patient {patient_id}: unreadable image {path}: {err}") from None
        image = _drop_opaque_alpha(image, path, patient_id)
        bands = len(image.getbands())
        if bands != self.channels_per_view:
            raise DataError(
                f"patient {patient_id}: {path} has {bands} channel(s) (mode {image.mode}); "
                f"expected {self.channels_per_view} per view"
            )
        image = image.convert(_MODES[self.channels_per_view])
        if self.crop:
            top, bottom, left, right = self.crop
            width, height = image.size
            if top + bottom >= height or left + right >= width:
                raise DataError(f"patient {patient_id}: crop {self.crop} removes all of {path} ({width}×{height})")
            image = image.crop((left, top, width - right, height - bottom))
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        return array[:, :, None] if array.ndim == 2 else array


def _drop_opaque_alpha(image: Image.Image, path: Path, patient_id: str) -> Image.Image:
    """RGBA/LA exports with a fully opaque alpha are really RGB/L; a real alpha channel is an error."""
    if image.mode not in ("RGBA", "LA"):
        return image
    alpha = np.asarray(image.getchannel("A"))
    if alpha.min() < 255:
        raise DataError(f"patient {patient_id}: {path} has a transparent alpha channel; export it without alpha")
    return image.convert("RGB" if image.mode == "RGBA" else "L")


class TableModality:
    """Numeric features per patient: a table indexed by normalised patient id."""

    kind = "vector"

    def __init__(self, frame: pd.DataFrame, source: str) -> None:
        self.frame = frame
        self.source = source

    @property
    def patient_ids(self) -> set[str]:
        return set(self.frame.index)

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    def rows(self, patient_ids: Sequence[str]) -> pd.DataFrame:
        return self.frame.loc[list(patient_ids)]
