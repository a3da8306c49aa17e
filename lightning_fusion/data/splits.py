"""Patient-level splits: stratified and seeded, or predefined; never a patient in two splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lightning_fusion.data.cohort import DataError

SPLITS = ("train", "val", "test")


class LeakageError(DataError):
    """The same patient appears in more than one split (or fold)."""


def stratified_split(labels: pd.Series, fractions: Mapping[str, float], seed: int) -> dict[str, list[str]]:
    """Split patients (the index of ``labels``) per class into train/val/test, seeded.

    Within each class the patients are shuffled and ``round(n * fraction)`` go to val and to test,
    the rest to train, so every split keeps the class balance as closely as integers allow. Small
    classes keep at least one training patient.
    """
    rng = np.random.default_rng(seed)
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for label in sorted(labels.unique()):
        ids = np.array(sorted(labels.index[labels == label]))
        rng.shuffle(ids)
        n_val = int(round(len(ids) * fractions["val"]))
        n_test = int(round(len(ids) * fractions["test"]))
        while n_val + n_test >= len(ids) and (n_val or n_test):  # keep >= 1 for training
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        splits["test"] += ids[:n_test].tolist()
        splits["val"] += ids[n_test : n_test + n_val].tolist()
        splits["train"] += ids[n_test + n_val :].tolist()
    return {name: sorted(ids) for name, ids in splits.items()}


def predefined_split(splits: pd.Series, keep: Sequence[str]) -> dict[str, list[str]]:
    """Use the dataset's own split column for the ``keep`` patients."""
    unknown = sorted(set(splits.dropna().unique()) - set(SPLITS))
    if unknown:
        raise DataError(f"predefined split names {unknown} are not among {list(SPLITS)}")
    chosen = splits.reindex(keep)
    if chosen.isna().any():
        raise DataError(f"patients without a predefined split: {sorted(chosen.index[chosen.isna()])[:5]}")
    return {name: sorted(chosen.index[chosen == name]) for name in SPLITS}


def assert_disjoint(groups: Mapping[str, Sequence[str]]) -> None:
    """Raise :class:`LeakageError` if any patient id is in two groups (splits or folds)."""
    owner: dict[str, str] = {}
    clashes = []
    for group, ids in groups.items():
        for pid in ids:
            if pid in owner and owner[pid] != group:
                clashes.append(f"{pid} ({owner[pid]} and {group})")
            owner.setdefault(pid, group)
    if clashes:
        raise LeakageError(f"patients in more than one split: {', '.join(clashes[:10])}")
