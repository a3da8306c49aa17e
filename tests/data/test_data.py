"""Cohort joins, exclusions, patient-level splits, train-only preprocessing, augmentation."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lightning_fusion.config import AugmentConfig, TabularConfig, load_config
from lightning_fusion.data.cohort import Cohort, join_modalities, normalise_ids, normalise_patient_id
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.data.modalities import TableModality
from lightning_fusion.data.splits import assert_disjoint, stratified_split
from lightning_fusion.data.tabular import TabularPreprocessor
from lightning_fusion.data.transforms import build_augmentation
from lightning_fusion.errors import DataError, LeakageError
from tests.conftest import SMALL_PATIENTS, small_overrides


def _datamodule(root, **overrides):
    config = load_config(None, small_overrides(root, **overrides))
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")
    return datamodule


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("MPI-0001", "mpi-0001"),
        ("mpi_0001", "mpi-0001"),
        (" Mpi 0001 ", "mpi-0001"),
        (7.0, "7"),
        (12, "12"),
        ("a__b--c", "a-b-c"),
    ],
)
def test_normalise_patient_id(raw, expected):
    assert normalise_patient_id(raw) == expected


def test_ids_that_collide_after_normalisation_are_duplicates():
    with pytest.raises(DataError, match=r"clinical\.csv: duplicate patient ids 'P_1' / 'p-1'"):
        normalise_ids(["P_1", "P_2", "p-1"], "clinical.csv")
    with pytest.raises(DataError, match="row 1: empty patient id"):
        normalise_ids(["a", float("nan")], "x.csv")


def _toy_cohort():
    labels = pd.Series({"a": "x", "b": "y", "c": "x", "d": "skip"}, dtype=object)
    image = TableModality(pd.DataFrame({"f": [1.0, 2.0, 3.0]}, index=["a", "b", "c"]), "img")
    table = TableModality(pd.DataFrame({"g": [1.0, 2.0, 3.0, 4.0]}, index=["a", "c", "d", "zz"]), "tab")
    return Cohort("toy", ["x", "y", "skip"], labels, {"image": image, "tabular": table})


def test_join_keeps_patients_with_every_modality_and_reports_the_rest():
    report = join_modalities(_toy_cohort(), ["image", "tabular"], exclude_labels=["skip"])
    assert report.kept == ["a", "c"]
    assert report.excluded == {"label 'skip' excluded by config": ["d"], "no tabular": ["b"], "no label": ["zz"]}
    assert join_modalities(_toy_cohort(), ["image"]).kept == ["a", "b", "c"]


def test_join_errors_name_the_problem():
    with pytest.raises(DataError, match=r"no modality \['signal'\]; the dataset has \['image', 'tabular'\]"):
        join_modalities(_toy_cohort(), ["signal"])
    with pytest.raises(DataError, match=r"exclude_labels: \['borderline'\] are not classes"):
        join_modalities(_toy_cohort(), ["image"], exclude_labels=["borderline"])
    with pytest.raises(DataError, match="no patient has a label and all of"):
        join_modalities(_toy_cohort(), ["image"], exclude_labels=["x", "y"])


def test_stratified_split_is_seeded_disjoint_and_keeps_class_balance():
    labels = pd.Series(["n"] * 70 + ["i"] * 23 + ["f"] * 7, index=[f"p{i:03d}" for i in range(100)])
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    splits = stratified_split(labels, fractions, seed=1)
    assert splits == stratified_split(labels, fractions, seed=1)
    assert splits != stratified_split(labels, fractions, seed=2)
    assert_disjoint(splits)
    assert sorted(sum(splits.values(), [])) == sorted(labels.index)
    for name, expected in {"train": 80, "val": 10, "test": 10}.items():
        assert abs(len(splits[name]) - expected) <= 2
    assert labels[splits["test"]].value_counts().to_dict() == {"n": 7, "i": 2, "f": 1}


def test_tiny_classes_keep_a_training_patient():
    labels = pd.Series(["a"] * 20 + ["b"], index=[str(i) for i in range(21)])
    splits = stratified_split(labels, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    assert "20" in splits["train"]


def test_leakage_is_an_error():
    with pytest.raises(LeakageError, match=r"p2 \(train and test\)"):
        assert_disjoint({"train": ["p1", "p2"], "val": ["p3"], "test": ["p2"]})


def test_datamodule_splits_counts_and_samples(small_cohort):
    datamodule = _datamodule(small_cohort)
    summary = datamodule.summary()
    total = sum(sum(c.values()) for c in summary["counts"].values())
    assert total == SMALL_PATIENTS
    assert_disjoint(datamodule.splits)
    assert datamodule.classes == ["normal", "ischemia", "infarction"]
    sample = datamodule.datasets["train"][0]
    assert set(sample) == {"image", "tabular", "label", "index", "patient_id"}
    assert sample["image"].shape == (9, 32, 32) and sample["image"].dtype.is_floating_point
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["tabular"].ndim == 1
    assert datamodule.specs["image"].shape == (9, 32, 32)
    assert datamodule.specs["tabular"].kind == "vector"
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["image"].shape[1:] == (9, 32, 32) and len(batch["patient_id"]) == len(batch["label"])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_the_last_partial_batch_is_dropped_only_when_each_process_keeps_a_full_one(small_cohort, world_size):
    from types import SimpleNamespace

    datamodule = _datamodule(small_cohort, **{"data.batch_size": 32})
    train = len(datamodule.datasets["train"])
    assert 32 < train <= 64  # the small cohort: more than one batch in one process, less than one in two
    datamodule.trainer = SimpleNamespace(world_size=world_size, global_rank=0)
    assert datamodule.train_dataloader().drop_last == (world_size == 1)
    assert not datamodule.val_dataloader().drop_last


def test_the_same_seed_gives_the_same_split(small_cohort):
    assert _datamodule(small_cohort).splits == _datamodule(small_cohort).splits


def test_fitted_state_sees_training_patients_only(small_cohort):
    """Change every val/test patient's clinical values: the fitted scaler and class weights must not move."""
    before = _datamodule(small_cohort)
    clinical = pd.read_csv(small_cohort / "clinical.csv")
    held_out = set(before.splits["val"]) | set(before.splits["test"])
    is_held_out = clinical["patient_id"].map(normalise_patient_id).isin(held_out)
    assert is_held_out.sum() == len(held_out)
    numeric = [c for c in clinical.columns if c != "patient_id"]
    clinical.loc[is_held_out, numeric] = clinical.loc[is_held_out, numeric] * 100 + 1000
    clinical.to_csv(small_cohort / "clinical.csv", index=False)
    after = _datamodule(small_cohort)
    assert after.splits == before.splits
    assert after.summary()["preprocessing"] == before.summary()["preprocessing"]
    assert after.class_weights == before.class_weights
    # ... and the held-out patients' transformed values did change, so the perturbation was real.
    assert not np.allclose(after.datasets["test"].arrays["tabular"], before.datasets["test"].arrays["tabular"])
    np.testing.assert_allclose(after.datasets["train"].arrays["tabular"], before.datasets["train"].arrays["tabular"])


def test_class_weights_are_inverse_training_frequency(small_cohort):
    datamodule = _datamodule(small_cohort)
    counts = datamodule.summary()["counts"]["train"]
    n = sum(counts.values())
    expected = [n / (3 * counts[c]) for c in datamodule.classes]
    assert datamodule.class_weights == pytest.approx(expected)


def test_tabular_preprocessor_imputes_scales_selects_from_train_only():
    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.normal(size=(50, 5)), columns=list("abcde"))
    y = (train["a"] > 0).astype(int).to_numpy()
    train.iloc[0, 1] = np.nan
    pre = TabularPreprocessor(TabularConfig(select_k=2, missing_indicators=True)).fit(train, y)
    out = pre.transform(train)
    assert out.shape == (50, 2) and np.isfinite(out).all()
    assert "a" in pre.summary()["selected"]
    with pytest.raises(DataError, match=r"missing columns \['e'\]"):
        pre.transform(train.drop(columns="e"))
    train["text"] = "x"
    with pytest.raises(DataError, match=r"non-numeric columns \['text'\]"):
        TabularPreprocessor(TabularConfig()).fit(train, y, source="clin.csv")
    empty = pd.DataFrame({"a": [1.0, 2.0], "b": [np.nan, np.nan]})
    with pytest.raises(DataError, match=r"no value in any training patient: \['b'\]"):
        TabularPreprocessor(TabularConfig()).fit(empty, np.array([0, 1]))


def test_augmentation_handles_nine_channels_and_never_flips():
    augment = build_augmentation(AugmentConfig(p=1.0, rotate_limit=0.0, shift_limit=0.0, brightness=(1.0, 1.0)))
    image = np.zeros((32, 32, 9), dtype=np.uint8)
    image[:, :16] = 200  # left half bright: a horizontal flip would move it
    for _ in range(20):
        out = augment(image=image)["image"]
        assert out.shape == (32, 32, 9) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, image)
    rotated = build_augmentation(AugmentConfig(p=1.0))(image=image)["image"]
    assert rotated.shape == (32, 32, 9)
    assert build_augmentation(AugmentConfig(enabled=False)) is None


def test_training_samples_are_augmented_and_evaluation_samples_are_not(small_cohort):
    datamodule = _datamodule(small_cohort, **{"data.augment.p": 1.0})
    train, test = datamodule.datasets["train"], datamodule.datasets["test"]
    assert not np.array_equal(train[0]["image"].numpy(), train[0]["image"].numpy())
    np.testing.assert_array_equal(test[0]["image"].numpy(), test[0]["image"].numpy())


def test_views_are_stacked_in_view_order(small_cohort):
    datamodule = _datamodule(small_cohort, **{"data.augment.enabled": False})
    dataset = datamodule.datasets["train"]
    pid = dataset.patient_ids[0]
    folder = next(small_cohort.glob(f"*/{pid.upper()}"))
    rest = np.asarray(Image.open(folder / "Rest QGS AC.png").convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(dataset[0]["image"][6:9].numpy().transpose(1, 2, 0), rest / 255.0, atol=1e-6)


def test_predefined_split_is_used_and_checked():
    from lightning_fusion.data.splits import predefined_split

    splits = pd.Series({"a": "train", "b": "val", "c": "test", "d": "train"})
    assert predefined_split(splits, ["a", "b", "c"]) == {"train": ["a"], "val": ["b"], "test": ["c"]}
    with pytest.raises(DataError, match=r"patients without a predefined split: \['zz'\]"):
        predefined_split(splits, ["a", "zz"])
    with pytest.raises(DataError, match=r"split names \['valid'\] are not among"):
        predefined_split(pd.Series({"a": "valid"}), ["a"])


def test_datamodule_uses_the_cohort_split_when_it_has_one(small_cohort, monkeypatch):
    from lightning_fusion.data.readers.mpi import MPIReader

    read = MPIReader.read

    def read_with_split(self, root):
        cohort = read(self, root)
        ids = sorted(cohort.labels.index)
        cohort.splits = pd.Series(
            ["test" if i % 5 == 0 else "val" if i % 5 == 1 else "train" for i in range(len(ids))], index=ids
        )
        return cohort

    monkeypatch.setattr(MPIReader, "read", read_with_split)
    datamodule = _datamodule(small_cohort)
    ids = sorted(sum(datamodule.splits.values(), []))
    assert datamodule.splits["test"] == ids[::5]
    assert _datamodule(small_cohort, **{"data.split.use_predefined": False}).splits["test"] != ids[::5]


def _flatten_to_labels_table(root):
    """Move patient folders out of their class folders and write their labels to labels.csv."""
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for patient in sorted(class_dir.iterdir()):
            rows.append({"patient_id": patient.name, "label": class_dir.name.upper()})
            patient.rename(root / patient.name)
        class_dir.rmdir()
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return rows


def test_mpi_labels_table_layout_reads_like_class_folders(small_cohort, small_cohort_master):
    reference = _datamodule(small_cohort_master).summary()
    rows = _flatten_to_labels_table(small_cohort)
    flat = _datamodule(small_cohort, **{"data.reader": {"name": "mpi", "labels_file": "labels.csv"}}).summary()
    assert flat["counts"] == reference["counts"] and flat["splits"] == reference["splits"]
    assert len(rows) == SMALL_PATIENTS


def test_mpi_labels_table_problems_name_the_patient(small_cohort):
    rows = _flatten_to_labels_table(small_cohort)
    reader = {"name": "mpi", "labels_file": "labels.csv"}
    frame = pd.DataFrame(rows)
    frame.loc[3, "label"] = "ischaemia"
    frame.to_csv(small_cohort / "labels.csv", index=False)
    pid = normalise_patient_id(rows[3]["patient_id"])
    message = rf"labels\.csv: patient {pid}: unknown label 'ischaemia'; did you mean 'ischemia'"
    with pytest.raises(DataError, match=message):
        _datamodule(small_cohort, **{"data.reader": reader})
    frame.drop(index=3).assign(label=lambda f: f["label"].str.lower()).to_csv(small_cohort / "labels.csv", index=False)
    summary = _datamodule(small_cohort, **{"data.reader": reader}).summary()
    assert summary["excluded_patients"]["no label"] == [pid]  # a folder without a label row is reported


def test_augmentation_is_train_only_and_recorded(small_cohort):
    datamodule = _datamodule(small_cohort)
    assert datamodule.datasets["train"].image_transform is not None
    assert datamodule.datasets["val"].image_transform is None and datamodule.datasets["test"].image_transform is None
    record = datamodule.summary()["augmentation"]
    assert record == {
        "applies_to": "train",
        "augmented_patients": len(datamodule.splits["train"]),
        "added_synthetic_samples": 0,
        "policies": {"image": "safe"},
    }
