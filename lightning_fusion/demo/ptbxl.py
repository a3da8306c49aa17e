"""Synthetic PTB-XL: 12-lead ECG records in PhysioNet's exact layout, read by the ``ptbxl`` reader.

Layout (as :mod:`lightning_fusion.data.readers.ptbxl` describes; only the 100 Hz records are written)::

    <root>/ptbxl_database.csv             # ecg_id, patient_id, age, sex, height, weight, scp_codes,
                                          #   strat_fold (1-10), filename_lr, filename_hr
    <root>/scp_statements.csv             # PTB-XL's rows for the statements used (real values)
    <root>/records100/00000/00001_lr.hea  # WFDB (wfdb.wrsamp): 100 Hz, 10 s, 12 leads, mV, format 16
    <root>/records100/00000/00001_lr.dat
    <root>/cohort.json                    # generation parameters and counts

Generative story. Each record is a dipole model of the heart: P, septal, R, S and T waves are Gaussian
bumps in time, each with a 3-D direction, projected onto the 12 lead vectors (the limb leads obey
Einthoven's law: III = II − I, aVF = (II + III) / 2, ...). The heart rate (50–100 bpm), electrical axis,
amplitude, baseline wander and noise vary per record. Patients have 1–3 records (70 / 20 / 10 %), all
in the patient's ``strat_fold`` (patients are dealt round-robin over folds 1–10); a patient's records
usually share its condition.

Class signal (the ``ptbxl`` reader's rule: ``normal`` = NORM at 100 only, ``abnormal`` = any other
diagnostic statement):

* normal (~46 %): ``{'NORM': 100.0, 'SR': 0.0}``; a further ~8 % have NORM at 80 and ~3 % no diagnostic
  statement (rhythm/form only) — both excluded by the reader;
* abnormal (~43 %): one or two of IMI (Q waves and inverted T in II, III, aVF), AMI (ST elevation and lost
  R in V1–V4), NDT (flat or inverted T with lateral ST depression), LVH (tall, leftward QRS with lateral
  strain) and CLBBB (QRS widened to ~0.15 s with discordant T), at likelihood 100, 80, 50 or 0, sometimes
  with NORM as well. These are clear morphological differences a 1-D CNN learns.

Metadata is weakly informative: abnormal records are older (mean 60 vs 50 years) and a little heavier.
Missing values match PTB-XL: height ~42 %, weight ~19 %, age ~1 %; ages above 89 are coded 300, as in
PTB-XL. ``sex`` is 0 (male) or 1 (female).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import wfdb

from lightning_fusion.demo.registry import DEMO_LAYOUTS
from lightning_fusion.demo.writing import write_dataset_once

__all__ = ["LEADS", "write_ptbxl"]

_VERSION = 1
FS = 100
SECONDS = 10
LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
ABNORMAL_CODES = ("IMI", "AMI", "NDT", "LVH", "CLBBB")
_ABNORMAL_WEIGHTS = (0.25, 0.2, 0.25, 0.15, 0.15)
_CONDITIONS = ("normal", "norm80", "nodiag", "abnormal")
_CONDITION_WEIGHTS = (0.46, 0.08, 0.03, 0.43)

# PTB-XL's scp_statements.csv rows for the statements this writer uses (real values, CC BY 4.0).
_STATEMENT_COLUMNS = [
    "description",
    "diagnostic",
    "form",
    "rhythm",
    "diagnostic_class",
    "diagnostic_subclass",
    "Statement Category",
    "SCP-ECG Statement Description",
    "AHA code",
    "aECG REFID",
    "CDISC Code",
    "DICOM Code",
]
_STATEMENTS = {
    "NDT": ["non-diagnostic T abnormalities", 1.0, 1.0, None, "STTC", "STTC", "other ST-T descriptive statements",
            "non-diagnostic T abnormalities", None, None, None, None],
    "NORM": ["normal ECG", 1.0, None, None, "NORM", "NORM", "Normal/abnormal", "normal ECG", 1, None, None,
             "F-000B7"],
    "IMI": ["inferior myocardial infarction", 1.0, None, None, "MI", "IMI", "Myocardial Infarction",
            "inferior myocardial infarction", 161, None, None, None],
    "LVH": ["left ventricular hypertrophy", 1.0, None, None, "HYP", "LVH", "Ventricular Hypertrophy",
            "left ventricular hypertrophy", 142, None, "C71076", None],
    "CLBBB": ["complete left bundle branch block", 1.0, None, None, "CD", "CLBBB",
              "Intraventricular and intra-atrial Conduction disturbances", "(complete) left bundle branch block",
              104, "MDC_ECG_BEAT_LBB_BLK_COMP", "C62269", "D3-33120 or 122752"],
    "AMI": ["anterior myocardial infarction", 1.0, None, None, "MI", "AMI", "Myocardial Infarction",
            "anterior myocardial infarction", 160, None, None, None],
    "LVOLT": ["low QRS voltages in the frontal and horizontal leads", None, 1.0, None, None, None,
              "Other QRS morphology descriptive statements", "low QRS voltages in the frontal and horizontal leads",
              None, None, None, None],
    "SR": ["sinus rhythm", None, None, 1.0, None, None, "Statements related to impulse formation (abnormalities)",
           "sinus rhythm", 20, "MDC_ECG_RHY_SINUS_RHY", None, None],
    "SBRAD": ["sinus bradycardia", None, None, 1.0, None, None,
              "Statements related to impulse formation (abnormalities)", "sinus bradycardia", 22,
              "MDC_ECG_RHY_SINUS_BRADY", None, None],
}  # fmt: skip

# Lead vectors: x = patient's left, y = inferior, z = anterior. Limb leads from I and II (Einthoven).
_I, _II = np.array([1.0, 0.0, 0.0]), np.array([0.5, 0.866, 0.0])
_III = _II - _I
_PRECORDIAL_ANGLES = np.deg2rad([115, 95, 75, 60, 35, 0])  # from the left towards anterior
_LEAD_VECTORS = np.vstack(
    [
        _I,
        _II,
        _III,
        -(_I + _II) / 2,
        (_I - _III) / 2,
        (_II + _III) / 2,
        *[1.2 * np.array([np.cos(a), 0.15, np.sin(a)]) for a in _PRECORDIAL_ANGLES],
    ]
)


def _waves(codes: set[str], rr: float, rng: np.random.Generator) -> list[tuple[float, float, np.ndarray]]:
    """(time offset from the R peak in s, width in s, 3-D dipole in mV) of each wave of one beat."""
    qrs_width = 1.0
    r_dipole = np.array([0.8, 0.6, -0.3]) * 1.3
    t_dipole = np.array([0.6, 0.5, 0.3]) * 0.35
    septal = np.array([-0.2, 0.0, 0.3]) * 0.5
    extra: list[tuple[float, float, np.ndarray]] = []
    t_offset = 0.22 + 0.1 * np.sqrt(rr)
    if "LVH" in codes:
        r_dipole = np.array([0.9, 0.3, -0.6]) * 2.4
        t_dipole = np.array([-0.5, 0.3, 0.1]) * 0.3
        extra.append((0.14, 0.05, np.array([-0.6, -0.1, 0.0]) * 0.15))  # lateral strain ST depression
    if "CLBBB" in codes:
        qrs_width = 2.6
        septal = -septal  # septum activated from the right: no q in V5-V6
        extra.append((0.05, 0.025, np.array([0.8, 0.2, -0.5]) * 0.9))  # late, notched lateral R
        t_dipole = -0.4 * r_dipole / np.linalg.norm(r_dipole)  # discordant T
    if "IMI" in codes:
        extra.append((-0.02, 0.015, np.array([0.0, -1.0, 0.0]) * 0.6))  # inferior Q waves
        t_dipole = t_dipole * np.array([1.0, -1.0, 1.0])  # inverted T in II, III, aVF
    if "AMI" in codes:
        extra.append((-0.015, 0.015, np.array([0.0, 0.0, -1.0]) * 0.6))  # lost anterior R
        extra.append((0.14, 0.06, np.array([0.1, 0.0, 1.0]) * rng.uniform(0.2, 0.35)))  # ST elevation V1-V4
    if "NDT" in codes:
        t_dipole = t_dipole * rng.uniform(-0.8, 0.0)  # flat or inverted T
        extra.append((0.14, 0.05, np.array([-0.7, -0.2, 0.0]) * 0.12))  # lateral ST depression
    return [
        (-0.16, 0.025, np.array([0.5, 0.6, 0.1]) * 0.15),  # P
        (-0.025 * qrs_width, 0.008 * qrs_width, septal),
        (0.0, 0.013 * qrs_width, r_dipole),  # R
        (0.028 * qrs_width, 0.01 * qrs_width, np.array([-0.2, -0.3, 0.5]) * 0.5),  # S
        (t_offset, 0.05, t_dipole),  # T
        *extra,
    ]


def _signal(codes: set[str], low_voltage: bool, rng: np.random.Generator) -> np.ndarray:
    """One record ``(samples, 12)`` in mV."""
    t = np.arange(FS * SECONDS) / FS
    rr = 60.0 / rng.uniform(50, 100)
    n_beats = int(SECONDS / rr) + 3
    beats = rng.uniform(-rr, 0) + np.cumsum(rr * rng.normal(1.0, 0.02, n_beats))  # first beat before t = 0
    dipole = np.zeros((3, len(t)))
    for offset, width, direction in _waves(codes, rr, rng):
        bumps = np.exp(-0.5 * ((t[None, :] - beats[:, None] - offset) / width) ** 2).sum(axis=0)
        dipole += direction[:, None] * bumps[None, :]
    axis = np.deg2rad(rng.normal(0, 12))  # frontal-plane rotation of the electrical axis
    rotation = np.array([[np.cos(axis), -np.sin(axis), 0], [np.sin(axis), np.cos(axis), 0], [0, 0, 1]])
    amplitude = rng.uniform(0.75, 1.25) * (0.35 if low_voltage else 1.0)
    leads = amplitude * (_LEAD_VECTORS @ rotation @ dipole)
    phase = rng.uniform(0, 2 * np.pi, (len(LEADS), 1))
    wander = rng.uniform(0.02, 0.12, (len(LEADS), 1)) * np.sin(2 * np.pi * rng.uniform(0.05, 0.4) * t + phase)
    noise = rng.normal(0, 0.015, leads.shape)
    return np.round((leads + wander + noise).T, 3)


def _scp_codes(condition: str, rng: np.random.Generator) -> dict[str, float]:
    if condition == "normal":
        return {"NORM": 100.0, "SR": 0.0}
    if condition == "norm80":
        return {"NORM": 80.0, "SR": 0.0}
    if condition == "nodiag":
        return {"LVOLT": 0.0, "SR": 0.0} if rng.random() < 0.5 else {"SR": 0.0}
    n_codes = 2 if rng.random() < 0.2 else 1
    chosen = rng.choice(ABNORMAL_CODES, size=n_codes, replace=False, p=_ABNORMAL_WEIGHTS)
    codes = {str(code): float(rng.choice([100.0, 100.0, 80.0, 50.0, 0.0])) for code in chosen}
    if rng.random() < 0.1:
        codes = {"NORM": 50.0, **codes}
    return {**codes, "SR": 0.0}


def _metadata(abnormal: bool, rng: np.random.Generator) -> dict[str, Any]:
    sex = int(rng.random() < 0.52)  # 1 = female
    age = float(np.clip(np.round(rng.normal(60 if abnormal else 50, 15)), 18, 95))
    height = float(np.round(rng.normal(163 if sex else 175, 7)))
    weight = float(np.round(rng.normal((68 if sex else 80) + (4 if abnormal else 0), 12)))
    return {
        "age": np.nan if rng.random() < 0.01 else (300.0 if age > 89 else age),
        "sex": sex,
        "height": np.nan if rng.random() < 0.42 else height,
        "weight": np.nan if rng.random() < 0.19 else weight,
    }


def _write(tmp: Path, patients: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    patient_ids = rng.choice(np.arange(1000, 22000), size=patients, replace=False).astype(float)
    folds = rng.permutation(np.arange(patients) % 10 + 1)
    records: list[dict[str, Any]] = []
    for patient, fold in zip(patient_ids, folds):
        condition = str(rng.choice(_CONDITIONS, p=_CONDITION_WEIGHTS))
        for _ in range(int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))):
            if rng.random() < 0.2:
                condition = str(rng.choice(_CONDITIONS, p=_CONDITION_WEIGHTS))
            records.append({"patient_id": patient, "strat_fold": int(fold), "condition": condition})
    order = rng.permutation(len(records))
    rows = []
    for ecg_id, index in enumerate(order, start=1):
        record = records[index]
        codes = _scp_codes(record["condition"], rng)
        abnormal = record["condition"] == "abnormal"
        folder = f"{ecg_id // 1000 * 1000:05d}"
        name = f"{ecg_id:05d}"
        signal = _signal({c for c in codes if c in ABNORMAL_CODES}, "LVOLT" in codes, rng)
        write_dir = tmp / "records100" / folder
        write_dir.mkdir(parents=True, exist_ok=True)
        wfdb.wrsamp(
            f"{name}_lr",
            fs=FS,
            units=["mV"] * len(LEADS),
            sig_name=LEADS,
            p_signal=signal,
            fmt=["16"] * len(LEADS),
            adc_gain=[1000.0] * len(LEADS),
            baseline=[0] * len(LEADS),
            write_dir=str(write_dir),
        )
        rows.append(
            {
                "ecg_id": ecg_id,
                "patient_id": record["patient_id"],
                **_metadata(abnormal, rng),
                "scp_codes": str(codes),
                "strat_fold": record["strat_fold"],
                "filename_lr": f"records100/{folder}/{name}_lr",
                "filename_hr": f"records500/{folder}/{name}_hr",
            }
        )
    database = pd.DataFrame(rows)
    database.to_csv(tmp / "ptbxl_database.csv", index=False)
    statements = pd.DataFrame.from_dict(_STATEMENTS, orient="index", columns=_STATEMENT_COLUMNS)
    statements["AHA code"] = statements["AHA code"].astype("Int64")
    statements.to_csv(tmp / "scp_statements.csv")
    conditions = pd.Series([records[i]["condition"] for i in order]).value_counts()
    return {"records": len(rows), "conditions": {str(k): int(v) for k, v in conditions.items()}}


@DEMO_LAYOUTS.register(
    "ptbxl", reader="ptbxl", description="PTB-XL: 12-lead 100 Hz WFDB records + ptbxl_database.csv, folds 1-10"
)
def write_ptbxl(root: str | Path, patients: int = 60, seed: int = 0) -> Path:
    """Write (or reuse) a synthetic PTB-XL with ``patients`` patients (1-3 records each) at ``root``."""
    if patients < 10:
        raise ValueError(f"patients must be >= 10 (one per strat_fold at least), got {patients}")
    params = {"layout": "ptbxl", "patients": patients, "seed": seed, "version": _VERSION}
    return write_dataset_once(root, params, lambda tmp: _write(tmp, patients, seed), "synthetic PTB-XL dataset")
