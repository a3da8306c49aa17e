"""Several trained models as one: the mean of their class probabilities (``fit --seeds N``, ``fit --cv K``).

An ensemble is a folder: ``ensemble.json`` (the members, how the ensemble was made, its operating
point) beside one checkpoint per member (``member-<i>.ckpt``, weights and fitted state only). The
parent run of ``fit --seeds`` / ``fit --cv`` logs it as its ``checkpoints`` artifact, so
``runs:/<parent run id>`` loads it where a single run's checkpoint loads, and its pyfunc ``model``
holds the same folder: predict, ``mlflow models serve`` and the web page use it like one model.

Each member keeps its own fitted preprocessing (a fold's scaler was fitted on that fold's training
patients only). The ensemble's inputs are therefore every member's preprocessed rows side by side:
for a modality of a fitted kind (tables, signals), :class:`StackedPreprocessor` transforms the raw
rows through each member's preprocessor and concatenates the results on the first axis of a row, and
:meth:`EnsembleModel.member_arrays` cuts them apart again; inputs of kinds without fitted steps
(images) are shared. A member network never sees another member's preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_fusion.data.kinds import KINDS
from lightning_fusion.errors import DataError, ModelLoadError
from lightning_fusion.evaluation.threshold import OperatingPoint
from lightning_fusion.predict.trained_model import TrainedModel

if TYPE_CHECKING:
    from lightning_fusion.explain.contributions import ModalityContributions

MANIFEST = "ensemble.json"
FORMAT = 1
SPLIT_PRIORITY = ("train", "val", "test")  # a patient any member trained on counts as trained on


@dataclass(frozen=True)
class Member:
    """One member of an ensemble: its checkpoint file in the folder, its run and what sets it apart."""

    file: str
    run_id: str
    role: str  # "seed 43", "repeat 0 fold 2"


def is_ensemble(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble folder (it holds ``ensemble.json``)."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def write_manifest(
    folder: Path,
    members: list[Member],
    made_by: str,
    operating_point: OperatingPoint | None = None,
    threshold_fitted_on: str = "",
) -> Path:
    """``folder/ensemble.json``: the members, what made them (``seeds`` | ``cv``) and the operating point."""
    manifest = {
        "format": FORMAT,
        "made_by": made_by,
        "combination": "mean of the members' class probabilities",
        "members": [vars(m) for m in members],
        "operating_point": operating_point.to_dict() if operating_point else None,
        "threshold_fitted_on": threshold_fitted_on,
    }
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


class StackedPreprocessor:
    """One modality's fitted preprocessors of every member, as one: the same raw rows through each, side by side.

    ``transform`` returns ``(N, sum of the members' first row axis, ...)``: a table's features of member
    0, then member 1's (each member may have selected other features), a signal's leads likewise. The
    raw input it takes (``input_columns``, ``leads``) is the same for every member.
    """

    def __init__(self, members: list[Any], modality: str) -> None:
        for attribute in ("input_columns", "leads"):
            values = [list(getattr(p, attribute, None) or []) for p in members]
            if any(v != values[0] for v in values):
                raise ModelLoadError(f"the ensemble's members take different {attribute} for {modality!r}")
        self.members = members

    def transform(self, values: Any, **options: Any) -> np.ndarray:
        return np.concatenate([p.transform(values, **options) for p in self.members], axis=1)

    @property
    def input_columns(self) -> list[str]:
        return self.members[0].input_columns

    @property
    def leads(self) -> list[str] | None:
        return getattr(self.members[0], "leads", None)


@dataclass
class EnsembleModel(TrainedModel):
    """Trained models that predict as one: the mean of the members' class probabilities.

    Everything that reads, checks and serves patients is :class:`TrainedModel`'s; the members differ in
    their weights and fitted preprocessing only (checked when loaded). ``module`` is ``None``: no one
    network is the ensemble.
    """

    members: list[TrainedModel] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self):
        return self.members[0].config

    @property
    def classes(self) -> list[str]:
        return self.members[0].classes

    @property
    def specs(self) -> dict[str, dict[str, Any]]:
        """The first member's; a fitted kind's width may differ between members (see :meth:`input_shape`)."""
        return self.members[0].specs

    def _stacked(self, modality: str) -> bool:
        return isinstance(self.preprocessors.get(modality), StackedPreprocessor)

    def input_shape(self, modality: str) -> tuple[int, ...]:
        """The shared row shape, or for a fitted kind every member's rows side by side on the first axis."""
        shapes = [member.input_shape(modality) for member in self.members]
        if not self._stacked(modality):
            return shapes[0]
        return (sum(shape[0] for shape in shapes), *shapes[0][1:])

    def member_arrays(self, arrays: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
        """Member ``index``'s own inputs out of the ensemble's (its part of each stacked modality)."""
        own = {}
        for modality, values in arrays.items():
            if not self._stacked(modality):
                own[modality] = values
                continue
            widths = [member.input_shape(modality)[0] for member in self.members]
            start = sum(widths[:index])
            own[modality] = values[:, start : start + widths[index]]
        return own

    def member_probabilities(
        self, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray] | None = None, batch_size: int = 64
    ) -> np.ndarray:
        """``(M, N, K)``: each member's class probabilities for the ensemble's inputs."""
        self.check_arrays(arrays)
        return np.stack(
            [
                member.predict_arrays(self.member_arrays(arrays, i), present, batch_size)
                for i, member in enumerate(self.members)
            ]
        )

    def predict_arrays(
        self, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray] | None = None, batch_size: int = 64
    ) -> np.ndarray:
        """``(N, K)``: the mean of the members' class probabilities."""
        return self.member_probabilities(arrays, present, batch_size).mean(axis=0)

    def class_activation_maps(
        self, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray] | None, modality: str, target: int
    ) -> np.ndarray:
        """``(B, H, W)``: the mean of the members' Grad-CAM maps of class ``target`` (each in [0, 1])."""
        return np.mean(
            [
                member.class_activation_maps(self.member_arrays(arrays, i), present, modality, target)
                for i, member in enumerate(self.members)
            ],
            axis=0,
        )

    def modality_contributions(
        self, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray] | None, target: int
    ) -> ModalityContributions:
        """The members' contributions averaged: exact for the ensemble, whose probability with any subset of
        modalities is the members' mean (drop-one deltas and Shapley values are linear in it)."""
        parts = [
            member.modality_contributions(self.member_arrays(arrays, i), present, target)
            for i, member in enumerate(self.members)
        ]

        def mean(values: list[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray] | None:
            if any(v is None for v in values):
                return None
            return {m: np.mean([v[m] for v in values], axis=0) for m in values[0]}

        baselines = [p.shapley_baseline for p in parts]
        return replace(
            parts[0],
            probability=np.mean([p.probability for p in parts], axis=0),
            deltas=mean([p.deltas for p in parts]),
            fusion_weights=mean([p.fusion_weights for p in parts]),
            shapley=mean([p.shapley for p in parts]),
            shapley_baseline=None if any(b is None for b in baselines) else np.mean(baselines, axis=0),
        )

    def unexplained(self) -> str | None:
        runs = ", ".join(m["run_id"] for m in self.manifest.get("members", []) if m.get("run_id"))
        return (
            f"an ensemble of {len(self.members)} models is not explained as one; explain a member instead "
            f"(--model runs:/<member run id>; the members: {runs or 'see ensemble.json'})"
        )

    def explain(self, patient_ids, arrays, folder, present=None):
        raise DataError(self.unexplained())


def load_ensemble(folder: Path) -> EnsembleModel:
    """The ensemble in ``folder`` (``ensemble.json`` and its members' checkpoints, read with ``weights_only``)."""
    from lightning_fusion.config import to_dict
    from lightning_fusion.predict.trained_model import load_trained

    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        listed = [Member(**m) for m in manifest["members"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{folder / MANIFEST}: not an ensemble description this version reads ({err})") from None
    if manifest.get("format", 0) > FORMAT:
        raise ModelLoadError(f"{folder / MANIFEST}: ensemble format {manifest['format']} is newer than this reads")
    if not listed:
        raise ModelLoadError(f"{folder / MANIFEST}: an ensemble without members")
    members = [load_trained(folder / m.file) for m in listed]
    first = members[0]
    for member, entry in zip(members[1:], listed[1:]):
        kinds = {m: s["kind"] for m, s in member.specs.items()}
        if member.classes != first.classes or kinds != {m: s["kind"] for m, s in first.specs.items()}:
            raise ModelLoadError(f"{folder}: member {entry.file} has other classes or modalities than {listed[0].file}")
        if to_dict(member.config)["data"] != to_dict(first.config)["data"]:
            raise ModelLoadError(f"{folder}: member {entry.file} reads its data otherwise than {listed[0].file}")
    preprocessors = {
        modality: StackedPreprocessor([member.preprocessors[modality] for member in members], modality)
        for modality in first.modalities
        if KINDS.get(first.specs[modality]["kind"]).fitted
    }
    point = manifest.get("operating_point")
    return EnsembleModel(
        module=None,  # type: ignore[arg-type]  # no one network: predictions come from the members
        preprocessors=preprocessors,
        source=folder,
        splits=_merged_splits(members),
        operating_point=OperatingPoint.from_dict(point) if point else None,
        members=members,
        manifest=manifest,
    )


def _merged_splits(members: list[TrainedModel]) -> dict[str, list[str]]:
    """Each patient in the first of train, val, test that any member put it in (trained on by any: train)."""
    where: dict[str, str] = {}
    for member in members:
        for name, ids in member.splits.items():
            if name not in SPLIT_PRIORITY:
                continue
            for pid in ids:
                known = where.get(pid)
                if known is None or SPLIT_PRIORITY.index(name) < SPLIT_PRIORITY.index(known):
                    where[pid] = name
    return {name: [pid for pid, n in where.items() if n == name] for name in SPLIT_PRIORITY}


__all__ = [
    "MANIFEST",
    "EnsembleModel",
    "Member",
    "StackedPreprocessor",
    "is_ensemble",
    "load_ensemble",
    "write_manifest",
]
