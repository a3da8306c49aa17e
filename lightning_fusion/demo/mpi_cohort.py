"""Deterministic synthetic SPECT myocardial-perfusion-imaging (MPI) cohort.

The cohort is written to disk in the layout of a real MPI export, so the
package's MPI reader serves synthetic and real data alike::

    <root>/<class folder>/<patient id>/{QPS AC,Stress QGS AC,Rest QGS AC}.png
    <root>/clinical.csv   # patient_id + 45 clinical/metric columns, some NaNs
    <root>/cohort.json    # generation parameters and class counts

Generative story
----------------
Each view is a bull's-eye polar map (apex at the centre, base at the rim;
anterior up, septal left, inferior down, lateral right) of relative tracer
uptake: a baseline near 1 with smooth low-frequency variation and smoothed
pixel noise, normalised to its peak and rendered with a colormap (black
outside the disc). A defect is a smooth Gaussian blob inside one coronary
territory (LAD anterior/septal/apical, LCX lateral, RCA inferior) with random
size, depth and position. ``Stress QGS AC`` and ``Rest QGS AC`` are the stress
and rest perfusion maps; ``QPS AC`` is the reversibility map (rest - stress,
clipped at 0).

* Normal (~70%): homogeneous uptake.
* Ischemia (~23%): a stress defect (some shallow and subtle) that is absent
  at rest (reversible).
* Infarction (~7%): a stress defect that persists at rest (fixed) - but
  peri-infarct ischemia makes the rest defect smaller and faint.

Every class may also carry a soft-tissue attenuation artefact, more likely in
women and at high BMI (breast: anterior; diaphragm in men: inferior): a mild
*fixed* defect that mimics a small infarct.

The modalities are complementary by design. Images separate normal from
abnormal well but confuse ischemia with infarction (faint rest defects vs
artefacts). The clinical table separates infarction from the rest well (prior
MI, Q waves, LVEF, wall motion, SRS) but ischemia from normal only weakly
(risk factors, chest-pain type, noisy SDS and TID); sex and BMI explain the
artefacts. Neither modality alone is enough; fusion should beat both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from PIL import Image

from lightning_fusion.demo.registry import DEMO_LAYOUTS
from lightning_fusion.demo.writing import check_integers, write_dataset_once

__all__ = ["CLASS_FOLDERS", "VIEW_NAMES", "generate_mpi_cohort"]

CLASS_FOLDERS = ("Normal", "Ischemia", "Infarction")
VIEW_NAMES = ("QPS AC", "Stress QGS AC", "Rest QGS AC")

_VERSION = 1
_COLORMAP = "inferno"
_REVERSIBILITY_SCALE = 0.4  # rest - stress difference rendered at full colour
# Territory (centre angle, half width) in radians; anterior = +pi/2.
_TERRITORIES = ((0.75 * np.pi, 0.5 * np.pi), (0.0, 0.25 * np.pi), (-0.5 * np.pi, 0.25 * np.pi))
_NAN_COLUMNS = ("bmi", "creatinine", "hba1c", "ldl", "hdl", "peak_sbp", "tid_ratio", "lvef_stress")


def generate_mpi_cohort(
    root: str | Path,
    n_patients: int = 300,
    seed: int = 0,
    image_size: int = 64,
    class_fractions: Sequence[float] = (0.70, 0.23, 0.07),
) -> Path:
    """Generate (or reuse) a synthetic MPI cohort at ``root``.

    Generation happens in a temporary sibling directory that is renamed into
    place at the end, so an interrupted run never leaves a partial cohort.

    Args:
        root: Target directory; must not exist, be empty, or hold a cohort
            generated with the same arguments (then it is returned as is).
        n_patients: Number of patients (>= 10).
        seed: Seed for ``np.random.default_rng``; same arguments give
            byte-identical files.
        image_size: Side length in pixels of each square RGB view (>= 16).
        class_fractions: Fractions of Normal, Ischemia and Infarction
            (positive, summing to 1); every class gets at least 2 patients.

    Returns:
        The cohort root directory.

    Raises:
        ValueError: If an argument is invalid.
        FileExistsError: If ``root`` exists but is not a cohort generated with
            the same arguments.
    """
    fractions = _validate(n_patients, seed, image_size, class_fractions)
    params = {
        "n_patients": int(n_patients),
        "seed": int(seed),
        "image_size": int(image_size),
        "class_fractions": list(fractions),
        "version": _VERSION,
    }
    return write_dataset_once(
        root, params, lambda out: _write_cohort(out, params, fractions), what="synthetic MPI cohort"
    )


def _validate(n_patients: int, seed: int, image_size: int, class_fractions: Sequence[float]) -> tuple[float, ...]:
    """Check the arguments of :func:`generate_mpi_cohort` and return the fractions as floats."""
    check_integers(n_patients=(n_patients, 10), seed=(seed, 0), image_size=(image_size, 16))
    fractions = tuple(float(f) for f in class_fractions)
    if len(fractions) != len(CLASS_FOLDERS) or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"class_fractions must be {len(CLASS_FOLDERS)} positive numbers summing to 1, got {class_fractions!r}"
        )
    return fractions


def _class_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Exact class counts: rounded, at least 2 each, remainder on the majority class."""
    counts = [max(2, round(n * f)) for f in fractions]
    counts[int(np.argmax(fractions))] += n - sum(counts)
    return counts


def _write_cohort(out: Path, params: dict, fractions: Sequence[float]) -> dict:
    """Sample the cohort and write images and ``clinical.csv`` into ``out``; return the class counts."""
    n, size = params["n_patients"], params["image_size"]
    rng = np.random.default_rng(params["seed"])
    counts = _class_counts(n, fractions)
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    width = max(4, len(str(n)))
    numbers = [f"{i + 1:0{width}d}" for i in range(n)]
    female = rng.random(n) < np.array([0.50, 0.35, 0.25])[labels]
    bmi = np.clip(rng.normal(28.0, 5.0, n), 17.0, 50.0)
    artefact = rng.random(n) < 1 / (1 + np.exp(-(-1.3 + 0.9 * female + 0.15 * (bmi - 28.0))))

    lut = np.round(matplotlib.colormaps[_COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    centre = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(xx - centre, yy - centre) / (size / 2 - 1)
    grid = (radius, np.arctan2(centre - yy, xx - centre), radius <= 1)
    for i in range(n):
        stress, rest = _perfusion_maps(rng, grid, int(labels[i]), bool(female[i]), bool(artefact[i]))
        reversibility = np.clip(rest - stress, 0, None) / _REVERSIBILITY_SCALE
        folder = out / CLASS_FOLDERS[labels[i]] / f"MPI-{numbers[i]}"
        folder.mkdir(parents=True)
        for view, values in zip(VIEW_NAMES, (reversibility, stress, rest)):
            rgb = lut[np.clip(np.round(values * 255), 0, 255).astype(np.uint8)]
            rgb[~grid[2]] = 0
            Image.fromarray(rgb, mode="RGB").save(folder / f"{view}.png", optimize=False)

    table = _clinical_table(rng, labels, female, bmi, artefact)
    table.insert(0, "patient_id", [f"mpi_{k}" for k in numbers])
    table = table.iloc[rng.permutation(n)].reset_index(drop=True)
    table.to_csv(out / "clinical.csv", index=False, lineterminator="\n")
    return {"class_counts": dict(zip(CLASS_FOLDERS, counts))}


def _blob(grid: tuple[np.ndarray, ...], r0: float, theta0: float, sigma_r: float, sigma_theta: float) -> np.ndarray:
    """Smooth Gaussian bump in polar coordinates (angular distance wraps around)."""
    radius, theta, _ = grid
    dtheta = (theta - theta0 + np.pi) % (2 * np.pi) - np.pi
    return np.exp(-0.5 * (((radius - r0) / sigma_r) ** 2 + (dtheta / sigma_theta) ** 2))


def _perfusion_maps(
    rng: np.random.Generator, grid: tuple[np.ndarray, ...], label: int, female: bool, artefact: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Sample one patient's peak-normalised stress and rest polar maps."""
    radius, theta, inside = grid
    phase = rng.uniform(0, 2 * np.pi, 2)
    amp = rng.uniform(0.0, 0.04, 3)
    base = (
        1
        + amp[0] * np.cos(theta - phase[0])
        + amp[1] * np.cos(2 * theta - phase[1])
        - amp[2] * np.exp(-((radius / 0.2) ** 2))
    )  # low-frequency variation, apical thinning
    stress_loss = np.zeros_like(radius)
    rest_loss = np.zeros_like(radius)
    if artefact:  # breast (anterior) in women, diaphragm (inferior) in men; fixed and mild
        shape = _blob(
            grid,
            rng.uniform(0.65, 0.95),
            (0.5 if female else -0.5) * np.pi + rng.normal(0, 0.2),
            rng.uniform(0.2, 0.35),
            rng.uniform(0.4, 0.8),
        )
        depth = rng.uniform(0.10, 0.30)
        stress_loss += depth * shape
        rest_loss += depth * rng.uniform(0.8, 1.1) * shape
    if label > 0:
        territory = rng.choice(3, p=[0.5, 0.25, 0.25])
        centre, half = _TERRITORIES[territory]
        apical = territory == 0 and rng.random() < 0.25
        r0 = rng.uniform(0.0, 0.25) if apical else rng.uniform(0.35, 0.9)
        theta0 = centre + rng.uniform(-0.7, 0.7) * half
        sigma_r, sigma_theta = rng.uniform(0.12, 0.3), (np.pi if apical else rng.uniform(0.25, 0.7) * half * 1.6)
        depth = rng.uniform(0.15, 0.5) if label == 1 else rng.uniform(0.2, 0.6)
        stress_loss += depth * _blob(grid, r0, theta0, sigma_r, sigma_theta)
        if label == 2:  # fixed core, shrunk and faded by peri-infarct ischemia
            shrink, fade = rng.uniform(0.5, 0.9), rng.uniform(0.15, 0.8)
            rest_loss += depth * fade * _blob(grid, r0, theta0, sigma_r * shrink, sigma_theta * shrink)
    noise_sd = rng.uniform(0.02, 0.05)
    maps = []
    for loss in (stress_loss, rest_loss):
        noise = _smooth_noise(rng, radius.shape, noise_sd)
        uptake = base * (1 + rng.normal(0, 0.01)) * np.clip(1 - loss, 0.05, None) + noise
        maps.append(uptake / np.percentile(uptake[inside], 99))
    return maps[0], maps[1]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sd: float) -> np.ndarray:
    """Spatially correlated noise (3x3 box-filtered Gaussian) with standard deviation ``sd``."""
    white = rng.normal(0, 3 * sd, shape)
    return sum(np.roll(white, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9


def _clinical_table(
    rng: np.random.Generator, labels: np.ndarray, female: np.ndarray, bmi: np.ndarray, artefact: np.ndarray
) -> pd.DataFrame:
    """Sample the clinical/metric columns given class, sex, BMI and attenuation artefact."""
    n = len(labels)
    ischemia, infarct = (labels == 1).astype(float), (labels == 2).astype(float)

    def per_class(values: Sequence[float]) -> np.ndarray:
        return np.asarray(values, dtype=float)[labels]

    def binary(probabilities: Sequence[float]) -> np.ndarray:
        return (rng.random(n) < per_class(probabilities)).astype(int)

    def normal(means: Sequence[float], sd: float) -> np.ndarray:
        return rng.normal(per_class(means), sd)

    def whole(values: np.ndarray) -> np.ndarray:
        return np.round(values).astype(int)

    t = {"age": whole(np.clip(normal([60, 61.5, 65], 10), 30, 90)), "sex": female.astype(int), "bmi": bmi}
    t["diabetes"] = binary([0.20, 0.25, 0.32])
    for name, probabilities in (
        ("hypertension", [0.45, 0.50, 0.60]),
        ("smoking", [0.22, 0.26, 0.35]),
        ("dyslipidemia", [0.42, 0.47, 0.55]),
        ("family_history", [0.20, 0.23, 0.25]),
        ("prior_mi", [0.04, 0.05, 0.75]),
        ("prior_pci", [0.08, 0.11, 0.50]),
        ("prior_cabg", [0.02, 0.03, 0.20]),
        ("q_waves", [0.04, 0.04, 0.55]),
    ):
        t[name] = binary(probabilities)
    pain = [[0.30, 0.30, 0.25, 0.15], [0.27, 0.28, 0.26, 0.19], [0.25, 0.25, 0.25, 0.25]]
    t["chest_pain_type"] = (rng.random((n, 1)) > np.cumsum(np.array(pain)[labels], axis=1)).sum(axis=1)
    t["pharmacologic_stress"] = binary([0.35, 0.37, 0.50])
    t["rest_hr"] = whole(rng.normal(70, 10, n))
    t["stress_hr"] = whole(t["rest_hr"] + np.where(t["pharmacologic_stress"], 20, 60) + normal([0, -2, -6], 12))
    t["rest_sbp"] = whole(normal([132, 133, 134], 16))
    t["rest_dbp"] = whole(normal([78, 80, 78], 10))
    t["peak_sbp"] = np.round(t["rest_sbp"] + normal([25, 23, 15], 15))
    t["st_depression_mm"] = np.round(np.clip(normal([0.2, 0.35, 0.4], 0.6), 0, None), 1)
    t["creatinine"] = np.round(np.exp(normal([-0.05, 0.0, 0.05], 0.25)), 2)
    t["hba1c"] = np.round(rng.normal(5.6 + 1.6 * t["diabetes"], 0.5), 1)
    t["ldl"] = np.round(normal([115, 118, 110], 30))
    t["hdl"] = np.round(normal([52, 50, 45], 12) - 6 * (1 - female))
    t["lvef_rest"] = whole(np.clip(normal([63, 62, 47], 7), 15, 80))
    t["lvef_stress"] = np.round(np.clip(t["lvef_rest"] + normal([2, 0.5, -1], 4), 15, 82))
    t["edv"] = whole(np.clip(normal([95, 100, 130], 25) - 15 * female, 40, None))
    t["esv"] = whole(t["edv"] * (1 - t["lvef_rest"] / 100))
    t["tid_ratio"] = np.round(normal([1.00, 1.025, 1.04], 0.09), 2)
    t["srs"] = rng.poisson(per_class([0.6, 0.8, 7.0]) + 1.0 * artefact)
    t["sds"] = rng.poisson(per_class([1.5, 1.5, 2.0]) + rng.uniform(0, 2.0, n) * ischemia)
    t["sss"] = t["srs"] + t["sds"]
    t["tpd_stress"] = np.round(np.clip(1.4 * t["sss"] + rng.normal(0, 2.0, n), 0, None), 1)
    t["tpd_rest"] = np.round(np.clip(1.4 * t["srs"] + rng.normal(0, 1.5, n), 0, None), 1)
    t["wall_motion_score"] = whole(np.clip(rng.normal(1 + 6 * infarct, 2.0 + 2 * infarct), 0, None))
    for k in range(1, 11):
        t[f"noise_{k:02d}"] = np.round(rng.normal(0, 1, n), 3)
    table = pd.DataFrame(t)
    table["bmi"] = table["bmi"].round(1)
    for column in _NAN_COLUMNS:
        table.loc[rng.random(n) < rng.uniform(0.02, 0.05), column] = np.nan
    return table


@DEMO_LAYOUTS.register(
    "mpi", reader="mpi", description="SPECT MPI: 3 RGB views per patient in class folders + clinical.csv"
)
def write_mpi(root: str | Path, patients: int = 120, seed: int = 0) -> Path:
    """The MPI layout for ``make_demo_data`` (64-px views)."""
    return generate_mpi_cohort(root, patients, seed=seed, image_size=64)
