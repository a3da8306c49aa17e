"""A torch Dataset of multimodal samples: dicts keyed by modality."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from lightning_fusion.data.kinds import KINDS


class MultimodalDataset(Dataset):
    """Samples ``{"image": (C, H, W), "tabular": (F,), "label": (), "index": (), "patient_id": str}``.

    Args:
        patient_ids: one id per sample.
        labels: class index per sample.
        arrays: modality → per-sample arrays; images ``(N, H, W, C)`` ``uint8``, vectors ``(N, F)``.
        kinds: modality → ``image`` | ``vector`` | ``signal``, a name in :data:`~lightning_fusion.data.kinds.KINDS`;
            the kind turns each array row into the sample's tensor (``ModalityKind.to_tensor``).
        image_transform: augmentation handed to each kind's ``to_tensor``; images apply it (``(H, W, C)``
            ``uint8`` → same), train only.
        present: modality → ``(N,)`` bool for modalities some patients lack (their rows are
            placeholders); samples then carry ``"present": {modality: bool}``, which the fusion masks.
    """

    def __init__(
        self,
        patient_ids: Sequence[str],
        labels: np.ndarray,
        arrays: Mapping[str, np.ndarray],
        kinds: Mapping[str, str],
        image_transform: Callable[..., dict[str, Any]] | None = None,
        present: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        for modality, values in arrays.items():
            if len(values) != len(patient_ids):
                raise ValueError(f"{modality}: {len(values)} samples for {len(patient_ids)} patients")
        self.patient_ids = list(patient_ids)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.arrays = dict(arrays)
        self.kinds = dict(kinds)
        self._kinds = {modality: KINDS.get(self.kinds[modality]) for modality in self.arrays}
        self.image_transform = image_transform
        # modality → (N,) bool, for the modalities some patients lack; the others are present everywhere
        self.present = {m: np.asarray(p, dtype=bool) for m, p in (present or {}).items()}
        for modality, flags in self.present.items():
            if len(flags) != len(patient_ids):
                raise ValueError(f"present[{modality!r}]: {len(flags)} flags for {len(patient_ids)} patients")

    def __len__(self) -> int:
        return len(self.patient_ids)

    def seed_augmentation(self, seed: int) -> None:
        """Seed the per-sample augmentation. albumentations keeps its own generator, which no global seed
        (``lightning.seed_everything``) reaches: unseeded, every run would augment differently."""
        if self.image_transform is not None and hasattr(self.image_transform, "set_random_seed"):
            self.image_transform.set_random_seed(seed % 2**32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample: dict[str, Any] = {}
        for modality, values in self.arrays.items():
            sample[modality] = self._kinds[modality].to_tensor(values[index], self.image_transform)
        if self.present:
            sample["present"] = {m: torch.tensor(bool(flags[index])) for m, flags in self.present.items()}
        sample["label"] = torch.tensor(self.labels[index])
        sample["index"] = torch.tensor(index)
        sample["patient_id"] = self.patient_ids[index]
        return sample

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """The samples at ``indices`` as one batch, gathered at once: what the ``device`` pipeline's loader yields.

        Keys, dtypes and order as ``default_collate`` of :meth:`__getitem__`, but each modality in its
        kind's transfer layout (:meth:`~lightning_fusion.data.kinds.base.ModalityKind.batch_rows`:
        images stay ``uint8`` ``(B, C, H, W)``) and nothing augmented: the training device finishes
        the batch (:meth:`~lightning_fusion.data.kinds.base.ModalityKind.finish_batch`).
        """
        rows = np.asarray(indices, dtype=np.int64)
        batch: dict[str, Any] = {m: self._kinds[m].batch_rows(values, rows) for m, values in self.arrays.items()}
        if self.present:
            batch["present"] = {m: torch.from_numpy(flags[rows]) for m, flags in self.present.items()}
        batch["label"] = torch.from_numpy(self.labels[rows])
        batch["index"] = torch.from_numpy(rows)
        batch["patient_id"] = [self.patient_ids[i] for i in rows]
        return batch


def seed_worker_augmentation(worker_id: int) -> None:
    """A training loader's ``worker_init_fn``: each worker's copy of the augmentation gets the worker's own
    torch seed (the loader's base seed, drawn from the run's seeded generator, plus the worker id), so
    workers augment differently from each other and the same on every run; then Lightning's own worker
    seeding (numpy, random, torch) when ``seed_everything(workers=True)`` asked for it."""
    from lightning.fabric.utilities.seed import pl_worker_init_function

    info = torch.utils.data.get_worker_info()
    dataset = info.dataset.dataset if isinstance(info.dataset, BatchedSamples) else info.dataset
    dataset.seed_augmentation(info.seed)
    if os.environ.get("PL_SEED_WORKERS") == "1":
        pl_worker_init_function(worker_id)


class BatchedSamples(Dataset):
    """A :class:`MultimodalDataset` whose loader fetches each batch in one call (``__getitems__``).

    Use with ``collate_fn=`` :func:`collated`: the batch is already whole. Indexing one sample gives
    a batch of one.
    """

    def __init__(self, dataset: MultimodalDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset.batch([index])

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        return self.dataset.batch(indices)


def collated(batch: dict[str, Any]) -> dict[str, Any]:
    """The ``collate_fn`` of :class:`BatchedSamples`: the batch as fetched."""
    return batch


def collate_arrays(
    arrays: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    present: Mapping[str, np.ndarray] | None = None,
    patient_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Model inputs (one row per patient, as the data module holds them) → one batch, as a loader yields it.

    For prediction and explanation outside a data loader: no augmentation, labels are placeholders.
    """
    count = len(next(iter(arrays.values())))
    ids = list(patient_ids) if patient_ids is not None else [str(i) for i in range(count)]
    dataset = MultimodalDataset(ids, np.zeros(count), arrays, kinds, None, present or None)
    return default_collate([dataset[i] for i in range(count)])
