"""The LightningDataModule: cohort → joined patients → patient-level split → fitted preprocessing.

Everything that is fitted (tabular imputation/scaling/selection, class weights) sees training
patients only. Bad input raises :class:`~lightning_fusion.data.cohort.DataError` in :meth:`setup`,
before any training or tracking starts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader, WeightedRandomSampler

from lightning_fusion.config import DataConfig
from lightning_fusion.data.cohort import Cohort, JoinReport, class_counts, join_modalities, label_indices
from lightning_fusion.data.dataset import BatchedSamples, MultimodalDataset, collated, seed_worker_augmentation
from lightning_fusion.data.kinds import KINDS, kind_of
from lightning_fusion.data.kinds.base import Preprocessor
from lightning_fusion.data.memory_map import MappedRows, mapped_split
from lightning_fusion.data.splits import SPLITS, assert_patients_disjoint, predefined_split, stratified_split
from lightning_fusion.data.transforms import build_augmentation
from lightning_fusion.errors import DataError
from lightning_fusion.models import ModalitySpec

log = logging.getLogger(__name__)


class MultimodalDataModule(L.LightningDataModule):
    """Batches of ``{modality: tensor, "label", "index", "patient_id"}`` for the configured modalities."""

    def __init__(
        self,
        data: DataConfig,
        modalities: list[str],
        splits: dict[str, list[str]] | None = None,
        fitted: dict[str, Preprocessor] | None = None,
    ) -> None:
        """``splits`` (split → patient ids) replaces the configured split, e.g. one cross-validation fold;
        ``fitted`` (modality → preprocessor, :func:`restore_preprocessors`) is used instead of fitting
        again, e.g. when a run resumes from its checkpoint."""
        super().__init__()
        self.given_splits = splits
        self.fitted = dict(fitted or {})
        self.config = data
        self.modalities = list(modalities)
        self.reader = data.reader.create()
        self.root = Path(data.root).expanduser() if data.root else None
        self.cohort: Cohort | None = None
        self.join: JoinReport | None = None
        self.splits: dict[str, list[str]] = {}
        self.datasets: dict[str, MultimodalDataset] = {}
        self.preprocessors: dict[str, Preprocessor] = {}
        self.class_weights: list[float] = []

    # ---------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate package-made data (the demo cohort) once, on one process."""
        self.reader.prepare(self.root)

    def read_labels(self) -> tuple[Cohort, JoinReport, pd.Series]:
        """Read the cohort and join its modalities: the cohort, the join, and the kept patients' labels."""
        cohort = self.reader.read(self.root)
        keep_missing = self.config.keep_missing_modalities and len(self.modalities) > 1
        join = join_modalities(cohort, self.modalities, self.config.exclude_labels, keep_missing)
        # An excluded label (e.g. "borderline") is not a class of the model either.
        cohort.classes = [c for c in cohort.classes if c not in self.config.exclude_labels]
        return cohort, join, cohort.labels.loc[join.kept]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cohort, join, labels = self.read_labels()
        splits = self._split(cohort, labels)
        assert_patients_disjoint(splits, cohort.groups)
        missing_classes = [c for c, n in class_counts(labels.loc[splits["train"]], cohort.classes).items() if n == 0]
        if missing_classes:
            raise DataError(f"{cohort.name}: no training patients for class(es) {missing_classes}")
        for name in SPLITS:
            if not splits[name]:
                raise DataError(f"{cohort.name}: the {name} split is empty ({len(join.kept)} patients in all)")
        self.cohort, self.join, self.splits = cohort, join, splits
        y = {name: label_indices(labels.loc[ids], cohort.classes) for name, ids in splits.items()}
        present = {
            name: {m: join.present(m, ids) for m in self.modalities if m in join.missing}
            for name, ids in splits.items()
        }
        for name, split_present in present.items():
            bare = [m for m, flags in split_present.items() if not flags.any()]
            if bare:
                raise DataError(f"{cohort.name}: no {name} patient has modality {bare}; a split needs some of each")
        arrays = self._load_arrays(cohort, splits, y, present)
        kinds = {m: cohort.modalities[m].kind for m in self.modalities}
        augmentation = build_augmentation(self.config.augment, self.config.image_size)
        self.datasets = {
            name: MultimodalDataset(
                splits[name], y[name], arrays[name], kinds, augmentation if name == "train" else None, present[name]
            )
            for name in SPLITS
        }
        seen = np.unique(y["train"])
        weights = compute_class_weight("balanced", classes=seen, y=y["train"])
        self.class_weights = [float(weights[list(seen).index(i)]) for i in range(len(cohort.classes))]
        log.info("%s: %s", cohort.name, self.summary()["counts"])

    def _split(self, cohort: Cohort, labels) -> dict[str, list[str]]:
        if self.given_splits is not None:
            unknown = sorted(set().union(*self.given_splits.values()) - set(labels.index))
            if unknown:
                raise DataError(f"{cohort.name}: the given split names patients that are not kept: {unknown[:5]}")
            return {name: sorted(self.given_splits.get(name, [])) for name in SPLITS}
        if cohort.splits is not None and self.config.split.use_predefined:
            return predefined_split(cohort.splits, list(labels.index))
        fractions = {"train": self.config.split.train, "val": self.config.split.val, "test": self.config.split.test}
        return stratified_split(labels, fractions, self.config.split.seed, cohort.groups)

    def _load_arrays(
        self,
        cohort: Cohort,
        splits: dict[str, list[str]],
        y: dict[str, np.ndarray],
        present: dict[str, dict[str, np.ndarray]],
    ) -> dict[str, dict]:
        """Per split and modality, one array row per patient; an absent modality's row is a zero placeholder.

        Fitted steps (the kind's :meth:`~lightning_fusion.data.kinds.base.ModalityKind.fit`: tabular
        pipeline, signal normalisation) see the training patients that *have* the modality only.
        """
        arrays: dict[str, dict[str, np.ndarray]] = {name: {} for name in SPLITS}
        for modality in self.modalities:
            source = cohort.modalities[modality]
            have = {
                name: present[name][modality] if modality in present[name] else np.ones(len(splits[name]), bool)
                for name in SPLITS
            }
            ids = {name: [pid for pid, h in zip(splits[name], have[name]) if h] for name in SPLITS}
            kind = kind_of(source)
            settings = kind.decoding_settings(self.config) if self.config.memory_map else None
            if settings is not None:  # nothing fitted: decoded once into files, read a batch at a time
                for name in SPLITS:
                    arrays[name][modality] = self._mapped(cohort, modality, name, splits[name], have[name], settings)
                continue
            loaded: dict[str, np.ndarray] = {}
            if modality in self.fitted:  # fitted by the run being resumed: not fitted again
                preprocessor = self.fitted[modality]
            else:
                preprocessor, loaded["train"] = kind.fit(source, ids["train"], y["train"][have["train"]], self.config)
            if preprocessor is not None:
                self.preprocessors[modality] = preprocessor
            for name in SPLITS:
                if name not in loaded:
                    loaded[name] = modality_arrays(cohort, modality, ids[name], self.config, preprocessor)
            for name in SPLITS:
                train = loaded["train"]
                arrays[name][modality] = with_placeholders(loaded[name], have[name], train.shape[1:], train.dtype)
        return arrays

    def _mapped(
        self, cohort: Cohort, modality: str, split: str, patient_ids: list[str], have: np.ndarray, settings: dict
    ) -> MappedRows:
        """One split of a modality with nothing fitted, as rows of a memory-mapped file (written once)."""
        source = cohort.modalities[modality]
        if not hasattr(source, "fingerprint"):
            raise DataError(
                f"{cohort.name}: data.memory_map: modality {modality!r} comes from a {type(source).__name__}, "
                "which cannot say what its data depends on (no fingerprint()); set data.memory_map false"
            )
        kind = kind_of(source)
        present = [pid for pid, h in zip(patient_ids, have) if h]
        return mapped_split(
            f"{cohort.name}-{modality}-{split}",
            source.fingerprint(present),
            patient_ids,
            have,
            settings | {"kind": kind.name},
            lambda chunk: kind.load(source, chunk, self.config, None),
        )

    def preprocessing_state(self) -> dict[str, dict[str, Any]]:
        """The fitted preprocessing per modality, for checkpoints (restored by :func:`restore_preprocessors`)."""
        self._require_setup()
        return {m: {"kind": self.cohort.modalities[m].kind} | p.state() for m, p in self.preprocessors.items()}

    # ---------------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        self._require_setup()
        return list(self.cohort.classes)

    @property
    def specs(self) -> dict[str, ModalitySpec]:
        """Kind and per-sample shape of each modality, as the model will see it."""
        self._require_setup()
        sample = self.datasets["train"][0]
        return {m: ModalitySpec(self.cohort.modalities[m].kind, tuple(sample[m].shape)) for m in self.modalities}

    def summary(self) -> dict[str, Any]:
        """Counts per split and class, exclusions, and the fitted preprocessing (plain data)."""
        self._require_setup()
        labels = self.cohort.labels
        kinds = {m: KINDS.get(self.cohort.modalities[m].kind) for m in self.modalities}
        policies = {m: p for m, kind in kinds.items() if (p := kind.augmentation_policy(self.config)) is not None}
        return {
            "dataset": self.cohort.name,
            "modalities": self.modalities,
            "classes": self.cohort.classes,
            "counts": {name: class_counts(labels.loc[ids], self.cohort.classes) for name, ids in self.splits.items()},
            "excluded": self.join.counts(),
            "kept_without": {
                m: {name: int((~self.datasets[name].present[m]).sum()) for name in SPLITS}
                for m in self.modalities
                if m in self.datasets["train"].present
            },
            "excluded_patients": self.join.excluded,
            "class_weights": dict(zip(self.cohort.classes, self.class_weights)),
            # augmentation is drawn on the fly for training samples only; no sample is added to any split
            "augmentation": {
                "applies_to": "train" if policies else "none",
                "augmented_patients": len(self.splits["train"]) if policies else 0,
                "added_synthetic_samples": 0,
                "policies": policies,
            },
            "preprocessing": {m: p.summary() for m, p in self.preprocessors.items()},
            "splits": self.splits,
        }

    def _require_setup(self) -> None:
        if not self.datasets:
            raise RuntimeError("call setup() first")

    def loader_settings(self) -> LoaderSettings:
        """``data.pipeline``, ``num_workers`` and ``pin_memory`` resolved for the Trainer's device."""
        strategy = getattr(self.trainer, "strategy", None)
        device = getattr(getattr(strategy, "root_device", None), "type", "cpu")
        local_processes = int(getattr(self.trainer, "num_devices", 1) or 1)
        return resolve_loader_settings(self.config, device, local_processes)

    def balanced_sampler(self) -> WeightedRandomSampler:
        """Training patients drawn with replacement, each with weight 1 / (training patients of its class), so
        every class is drawn equally often; one epoch is as many draws as training patients.

        Seeded with ``data.split.seed``: under DDP every process draws the same sequence and Lightning's
        ``DistributedSamplerWrapper`` gives each its own share of it."""
        labels = self.datasets["train"].labels.astype(np.int64)
        per_class = np.bincount(labels, minlength=len(self.classes))
        weights = 1.0 / per_class[labels]
        generator = torch.Generator().manual_seed(self.config.split.seed)
        return WeightedRandomSampler(weights.tolist(), len(labels), replacement=True, generator=generator)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # Under DDP each process sees its share of the split (Lightning's DistributedSampler): drop the
        # last partial batch only when that share holds more than one batch, or a process trains nothing.
        processes = self.trainer.world_size if self.trainer is not None else 1
        per_process = -(-len(self.datasets[split]) // processes)
        settings = self.loader_settings()
        dataset = self.datasets[split]
        sampler = self.balanced_sampler() if shuffle and self.config.sampler == "balanced" else None
        if settings.num_workers == 0:  # the augmentation runs here: the run's seed (seed_everything), per rank
            dataset.seed_augmentation(torch.initial_seed() + (self.trainer.global_rank if self.trainer else 0))
        return DataLoader(
            BatchedSamples(dataset) if settings.pipeline == "device" else dataset,
            batch_size=self.config.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=settings.num_workers,
            persistent_workers=settings.num_workers > 0,
            pin_memory=settings.pin_memory,
            collate_fn=collated if settings.pipeline == "device" else None,
            drop_last=shuffle and per_process > self.config.batch_size,
            worker_init_fn=seed_worker_augmentation if settings.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


@dataclass(frozen=True)
class LoaderSettings:
    """How a split's batches are made on this machine (``DataConfig`` with ``auto`` resolved)."""

    pipeline: str  # device | per_sample
    num_workers: int
    pin_memory: bool


def resolve_loader_settings(data: DataConfig, device: str, local_processes: int = 1) -> LoaderSettings:
    """``data.pipeline``, ``num_workers`` and ``pin_memory`` for training on ``device`` (``cpu``, ``cuda``, ...)
    with ``local_processes`` training processes on this machine (DDP ranks per node).

    ``auto`` workers: 0 on the CPU, where the training's own threads already use every core; else
    the cores this process may use (its CPU affinity) shared among the local processes, less one for
    the training process itself, at most 8.
    """
    accelerator = device != "cpu"
    pipeline = data.pipeline if data.pipeline != "auto" else ("device" if accelerator else "per_sample")
    if data.num_workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(8, max(0, cores // max(1, local_processes) - 1)) if accelerator else 0
    else:
        workers = int(data.num_workers)
    pin = data.pin_memory if data.pin_memory is not None else device == "cuda"
    return LoaderSettings(pipeline, workers, bool(pin) and torch.cuda.is_available())


def with_placeholders(
    values: np.ndarray | None, have: np.ndarray, sample_shape: tuple[int, ...], dtype: Any
) -> np.ndarray:
    """Rows of ``values`` at the patients that ``have`` the modality; zeros (never read by the fusion) elsewhere.

    ``values`` holds the present patients' rows only (``None`` when none has the modality).
    """
    if have.all() and values is not None:
        return values
    full = np.zeros((len(have), *sample_shape), dtype=dtype)
    if have.any():
        full[have] = values
    return full


def modality_arrays(
    cohort: Cohort,
    modality: str,
    patient_ids: list[str],
    data: DataConfig,
    preprocessor: Preprocessor | None,
) -> np.ndarray:
    """One modality of the given patients as the model sees it (fitted preprocessing applied).

    Images: ``(N, H, W, C)`` ``uint8`` at ``data.image_size``; tables: ``(N, F)`` ``float32``; signals:
    ``(N, leads, samples)`` ``float32`` (the kind's :meth:`~lightning_fusion.data.kinds.base.ModalityKind.load`).
    Shared by training and :mod:`lightning_fusion.predict.trained_model`.
    """
    source = cohort.modalities[modality]
    if source.kind not in KINDS:
        raise DataError(f"{cohort.name}: modality {modality!r} of kind {source.kind!r} has no loader yet")
    return kind_of(source).load(source, patient_ids, data, preprocessor)


def restore_preprocessors(data: DataConfig, state: dict[str, dict[str, Any]], source: str) -> dict[str, Preprocessor]:
    """The fitted preprocessors of :meth:`MultimodalDataModule.preprocessing_state`."""
    restored: dict[str, Preprocessor] = {}
    for modality, fitted in state.items():
        if fitted["kind"] not in KINDS or not KINDS.get(fitted["kind"]).fitted:
            raise DataError(f"{source}: fitted preprocessing of unknown kind {fitted['kind']!r} for {modality!r}")
        restored[modality] = KINDS.get(fitted["kind"]).restore(data, fitted, source)
    return restored
