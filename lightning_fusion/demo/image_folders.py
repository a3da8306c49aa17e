"""Synthetic short-axis cardiac MRI slices in class folders (the ``image_folders`` layout).

Layout (2–3 slices per patient, one image = one sample)::

    <root>/Normal/cmr0001_slice1.png
    <root>/Normal/cmr0001_slice2.png
    <root>/Sick/cmr0002_slice1.png
    ...
    <root>/cohort.json      # generation parameters, class counts, files stored in other formats

Read it with ``{name: image_folders, patient_pattern: '^(\\w+)_slice\\d+'}`` so that a patient's
slices stay in one split.

Each 64-px grayscale slice is a bright blood pool (left-ventricular cavity) inside a darker ring
(myocardium), a bright right-ventricle crescent beside it, in a dim chest, with noise, a random
position and gain; the cavity shrinks from base to apex across a patient's slices.

Class signal:

* Normal (~55 %): cavity radius 8–10.5 px, wall 5–6.5 px all round.
* Sick, dilated (half of Sick): cavity radius 13–16 px with a thin 3–4.5 px wall.
* Sick, infarct (half of Sick): normal cavity, but a 60–110° wall segment thinned to ~2 px and darker.

A few files are stored as RGB, opaque RGBA or 16-bit grayscale PNG (listed in ``cohort.json``), as
mixed exports are, so the reader's conversion is exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lightning_fusion.demo.registry import DEMO_LAYOUTS
from lightning_fusion.demo.writing import check_integers, write_dataset_once

CLASS_FOLDERS = ("Normal", "Sick")
PATIENT_PATTERN = r"^(\w+)_slice\d+"
IMAGE_SIZE = 64
SICK_FRACTION = 0.45
_VERSION = 1
_SLICE_SCALE = (1.1, 1.0, 0.8)  # cavity size at base, mid, apex


@DEMO_LAYOUTS.register(
    "image_folders",
    reader="image_folders",
    reader_options={"patient_pattern": PATIENT_PATTERN},
    description="cardiac-MRI-like 64-px slices in Normal/Sick folders, 2-3 per patient (<patient>_slice<k>.png)",
)
def write_image_folders(root: str | Path, patients: int = 80, seed: int = 0) -> Path:
    """Write (or reuse) the synthetic slices at ``root``; same arguments give byte-identical files.

    Raises:
        ValueError: fewer than 10 patients or a negative seed.
        FileExistsError: ``root`` holds something else.
    """
    check_integers(patients=(patients, 10), seed=(seed, 0))
    params = {"layout": "image_folders", "patients": int(patients), "seed": int(seed), "version": _VERSION}
    return write_dataset_once(root, params, lambda out: _write(out, int(patients), int(seed)), what="image_folders set")


def _write(out: Path, n_patients: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n_sick = round(n_patients * SICK_FRACTION)
    labels = rng.permutation(np.repeat([0, 1], [n_patients - n_sick, n_sick]))
    slices: list[tuple[Path, np.ndarray]] = []
    for number, label in enumerate(labels, start=1):
        folder = out / CLASS_FOLDERS[label]
        folder.mkdir(exist_ok=True)
        heart = _patient_heart(rng, int(label))
        n_slices = int(rng.integers(2, 4))
        for k in range(n_slices):
            scale = _SLICE_SCALE[k] if n_slices == 3 else _SLICE_SCALE[2 * k]
            slices.append((folder / f"cmr{number:04d}_slice{k + 1}.png", _render_slice(rng, heart, scale)))
    formats = _other_formats(rng, len(slices))
    stored: dict[str, list[str]] = {"RGB": [], "RGBA": [], "I;16": []}
    for i, (path, pixels) in enumerate(slices):
        mode = formats.get(i, "L")
        if mode == "I;16":
            image = Image.fromarray(pixels.astype(np.uint16) * 257)
        else:
            image = Image.fromarray(pixels, mode="L").convert(mode)
        image.save(path, optimize=False)
        if mode != "L":
            stored[mode].append(path.relative_to(out).as_posix())
    counts = np.bincount(labels, minlength=2)
    return {
        "class_counts": dict(zip(CLASS_FOLDERS, counts.tolist())),
        "images": len(slices),
        "patient_pattern": PATIENT_PATTERN,
        "other_formats": {mode: sorted(paths) for mode, paths in stored.items()},
    }


def _patient_heart(rng: np.random.Generator, label: int) -> dict:
    """The patient's anatomy: cavity radius, wall thickness and (infarct) the thinned segment."""
    heart = {"cavity": rng.uniform(8.0, 10.5), "wall": rng.uniform(5.0, 6.5), "segment": None}
    if label == 1:
        if rng.random() < 0.5:  # dilated cardiomyopathy
            heart.update(cavity=rng.uniform(13.0, 16.0), wall=rng.uniform(3.0, 4.5))
        else:  # infarct: a thinned, darker wall segment (centre angle, half width)
            heart["segment"] = (rng.uniform(-np.pi, np.pi), np.deg2rad(rng.uniform(30.0, 55.0)))
    return heart


def _render_slice(rng: np.random.Generator, heart: dict, scale: float) -> np.ndarray:
    """One 64-px short-axis slice as ``uint8``."""
    size = IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cx, cy = size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4)
    radius, angle = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx)
    cavity = heart["cavity"] * scale * rng.uniform(0.95, 1.05)
    wall = np.full_like(radius, heart["wall"] * rng.uniform(0.9, 1.1))
    darkening = np.zeros_like(radius)
    if heart["segment"] is not None:
        centre, half_width = heart["segment"]
        distance = np.abs((angle - centre + np.pi) % (2 * np.pi) - np.pi)
        inside = np.clip((half_width - distance) / 0.25 + 0.5, 0, 1)  # soft segment edges
        wall = wall - inside * (wall - 2.0)
        darkening = inside * 25.0
    image = np.full_like(radius, 5.0)
    image = _paint(image, np.hypot((xx - size / 2) / 29, (yy - size / 2 - 1) / 25), 1.0, 90.0, soft=0.04)  # chest
    rv_centre = cx - cavity - heart["wall"] - 0.4 * cavity
    image = _paint(image, np.hypot((xx - rv_centre) / 0.8, yy - cy), cavity * 1.1, 185.0)  # right ventricle
    image = _paint(image, radius - wall, cavity, 45.0 - darkening)  # myocardium (outer edge)
    image = _paint(image, radius, cavity, 215.0)  # blood pool
    image = image * rng.uniform(0.85, 1.15) + rng.normal(0.0, 8.0, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _paint(image: np.ndarray, distance: np.ndarray, edge: float, value: np.ndarray | float, soft: float = 0.6):
    """Lay ``value`` where ``distance < edge``, with an anti-aliased (logistic) edge."""
    alpha = 1.0 / (1.0 + np.exp(np.clip((distance - edge) / soft, -50, 50)))
    return image * (1 - alpha) + value * alpha


def _other_formats(rng: np.random.Generator, n_files: int) -> dict[int, str]:
    """File index → PNG mode for the few files not stored as 8-bit grayscale."""
    counts = {"RGB": max(1, n_files // 20), "RGBA": max(1, n_files // 40), "I;16": max(1, n_files // 20)}
    chosen = rng.choice(n_files, size=sum(counts.values()), replace=False)
    modes = [mode for mode, n in counts.items() for _ in range(n)]
    return {int(i): mode for i, mode in zip(chosen, modes)}
