"""Modality sources: where one modality's data is for each patient, and how it is loaded and checked.

* :class:`ImageStackModality` — one or more image files per patient (e.g. 3 SPECT views), each
  cropped, resized and stacked along the channel axis: 3 RGB views → ``(H, W, 9)`` ``uint8``.
* :class:`ArrayImageModality` — images already in memory (e.g. a MedMNIST ``.npz``), resized on load.
* :class:`SignalModality` — a ``(leads, samples)`` time series per patient (e.g. a 12-lead ECG).
* :class:`TableModality` — one row of numeric features per patient (e.g. clinical metrics).

Loading validates as it goes: an unreadable image or one with the wrong number of channels is a
:class:`~lightning_fusion.data.cohort.DataError` naming the patient and the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from lightning_fusion.errors import DataError

_MODES = {1: "L", 3: "RGB"}


class ImageStackModality:
    """Image files per patient, stacked into one ``(H, W, views × channels_per_view)`` array.

    Args:
        files: patient id → the ordered files of its views.
        channels_per_view: 3 for RGB views, 1 for grayscale.
        crop: pixels removed from each edge before resizing, ``(top, bottom, left, right)`` (e.g. the
            patient-details banner that clinical software burns into exported images).
        convert: convert every image to ``channels_per_view`` (RGB → grayscale or back) instead of
            rejecting one with another channel count; for folders that mix grayscale and RGB exports.
    """

    kind = "image"

    def __init__(
        self,
        files: Mapping[str, Sequence[Path]],
        channels_per_view: int = 3,
        crop: Sequence[int] | None = None,
        convert: bool = False,
    ) -> None:
        if channels_per_view not in _MODES:
            raise ValueError(f"channels_per_view must be 1 or 3, got {channels_per_view}")
        self.files = {pid: [Path(f) for f in paths] for pid, paths in files.items()}
        self.channels_per_view = channels_per_view
        self.crop = tuple(crop) if crop else None
        self.convert = convert

    @property
    def patient_ids(self) -> set[str]:
        return set(self.files)

    def fingerprint(self, patient_ids: Sequence[str]) -> dict:
        """What the decoded images of ``patient_ids`` depend on: each view's path, modification time and
        size, and the channel, crop and conversion settings (the key of a memory map)."""
        files = []
        for pid in patient_ids:
            for path in self.files[pid]:
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    raise DataError(f"patient {pid}: image file not found: {path}") from None
                files.append([str(path.resolve()), stat.st_mtime_ns, stat.st_size])
        return {"files": files, "channels_per_view": self.channels_per_view, "crop": self.crop, "convert": self.convert}

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
        if bands != self.channels_per_view and not (self.convert and image.mode in ("L", "RGB", "P", "I", "I;16")):
            raise DataError(
                f"patient {patient_id}: {path} has {bands} channel(s) (mode {image.mode}); "
                f"expected {self.channels_per_view} per view"
            )
        image = _to_mode(image, _MODES[self.channels_per_view])
        if self.crop:
            top, bottom, left, right = self.crop
            width, height = image.size
            if top + bottom >= height or left + right >= width:
                raise DataError(f"patient {patient_id}: crop {self.crop} removes all of {path} ({width}×{height})")
            image = image.crop((left, top, width - right, height - bottom))
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        return array[:, :, None] if array.ndim == 2 else array


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert to ``L``/``RGB``; 16-bit grayscale (``I;16``/``I``) is rescaled to its own range first."""
    if image.mode in ("I", "I;16", "I;16B", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        image = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return image.convert(mode)


def _drop_opaque_alpha(image: Image.Image, path: Path, patient_id: str) -> Image.Image:
    """RGBA/LA exports with a fully opaque alpha are really RGB/L; a real alpha channel is an error."""
    if image.mode not in ("RGBA", "LA"):
        return image
    alpha = np.asarray(image.getchannel("A"))
    if alpha.min() < 255:
        raise DataError(f"patient {patient_id}: {path} has a transparent alpha channel; export it without alpha")
    return image.convert("RGB" if image.mode == "RGBA" else "L")


class ArrayImageModality:
    """Images held in memory, one ``(H, W)`` or ``(H, W, C)`` ``uint8`` array per patient.

    For datasets distributed as arrays (MedMNIST ``.npz``). Images are resized to ``image_size``
    on load when their size differs (bilinear, like :class:`ImageStackModality`).
    """

    kind = "image"

    def __init__(self, images: Mapping[str, np.ndarray], source: str) -> None:
        self.images = dict(images)
        self.source = source

    @property
    def patient_ids(self) -> set[str]:
        return set(self.images)

    def fingerprint(self, patient_ids: Sequence[str]) -> dict:
        """A digest of the images of ``patient_ids`` (they are in memory already; hashing them is cheap
        next to decoding), for the key of a memory map."""
        digest = hashlib.sha256()
        for pid in patient_ids:
            array = np.ascontiguousarray(self.images[pid])
            digest.update(f"{pid}:{array.dtype}:{array.shape}".encode())
            digest.update(array.tobytes())
        return {"source": self.source, "images": digest.hexdigest()}

    def load_many(self, patient_ids: Sequence[str], image_size: int) -> np.ndarray:
        """``(N, image_size, image_size, C)`` ``uint8`` for the given patients, in order."""
        return np.stack([self._load(pid, image_size) for pid in patient_ids])

    def _load(self, patient_id: str, image_size: int) -> np.ndarray:
        array = np.asarray(self.images[patient_id])
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
            raise DataError(
                f"{self.source}: sample {patient_id}: expected a uint8 (H, W) or (H, W, 1|3) image, "
                f"got {array.dtype} {array.shape}"
            )
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.shape[:2] != (image_size, image_size):
            image = Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")
            array = np.asarray(image.resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.uint8)
        return array[:, :, None] if array.ndim == 2 else array


class SignalModality:
    """A ``(leads, samples)`` ``float32`` time series per patient, loaded on demand and checked.

    Args:
        load: patient id → its signal as a ``(leads, samples)`` array (or ``(samples,)`` for one lead);
            e.g. a row of a CSV table or a WFDB record read with ``wfdb.rdrecord``.
        patient_ids: the patients that have a signal.
        source: the file or folder the signals come from (for error messages).
        leads: lead names, in row order (e.g. ``I, II, ..., V6``), when known.

    Every signal must have the same shape and only finite values: a row of the wrong length or a
    ``NaN`` is a :class:`DataError` naming the patient, never a silent pad or fill.
    """

    kind = "signal"

    def __init__(
        self,
        load: Callable[[str], np.ndarray],
        patient_ids: Sequence[str],
        source: str,
        leads: Sequence[str] | None = None,
    ) -> None:
        self._load = load
        self._ids = set(patient_ids)
        self.source = source
        self.leads = list(leads) if leads is not None else None

    @property
    def patient_ids(self) -> set[str]:
        return set(self._ids)

    def load(self, patient_id: str) -> np.ndarray:
        signal = np.asarray(self._load(patient_id), dtype=np.float32)
        if signal.ndim == 1:
            signal = signal[None, :]
        if signal.ndim != 2 or signal.shape[1] == 0:
            raise DataError(f"{self.source}: patient {patient_id}: expected (leads, samples), got shape {signal.shape}")
        if self.leads is not None and signal.shape[0] != len(self.leads):
            raise DataError(
                f"{self.source}: patient {patient_id}: {signal.shape[0]} leads, expected {len(self.leads)} {self.leads}"
            )
        bad = ~np.isfinite(signal)
        if bad.any():
            lead, sample = (int(i) for i in np.argwhere(bad)[0])
            raise DataError(
                f"{self.source}: patient {patient_id}: {int(bad.sum())} missing or non-finite value(s), "
                f"first at lead {lead}, sample {sample}"
            )
        return signal

    def load_many(self, patient_ids: Sequence[str]) -> np.ndarray:
        """``(N, leads, samples)`` ``float32`` for the given patients; all must have the same shape."""
        signals = [self.load(pid) for pid in patient_ids]
        if not signals:
            return np.zeros((0, 0, 0), dtype=np.float32)
        shapes: dict[tuple[int, ...], list[str]] = {}
        for pid, signal in zip(patient_ids, signals):
            shapes.setdefault(signal.shape, []).append(pid)
        if len(shapes) > 1:
            common = max(shapes, key=lambda shape: len(shapes[shape]))
            odd = {pid: shape for shape, ids in shapes.items() if shape != common for pid in ids}
            examples = ", ".join(f"{pid} {shape}" for pid, shape in list(odd.items())[:5])
            raise DataError(
                f"{self.source}: signals must all have shape {common} (leads, samples); "
                f"{len(odd)} patient(s) differ: {examples}"
            )
        return np.stack(signals)


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
