"""Synthetic 28×28 chest X-rays in the MedMNIST ``.npz`` form (the ``medmnist`` layout).

Layout (as MedMNIST distributes PneumoniaMNIST; ``with_test=False`` writes the train+val form)::

    <root>/pneumoniamnist.npz            # or pneumoniamnist_trainval.npz without test arrays
        train_images (N, 28, 28) uint8   train_labels (N, 1) uint8: 0 normal, 1 pneumonia
        val_images, val_labels           (10 % of the images)
        test_images, test_labels         (10 %; only with ``with_test``)
    <root>/cohort.json                   # parameters, counts, the duplicates planted (below)

Each image is a bright body with two dark lung fields, a brighter mediastinum between them, faint
ribs, noise, and a random shift, scale and gain; ~74 % are pneumonia, as in PneumoniaMNIST.

Class signal: pneumonia adds one or two hazy opacities (bright Gaussian blobs, lower lungs more
often) inside the lung fields and lightens the lungs slightly.

Like the official data, a few train images are exact copies of val/test images (``patients // 100``,
at least one) and one train image is a copy of another train image; ``cohort.json`` lists them.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from lightning_fusion.demo.registry import DEMO_LAYOUTS
from lightning_fusion.demo.writing import check_integers, write_dataset_once

IMAGE_SIZE = 28
PNEUMONIA_FRACTION = 0.74
_VERSION = 1
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: same arguments → byte-identical file


@DEMO_LAYOUTS.register(
    "medmnist",
    reader="medmnist",
    description="PneumoniaMNIST-like 28-px chest X-rays in a MedMNIST .npz (train/val/test arrays)",
)
def write_medmnist(root: str | Path, patients: int = 200, seed: int = 0, with_test: bool = True) -> Path:
    """Write (or reuse) the synthetic ``.npz`` at ``root``; ``patients`` is the number of images.

    Raises:
        ValueError: fewer than 40 images or a negative seed.
        FileExistsError: ``root`` holds something else.
    """
    check_integers(patients=(patients, 40), seed=(seed, 0))
    params = {
        "layout": "medmnist",
        "patients": int(patients),
        "seed": int(seed),
        "with_test": bool(with_test),
        "version": _VERSION,
    }
    return write_dataset_once(
        root, params, lambda out: _write(out, int(patients), int(seed), bool(with_test)), what="MedMNIST set"
    )


def _write(out: Path, n_images: int, seed: int, with_test: bool) -> dict:
    rng = np.random.default_rng(seed)
    n_val = round(n_images * 0.1)
    n_test = n_val if with_test else 0
    sizes = {"train": n_images - n_val - n_test, "val": n_val}
    if with_test:
        sizes["test"] = n_test
    arrays: dict[str, np.ndarray] = {}
    for split, n in sizes.items():
        n_pneumonia = min(n - 1, max(1, round(n * PNEUMONIA_FRACTION)))
        labels = rng.permutation(np.repeat(np.array([0, 1], dtype=np.uint8), [n - n_pneumonia, n_pneumonia]))
        arrays[f"{split}_images"] = np.stack([_chest(rng, int(y)) for y in labels])
        arrays[f"{split}_labels"] = labels[:, None]
    planted = _plant_duplicates(rng, arrays, [s for s in sizes if s != "train"], max(1, n_images // 100))
    name = "pneumoniamnist.npz" if with_test else "pneumoniamnist_trainval.npz"
    _save_npz(out / name, arrays)
    counts = {
        split: np.bincount(arrays[f"{split}_labels"][:, 0], minlength=2).tolist() for split in sizes
    }  # [normal, pneumonia]
    return {"file": name, "class_counts": counts, "duplicates": planted}


def _chest(rng: np.random.Generator, label: int) -> np.ndarray:
    """One 28×28 ``uint8`` chest X-ray; ``label`` 1 adds opacities."""
    size = IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    scale = rng.uniform(0.9, 1.1)
    cx, cy = size / 2 - 0.5 + rng.uniform(-1.5, 1.5), size / 2 + rng.uniform(-1.5, 1.5)
    u, v = (xx - cx) / scale, (yy - cy) / scale  # body coordinates
    image = 60.0 + 110.0 * _soft_inside(np.hypot(u / 13.0, v / 14.5))  # body on a dark background
    lungs = np.zeros_like(image)
    for side in (-1, 1):
        lungs = np.maximum(lungs, _soft_inside(np.hypot((u - side * 5.5) / 4.2, (v + 0.5) / 8.5)))
    ribs = 8.0 * np.sin(v * 1.6 + rng.uniform(0, 2 * np.pi))
    lung_darkness = 95.0 if label == 0 else rng.uniform(70.0, 90.0)
    image = image - lungs * (lung_darkness + ribs)
    if label == 1:
        for _ in range(int(rng.integers(1, 3))):
            side = rng.choice([-1, 1])
            bx, by = side * 5.5 + rng.uniform(-2, 2), rng.uniform(-2.0, 6.0)  # lower lung more often
            sigma = rng.uniform(2.0, 3.5)
            blob = np.exp(-((u - bx) ** 2 + (v - by) ** 2) / (2 * sigma**2))
            image = image + lungs * blob * rng.uniform(45.0, 80.0)
    image = image * rng.uniform(0.85, 1.15) + rng.normal(0.0, 6.0, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _soft_inside(distance: np.ndarray) -> np.ndarray:
    """≈1 inside the unit contour of ``distance``, ≈0 outside, with a soft edge."""
    return 1.0 / (1.0 + np.exp(np.clip((distance - 1.0) / 0.08, -50, 50)))


def _plant_duplicates(rng: np.random.Generator, arrays: dict, later_splits: list[str], n_cross: int) -> dict:
    """Overwrite train images with copies of val/test images (and one of another train image)."""
    n_train = len(arrays["train_images"])
    positions = rng.choice(n_train, size=n_cross + 2, replace=False)
    cross = []
    for k, position in enumerate(positions[:n_cross]):
        split = later_splits[k % len(later_splits)]
        source = int(rng.integers(len(arrays[f"{split}_images"])))
        arrays["train_images"][position] = arrays[f"{split}_images"][source]
        arrays["train_labels"][position] = arrays[f"{split}_labels"][source]
        cross.append({"train": int(position), split: source})
    copy, original = (int(p) for p in positions[n_cross:])
    arrays["train_images"][copy] = arrays["train_images"][original]
    arrays["train_labels"][copy] = arrays["train_labels"][original]
    return {"train_of_val_or_test": cross, "train_of_train": {"copy": copy, "original": original}}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed timestamps (numpy stamps the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())
