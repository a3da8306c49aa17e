"""Synthetic CT + chest X-ray + cough dataset in the layout of the ``cxr_ct_cough`` reader.

Layout (exactly what :mod:`lightning_fusion.data.readers.cxr_ct_cough` reads)::

    <root>/processed_dataset_split/{train,valid,test}/{CT,CXR,Cough sound}/{Healthy,LungsCancer,Pneumonia,covid}/
        CT/covid/ct_covid_1.png ... ct_covid_12.png          # 64-px grayscale axial slices
        CXR/covid/cxr_covid_1.png ...                         # 64-px grayscale frontal radiographs
        Cough sound/covid/cough_covid_1.png ...              # 64×64 log-mel spectrograms, or with
                                                              # cough_audio=True: cough_covid_1.wav (1 s, 8 kHz)
    <root>/cohort.json                                        # parameters and counts per split and class

Files are numbered from 1 without zero padding, so only a natural sort (``_2`` before ``_10``) pairs
them in order. ``patients`` samples are spread evenly over the 4 classes and, within each class,
about 70/15/15 over train/valid/test (at least one per split).

Class signal
------------
* CT: two dark lung fields in a grey body. LungsCancer has one sharp, dense round nodule (clear);
  Pneumonia (1-2 denser consolidations) and covid (1-3 fainter ground-glass patches) are diffuse
  bright patches from overlapping distributions, so CT confuses Pneumonia with covid.
* CXR: two dark lung fields with ribs. Pneumonia is a dense opacity in the lower zone of one lung,
  covid a fainter haze in both lungs (clear apart); the LungsCancer nodule is small and barely above
  the noise and ribs, so CXR confuses LungsCancer with Healthy.
* Cough: bursts of a tone plus harmonic (a 1-s recording, or its log-mel spectrogram drawn
  directly: low frequencies at the bottom, 80 dB range as in :mod:`lightning_fusion.data.audio`).
  Healthy: 1-2 bursts at 1.6-2.4 kHz; covid: 4-6 bursts at 2.4-3.3 kHz; LungsCancer and Pneumonia:
  2-4 bursts at 0.5-1.2 kHz (confused with each other).

Each modality alone confuses one pair of classes, a different pair each, so any two modalities
together, and fusion of all three, separate the four classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from lightning_fusion.demo.registry import DEMO_LAYOUTS
from lightning_fusion.demo.writing import write_dataset_once

__all__ = ["CLASS_FOLDERS", "MODALITY_FOLDERS", "SPLIT_FOLDERS", "write_cxr_ct_cough"]

DATASET_FOLDER = "processed_dataset_split"
SPLIT_FOLDERS = ("train", "valid", "test")
MODALITY_FOLDERS = ("CT", "CXR", "Cough sound")
CLASS_FOLDERS = ("Healthy", "LungsCancer", "Pneumonia", "covid")
IMAGE_SIZE = 64
AUDIO_RATE = 8000  # Hz
AUDIO_SECONDS = 1.0
_VERSION = 1
_SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
_FILE_PREFIX = {"CT": "ct", "CXR": "cxr", "Cough sound": "cough"}
# Cough bursts per class: (fewest, most) bursts and (low, high) tone frequency in Hz.
_COUGH = {
    "Healthy": ((1, 2), (1600.0, 2400.0)),
    "LungsCancer": ((2, 4), (500.0, 1150.0)),
    "Pneumonia": ((2, 4), (550.0, 1200.0)),
    "covid": ((4, 6), (2400.0, 3300.0)),
}
_DB_RANGE = 80.0  # dB mapped to 0..255 in spectrogram images

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)


@DEMO_LAYOUTS.register(
    "cxr_ct_cough",
    reader="cxr_ct_cough",
    description="CT + chest X-ray + cough (spectrogram PNG or wav), 4 classes, predefined train/valid/test",
)
def write_cxr_ct_cough(root: str | Path, patients: int = 120, seed: int = 0, cough_audio: bool = False) -> Path:
    """Write (or reuse) the synthetic dataset at ``root``; returns ``root``.

    Args:
        root: target folder (gets ``processed_dataset_split/`` and ``cohort.json``); must not exist,
            be empty, or hold this dataset written with the same arguments.
        patients: total samples (>= 12: every class needs one per split).
        seed: seed of ``np.random.default_rng``; the same arguments give identical files.
        cough_audio: write cough recordings (``.wav``, 1 s at 8 kHz) instead of spectrogram images.
    """
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 3 * len(CLASS_FOLDERS):
        raise ValueError(f"patients must be an integer >= {3 * len(CLASS_FOLDERS)}, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    params = {"patients": patients, "seed": seed, "cough_audio": bool(cough_audio), "version": _VERSION}
    return write_dataset_once(root, params, lambda out: _write(out, params), what="synthetic CT/CXR/cough dataset")


def split_counts(patients: int) -> dict[str, dict[str, int]]:
    """Samples per split folder and class: classes as even as possible, splits ~70/15/15 (>= 1 each)."""
    counts: dict[str, dict[str, int]] = {split: {} for split in SPLIT_FOLDERS}
    for index, label in enumerate(CLASS_FOLDERS):
        total = patients // len(CLASS_FOLDERS) + (index < patients % len(CLASS_FOLDERS))
        valid = max(1, round(total * _SPLIT_FRACTIONS[1]))
        test = max(1, round(total * _SPLIT_FRACTIONS[2]))
        counts["train"][label], counts["valid"][label], counts["test"][label] = total - valid - test, valid, test
    return counts


def _write(out: Path, params: dict) -> dict:
    rng = np.random.default_rng(params["seed"])
    counts = split_counts(params["patients"])
    for split in SPLIT_FOLDERS:
        for label in CLASS_FOLDERS:
            folders = {m: out / DATASET_FOLDER / split / m / label for m in MODALITY_FOLDERS}
            for folder in folders.values():
                folder.mkdir(parents=True)
            for number in range(1, counts[split][label] + 1):
                stem = {m: f"{_FILE_PREFIX[m]}_{label.lower()}_{number}" for m in MODALITY_FOLDERS}
                _save_png(_ct_slice(rng, label), folders["CT"] / f"{stem['CT']}.png")
                _save_png(_chest_xray(rng, label), folders["CXR"] / f"{stem['CXR']}.png")
                bursts = _cough_bursts(rng, label)
                cough = folders["Cough sound"] / stem["Cough sound"]
                if params["cough_audio"]:
                    recording = _cough_recording(rng, bursts)
                    soundfile.write(cough.with_suffix(".wav"), recording, AUDIO_RATE, subtype="PCM_16")
                else:
                    _save_png(_cough_spectrogram(rng, bursts), cough.with_suffix(".png"))
    return {"counts": counts}


def _save_png(values: np.ndarray, path: Path) -> None:
    """Save values in [0, 1] as an 8-bit grayscale PNG."""
    Image.fromarray(np.clip(np.round(values * 255), 0, 255).astype(np.uint8)).save(path, optimize=False)


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((_XX - cx) / rx) ** 2 + ((_YY - cy) / ry) ** 2 <= 1


def _blob(cx: float, cy: float, sigma: float) -> np.ndarray:
    return np.exp(-((_XX - cx) ** 2 + (_YY - cy) ** 2) / (2 * sigma**2))


def _smooth_noise(rng: np.random.Generator, sd: float) -> np.ndarray:
    """Spatially correlated noise (3×3 box-filtered Gaussian) with standard deviation ``sd``."""
    white = rng.normal(0, 3 * sd, _XX.shape)
    return sum(np.roll(white, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9


def _point_in(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float]:
    """A random pixel centre (x, y) inside ``mask``."""
    ys, xs = np.nonzero(mask)
    pick = rng.integers(len(xs))
    return float(xs[pick]), float(ys[pick])


def _lungs(rng: np.random.Generator, cy: float, rx: float, ry: float) -> tuple[np.ndarray, np.ndarray]:
    """Left and right lung masks (image left/right), slightly jittered."""
    dx = rng.uniform(10.5, 12.0)
    jitter = rng.normal(0, 0.7, 2)
    left = _ellipse(31.5 - dx + jitter[0], cy + jitter[1], rx, ry)
    right = _ellipse(31.5 + dx + jitter[0], cy + jitter[1], rx, ry)
    return left, right


def _ct_slice(rng: np.random.Generator, label: str) -> np.ndarray:
    """An axial chest CT slice; the lesion depends on the class (see the module docstring)."""
    image = np.zeros(_XX.shape)
    image[_ellipse(31.5, 33 + rng.normal(0, 0.5), rng.uniform(26, 29), rng.uniform(20, 23))] = 0.45
    left, right = _lungs(rng, 31.0, rng.uniform(8.5, 10), rng.uniform(12, 14))
    lungs = left | right
    image[lungs] = 0.08
    image[_ellipse(31.5, 48, 3.5, 3)] = 0.85  # vertebra
    lesion = np.zeros(_XX.shape)
    if label == "LungsCancer":
        cx, cy = _point_in(rng, lungs)
        radius = rng.uniform(2.5, 4.5)
        lesion[_ellipse(cx, cy, radius, radius)] = rng.uniform(0.55, 0.75)
    elif label in ("Pneumonia", "covid"):
        few, many, low, high = (1, 2, 0.22, 0.45) if label == "Pneumonia" else (1, 3, 0.16, 0.38)
        for _ in range(rng.integers(few, many + 1)):
            cx, cy = _point_in(rng, lungs)
            lesion = np.maximum(lesion, rng.uniform(low, high) * _blob(cx, cy, rng.uniform(3, 6)))
    image += lesion * lungs
    return image + _smooth_noise(rng, 0.04)


def _chest_xray(rng: np.random.Generator, label: str) -> np.ndarray:
    """A frontal chest radiograph; the opacity depends on the class (see the module docstring)."""
    image = np.full(_XX.shape, 0.12)
    image[_ellipse(31.5, 36, rng.uniform(26, 29), rng.uniform(27, 30))] = 0.55
    left, right = _lungs(rng, 30.0, rng.uniform(8, 9.5), rng.uniform(16, 19))
    lungs = left | right
    image[lungs] = 0.22
    ribs = np.sin(2 * np.pi * (_YY + 0.02 * (_XX - 31.5) ** 2) / rng.uniform(6.5, 7.5) + rng.uniform(0, 2 * np.pi))
    image += 0.06 * (ribs > 0.5) * lungs
    image[np.abs(_XX - 31.5) < 2.5] += 0.25  # spine
    lesion = np.zeros(_XX.shape)
    if label == "LungsCancer":  # small, faint: hard to see on a radiograph
        cx, cy = _point_in(rng, lungs)
        lesion += rng.uniform(0.04, 0.12) * _blob(cx, cy, rng.uniform(1.2, 2.2))
    elif label == "Pneumonia":  # dense lower-zone opacity in one lung
        side = left if rng.random() < 0.5 else right
        cx, cy = _point_in(rng, side & (_YY > 32))
        lesion += rng.uniform(0.3, 0.5) * _blob(cx, cy, rng.uniform(6, 9))
    elif label == "covid":  # fainter haze in both lungs
        for side in (left, right):
            cx, cy = _point_in(rng, side & (_YY > 26))
            lesion += rng.uniform(0.14, 0.28) * _blob(cx, cy, rng.uniform(4.5, 7))
    image += lesion * lungs
    return image + _smooth_noise(rng, 0.04)


def _cough_bursts(rng: np.random.Generator, label: str) -> list[tuple[float, float, float, float]]:
    """Bursts as (start s, duration s, tone Hz, relative amplitude); tone and count depend on the class."""
    (few, many), (low, high) = _COUGH[label]
    count = int(rng.integers(few, many + 1))
    tone = rng.uniform(low, high)
    starts = np.sort(rng.uniform(0.02, 0.85, count))
    return [
        (
            float(start),
            float(rng.uniform(0.05, 0.12)),
            float(tone * rng.uniform(0.95, 1.05)),
            float(rng.uniform(0.5, 1)),
        )
        for start in starts
    ]


def _cough_recording(rng: np.random.Generator, bursts: list[tuple[float, float, float, float]]) -> np.ndarray:
    """A 1-s mono recording at 8 kHz: windowed tone + harmonic per burst over faint noise, in [-1, 1]."""
    t = np.arange(int(AUDIO_RATE * AUDIO_SECONDS)) / AUDIO_RATE
    signal = rng.normal(0, 0.003, t.shape)
    for start, duration, tone, amplitude in bursts:
        inside = (t >= start) & (t < start + duration)
        envelope = np.sin(np.pi * (t[inside] - start) / duration) ** 2
        phase = 2 * np.pi * tone * (t[inside] - start)
        signal[inside] += (
            amplitude * envelope * (np.sin(phase) + 0.35 * np.sin(2 * phase) + rng.normal(0, 0.05, phase.shape))
        )
    return (0.9 * signal / np.abs(signal).max()).astype(np.float32)


def _cough_spectrogram(rng: np.random.Generator, bursts: list[tuple[float, float, float, float]]) -> np.ndarray:
    """The log-mel picture of the bursts: rows are mel bands up to 4 kHz (low at the bottom), 64 frames."""
    top_mel = _mel(AUDIO_RATE / 2)
    decibels = np.full(_XX.shape, -_DB_RANGE + 12.0) + rng.normal(0, 4.0, _XX.shape)  # noise floor
    frame_time = (_XX + 0.5) / IMAGE_SIZE * AUDIO_SECONDS
    for start, duration, tone, amplitude in bursts:
        envelope = np.clip(np.sin(np.pi * (frame_time - start) / duration), 0, None) * (frame_time >= start)
        envelope *= frame_time < start + duration
        loudness = 20 * np.log10(amplitude * envelope + 1e-4)
        for harmonic, gain in ((1, 0.0), (2, -9.0)):
            row = (IMAGE_SIZE - 1) * (1 - _mel(min(harmonic * tone, AUDIO_RATE / 2)) / top_mel)
            band = -((_YY - row) ** 2) / (2 * 1.3**2) * 6  # dB fall-off around the band
            decibels = np.maximum(decibels, loudness + gain + band)
    return np.clip((decibels + _DB_RANGE) / _DB_RANGE, 0, 1)


def _mel(hertz: float) -> float:
    """HTK mel scale (as ``librosa.hz_to_mel(htk=True)``)."""
    return 2595.0 * np.log10(1.0 + hertz / 700.0)
