"""Deterministic synthetic dataset in the ECG multimodal study layout (read by the ``ecg`` reader).

Written exactly as the real export::

    <root>/images/<index>/lead_II.jpg   # the signal drawn on an ECG-paper grid, 500×50 px (some grayscale)
    <root>/ecg_signals.csv              # index,0,...,499: 5 s of one lead at 100 Hz, in mV
    <root>/clinical.xlsx                # IDX, age, sex (1 = male), systolic_bp, diastolic_bp, diabetes; some NaNs
    <root>/labels.xlsx                  # index, label (Normal / Abnormal / Borderline)
    <root>/cohort.json                  # generation parameters, class counts, the incomplete indices

Generative story
----------------
Each recording is a train of beats, every wave a Gaussian bump (P, Q, R, S, T) at a heart rate of
55-95 bpm with slight RR variability, baseline wander and noise; R and T amplitudes vary per
recording. Classes (~55 / 35 / 10 %):

* **normal**: the above.
* **abnormal**: one or two of: ST deviation (a 0.15-0.35 mV plateau between S and T, depression
  twice as likely as elevation), a wide QRS (QRS 2-2.6× wider, lower R, as in bundle-branch block),
  irregular RR with no P waves (as in atrial fibrillation); heart rate 10 bpm higher on average.
* **borderline**: one of the same changes, mild (ST 0.05-0.12 mV, QRS 1.3-1.5×, RR jitter 8 %).
  A fifth of the abnormal recordings have only such mild changes, so the ECG alone is not enough.

The changes are in the shape and timing of beats at random phase: shift-invariant models (``resnet1d``,
a CNN on the strip) learn them, an MLP on raw time points (``signal_mlp``) hardly does.

The lead image shows the same samples (1 px per sample, fixed mV scale, so ST levels and QRS widths
survive), drawn as a dark trace with PIL; about 15 % are saved grayscale, as mixed exports are. The
clinical table carries a weak class signal (abnormal: older, more often male and diabetic, higher
blood pressure) with a few missing values.

Some indices are deliberately incomplete so a join has something to report (listed in the manifest
under ``incomplete``): two labelled indices without an image folder, one without a clinical row, and
one with an image, a signal and a clinical row but no label.

With the same arguments the CSV and the JPEG files are byte-identical; the ``.xlsx`` files hold
identical cells (openpyxl stamps the save time into the workbook).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from lightning_fusion.demo.registry import DEMO_LAYOUTS
from lightning_fusion.demo.writing import check_integers, write_dataset_once

__all__ = ["CLASSES", "write_ecg"]

CLASSES = ("normal", "abnormal", "borderline")
_LABEL_TEXT = {"normal": "Normal", "abnormal": "Abnormal", "borderline": "Borderline"}
_CLASS_FRACTIONS = (0.55, 0.35, 0.10)
_VERSION = 1
SAMPLING_RATE = 100  # Hz
SAMPLES = 500  # 5 s
IMAGE_HEIGHT = 50  # px; the width is SAMPLES (1 px per sample)
_MV_RANGE = (-1.0, 1.6)  # mV shown from the bottom to the top of the strip
_GRAYSCALE_FRACTION = 0.15
_SUBTLE_ABNORMAL = 0.2  # abnormal recordings whose ECG change is as mild as a borderline one
# Waves of one beat: amplitude (mV), offset from the R peak (s), width (s).
_WAVES = {
    "P": (0.15, -0.18, 0.025),
    "Q": (-0.10, -0.035, 0.010),
    "R": (1.00, 0.0, 0.012),
    "S": (-0.25, 0.035, 0.012),
    "ST": (0.0, 0.13, 0.045),  # the ST segment; zero unless deviated
    "T": (0.30, 0.28, 0.050),
}


@DEMO_LAYOUTS.register(
    "ecg",
    reader="ecg",
    description="ECG study: lead-strip JPEG per index + single-lead signal CSV + clinical/labels .xlsx",
)
def write_ecg(root: str | Path, patients: int = 120, seed: int = 0) -> Path:
    """Write (or reuse) a synthetic ECG dataset of ``patients`` indices at ``root``.

    Raises:
        ValueError: ``patients`` < 20 or a negative ``seed``.
        FileExistsError: ``root`` holds something else.
    """
    check_integers(patients=(patients, 20), seed=(seed, 0))
    params = {"layout": "ecg", "patients": int(patients), "seed": int(seed), "version": _VERSION}
    return write_dataset_once(
        root, params, lambda out: _write(out, int(patients), int(seed)), what="synthetic ECG dataset"
    )


def _class_counts(n: int) -> list[int]:
    """Exact class counts: rounded, at least 2 each, remainder on the majority class."""
    counts = [max(2, round(n * f)) for f in _CLASS_FRACTIONS]
    counts[0] += n - sum(counts)
    return counts


def _write(out: Path, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.repeat(np.arange(len(CLASSES)), _class_counts(n)))
    indices = np.arange(1, n + 1)
    # The deliberately incomplete indices, among non-borderline recordings (borderline is often excluded).
    chosen = rng.choice(indices[classes < 2], size=4, replace=False)
    no_image, no_clinical, no_label = sorted(int(i) for i in chosen[:2]), [int(chosen[2])], [int(chosen[3])]

    signals = np.stack([_signal(rng, CLASSES[c]) for c in classes])
    grid = _grid_image()
    grayscale = rng.random(n) < _GRAYSCALE_FRACTION
    for row, index in enumerate(indices):
        if index in no_image:
            continue
        folder = out / "images" / str(index)
        folder.mkdir(parents=True)
        image = _draw_strip(grid, signals[row])
        (image.convert("L") if grayscale[row] else image).save(folder / "lead_II.jpg", quality=90)

    signal_table = pd.DataFrame(np.round(signals, 4), columns=[str(t) for t in range(SAMPLES)])
    signal_table.insert(0, "index", indices)
    signal_table.iloc[rng.permutation(n)].to_csv(out / "ecg_signals.csv", index=False, lineterminator="\n")

    clinical = _clinical_table(rng, classes)
    clinical.insert(0, "IDX", indices)
    clinical = clinical[~np.isin(indices, no_clinical)]
    clinical.iloc[rng.permutation(len(clinical))].to_excel(out / "clinical.xlsx", index=False)

    labels = pd.DataFrame({"index": indices, "label": [_LABEL_TEXT[CLASSES[c]] for c in classes]})
    labels = labels[~np.isin(indices, no_label)]
    labels.iloc[rng.permutation(len(labels))].to_excel(out / "labels.xlsx", index=False)

    labelled = classes[~np.isin(indices, no_label)]
    return {
        "class_counts": {name: int((labelled == c).sum()) for c, name in enumerate(CLASSES)},
        "incomplete": {"no image folder": no_image, "no clinical row": no_clinical, "no label": no_label},
        "samples": SAMPLES,
        "sampling_rate_hz": SAMPLING_RATE,
    }


def _signal(rng: np.random.Generator, label: str) -> np.ndarray:
    """One recording, ``(SAMPLES,)`` in mV."""
    waves = {name: list(values) for name, values in _WAVES.items()}
    heart_rate = rng.uniform(55, 95) + (rng.normal(10, 5) if label == "abnormal" else 0.0)
    rr_jitter = 0.03
    changes: Sequence[str] = ()
    if label != "normal":
        options = ("st", "wide_qrs", "irregular")
        count = 1 if label == "borderline" else rng.integers(1, 3)
        changes = [options[i] for i in rng.choice(3, size=count, replace=False)]
    mild = label == "borderline" or (label == "abnormal" and rng.random() < _SUBTLE_ABNORMAL)
    if "st" in changes:
        level = rng.uniform(0.05, 0.12) if mild else rng.uniform(0.15, 0.35)
        waves["ST"][0] = level if rng.random() < 1 / 3 else -level
    if "wide_qrs" in changes:
        widen = rng.uniform(1.3, 1.5) if mild else rng.uniform(2.0, 2.6)
        for name in ("Q", "R", "S"):
            waves[name][1] *= widen
            waves[name][2] *= widen
        waves["R"][0] *= 0.75
    if "irregular" in changes:
        rr_jitter = 0.08 if mild else rng.uniform(0.18, 0.28)
        if not mild:
            waves["P"][0] = 0.0
    waves["R"][0] *= rng.uniform(0.7, 1.3)
    waves["T"][0] *= rng.uniform(0.6, 1.4)

    duration = SAMPLES / SAMPLING_RATE
    rr = 60.0 / heart_rate
    intervals = rr * np.clip(1 + rng.normal(0, rr_jitter, int(duration / rr) + 4), 0.5, 1.6)
    beats = rng.uniform(-rr, 0) + np.concatenate([[0.0], np.cumsum(intervals)])
    amplitude, offset, width = (np.array(v) for v in zip(*waves.values()))
    t = np.arange(SAMPLES) / SAMPLING_RATE
    shift = t[:, None, None] - beats[None, :, None] - offset[None, None, :]
    ecg = (amplitude * np.exp(-0.5 * (shift / width) ** 2)).sum(axis=(1, 2))
    wander = rng.uniform(0.03, 0.12) * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 2 * np.pi))
    return ecg + wander + rng.normal(0, rng.uniform(0.01, 0.03), SAMPLES)


def _grid_image() -> Image.Image:
    """ECG paper: light pink, minor lines every 5 px, major lines every 25 px."""
    image = Image.new("RGB", (SAMPLES, IMAGE_HEIGHT), (255, 244, 244))
    draw = ImageDraw.Draw(image)
    for step, colour in ((5, (250, 215, 215)), (25, (235, 160, 160))):
        for x in range(0, SAMPLES, step):
            draw.line([(x, 0), (x, IMAGE_HEIGHT - 1)], fill=colour)
        for y in range(0, IMAGE_HEIGHT, step):
            draw.line([(0, y), (SAMPLES - 1, y)], fill=colour)
    return image


def _draw_strip(grid: Image.Image, signal: np.ndarray) -> Image.Image:
    """The signal as a dark trace on the grid, on a fixed mV scale (clipped at the strip's edges)."""
    low, high = _MV_RANGE
    rows = (high - np.clip(signal, low, high)) / (high - low) * (IMAGE_HEIGHT - 1)
    image = grid.copy()
    ImageDraw.Draw(image).line(list(zip(range(SAMPLES), rows.tolist())), fill=(25, 25, 40), width=1)
    return image


def _clinical_table(rng: np.random.Generator, classes: np.ndarray) -> pd.DataFrame:
    """Age, sex, blood pressure and diabetes with a weak class signal; BP and diabetes sometimes missing."""
    n = len(classes)

    def per_class(values: Sequence[float]) -> np.ndarray:
        return np.asarray(values, dtype=float)[classes]

    table = pd.DataFrame(
        {
            "age": np.round(np.clip(rng.normal(per_class([54, 62, 58]), 12), 18, 95)).astype(int),
            "sex": (rng.random(n) < per_class([0.45, 0.60, 0.52])).astype(int),
            "systolic_bp": np.round(rng.normal(per_class([124, 134, 129]), 15)),
            "diabetes": (rng.random(n) < per_class([0.12, 0.28, 0.20])).astype(float),
        }
    )
    table.insert(3, "diastolic_bp", np.round(table["systolic_bp"] * 0.6 + rng.normal(5, 7, n)))
    bp_missing = rng.random(n) < 0.04
    table.loc[bp_missing, ["systolic_bp", "diastolic_bp"]] = np.nan
    table.loc[rng.random(n) < 0.03, "diabetes"] = np.nan
    return table
