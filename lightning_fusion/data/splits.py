"""Patient-level splits: stratified and seeded, or predefined; never a patient in two splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from lightning_fusion.errors import DataError, LeakageError

SPLITS = ("train", "val", "test")


def stratified_split(
    labels: pd.Series, fractions: Mapping[str, float], seed: int, groups: pd.Series | None = None
) -> dict[str, list[str]]:
    """Split patients (the index of ``labels``) per class into train/val/test, seeded.

    Within each class the patients are shuffled and ``round(n * fraction)`` go to val and to test,
    the rest to train, so every split keeps the class balance as closely as integers allow. Small
    classes keep at least one training patient.

    With ``groups`` (sample id → patient id), whole patients are split: each patient is stratified
    by its most frequent label (ties: the first class in sorted order) and all its samples follow it.
    """
    if groups is not None:
        return _grouped_split(labels, fractions, seed, groups)
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


def _grouped_split(
    labels: pd.Series, fractions: Mapping[str, float], seed: int, groups: pd.Series
) -> dict[str, list[str]]:
    owner = groups.reindex(labels.index)
    if owner.isna().any():
        raise DataError(f"samples without a patient (group) id: {sorted(owner.index[owner.isna()])[:5]}")
    frame = pd.DataFrame({"label": labels.astype(str), "group": owner.astype(str)})
    group_label = frame.groupby("group")["label"].agg(lambda values: sorted(values.mode())[0])
    group_splits = stratified_split(group_label, fractions, seed)
    split_of = {group: name for name, members in group_splits.items() for group in members}
    return {name: sorted(frame.index[frame["group"].map(split_of) == name]) for name in SPLITS}


def predefined_split(splits: pd.Series, keep: Sequence[str]) -> dict[str, list[str]]:
    """Use the dataset's own split column for the ``keep`` patients."""
    unknown = sorted(set(splits.dropna().unique()) - set(SPLITS))
    if unknown:
        raise DataError(f"predefined split names {unknown} are not among {list(SPLITS)}")
    chosen = splits.reindex(keep)
    if chosen.isna().any():
        raise DataError(f"patients without a predefined split: {sorted(chosen.index[chosen.isna()])[:5]}")
    return {name: sorted(chosen.index[chosen == name]) for name in SPLITS}


def assert_patients_disjoint(splits: Mapping[str, Sequence[str]], groups: pd.Series | None) -> None:
    """Raise :class:`LeakageError` if a sample id, or (with ``groups``) a patient, is in two splits."""
    assert_disjoint(splits)
    if groups is not None:
        assert_disjoint({name: [str(groups[sid]) for sid in ids] for name, ids in splits.items()})


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


def cross_validation_folds(
    labels: pd.Series, k: int, seed: int, groups: pd.Series | None = None, val_fraction: float = 0.1
) -> list[dict[str, list[str]]]:
    """Stratified, patient-grouped K-fold (scikit-learn ``StratifiedGroupKFold``) with an inner validation split.

    Fold ``i`` tests on the i-th part; the other parts are split again, stratified and grouped, into
    train and val (``val_fraction`` of them) for early stopping, so validation never comes from the
    test fold. Every sample is tested exactly once, and no patient is in two test folds or in two
    splits of one fold (checked).

    Raises:
        DataError: fewer than 2 folds, or a class with fewer patients than folds.
    """
    if k < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {k}")
    patient_of = (
        groups.reindex(labels.index).astype(str) if groups is not None else pd.Series(labels.index, labels.index)
    )
    per_class = labels.groupby(patient_of.values).first().value_counts()
    small = {str(c): int(n) for c, n in per_class.items() if n < k}
    if small:
        raise DataError(f"cross-validation with {k} folds: class(es) with fewer patients than folds {small}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    index = np.asarray(labels.index)
    for train_positions, test_positions in splitter.split(np.zeros(len(labels)), labels.astype(str), patient_of):
        rest = labels.iloc[train_positions]
        inner = stratified_split(rest, {"train": 1 - val_fraction, "val": val_fraction, "test": 0.0}, seed, groups)
        folds.append({"train": inner["train"], "val": inner["val"], "test": sorted(index[test_positions].tolist())})
    for fold in folds:
        assert_patients_disjoint(fold, groups)
    assert_disjoint({f"fold {i}": [str(patient_of[s]) for s in fold["test"]] for i, fold in enumerate(folds)})
    return folds
