"""The ``medmnist`` layout: a MedMNIST ``.npz`` (synthetic and the real PneumoniaMNIST train+val file)."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import lightning_fusion.data.readers.medmnist  # noqa: F401  (registers the reader)
import lightning_fusion.demo.medmnist  # noqa: F401  (registers the writer)
from lightning_fusion import make_demo_data
from lightning_fusion.config import load_config
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.data.readers.medmnist import TRAIN_DUPLICATE, MedMNISTConfig, MedMNISTReader
from lightning_fusion.demo.medmnist import write_medmnist
from lightning_fusion.errors import DataError

IMAGES = 120
LOGGER = "lightning_fusion.data.readers.medmnist"


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """The official form (train/val/test arrays), 120 images."""
    return write_medmnist(tmp_path_factory.mktemp("mm") / "official", patients=IMAGES, seed=1)


@pytest.fixture(scope="module")
def trainval(tmp_path_factory) -> Path:
    """The train+val form (no test arrays), like the real file here."""
    return write_medmnist(tmp_path_factory.mktemp("mm") / "trainval", patients=IMAGES, seed=1, with_test=False)


@pytest.fixture(scope="module")
def real_file(shared_data) -> Path:
    path = shared_data / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
    if not path.is_file():
        pytest.fail(f"real PneumoniaMNIST file missing: {path}")
    return path


def _read(root, **options):
    return MedMNISTReader(MedMNISTConfig(**options)).read(root)


def _manifest(root) -> dict:
    return json.loads((root / "cohort.json").read_text())


def _arrays(root) -> dict[str, np.ndarray]:
    with np.load(root / _manifest(root)["file"]) as npz:
        return {key: npz[key] for key in npz.files}


def _split_ids(cohort) -> dict[str, list[str]]:
    """Ids per predefined split, without the samples the reader excluded."""
    excluded = {sid for ids in cohort.excluded.values() for sid in ids}
    splits = cohort.splits[~cohort.splits.index.isin(excluded)]
    return {name: sorted(splits.index[splits == name]) for name in ("train", "val", "test")}


def _save(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


def _setup(root, **reader_options):
    config = load_config(
        None,
        {
            "data.reader": {"name": "medmnist", **reader_options},
            "data.root": str(root),
            "data.image_size": 28,
            "data.batch_size": 64,
            "model.modalities": ["image"],
            "model.encoders": {"image": {"name": "timm", "backbone": "test_resnet", "reduce_channels": None}},
        },
    )
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")
    return datamodule


def test_writer_is_deterministic_in_both_forms(official, trainval, tmp_path):
    assert _manifest(official)["file"] == "pneumoniamnist.npz"
    assert _manifest(trainval)["file"] == "pneumoniamnist_trainval.npz"
    again = write_medmnist(tmp_path / "again", patients=IMAGES, seed=1)
    assert (again / "pneumoniamnist.npz").read_bytes() == (official / "pneumoniamnist.npz").read_bytes()
    other = write_medmnist(tmp_path / "other", patients=IMAGES, seed=2)
    assert (other / "pneumoniamnist.npz").read_bytes() != (official / "pneumoniamnist.npz").read_bytes()
    arrays = _arrays(official)
    assert sorted(arrays) == sorted(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
    assert {len(arrays[f"{s}_images"]) for s in ("val", "test")} == {12} and len(arrays["train_images"]) == 96
    assert arrays["train_images"].shape[1:] == (28, 28) and arrays["train_images"].dtype == np.uint8
    assert arrays["train_labels"].shape == (96, 1) and set(np.unique(arrays["train_labels"])) == {0, 1}
    assert sorted(_arrays(trainval)) == ["train_images", "train_labels", "val_images", "val_labels"]


def test_official_form_uses_the_files_splits_and_drops_cross_split_duplicates(official, caplog):
    arrays, manifest = _arrays(official), _manifest(official)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        cohort = _read(official)
    planted = sorted(f"train-{d['train']:05d}" for d in manifest["duplicates"]["train_of_val_or_test"])
    assert len(planted) == 1 and cohort.excluded == {TRAIN_DUPLICATE: planted}
    assert "1 image(s) are a duplicate of a val/test image, excluded" in caplog.text
    splits = _split_ids(cohort)
    assert {name: len(ids) for name, ids in splits.items()} == {"train": 95, "val": 12, "test": 12}
    assert splits["test"] == [f"test-{i:05d}" for i in range(12)]
    for sid in ("train-00000", "val-00003", "test-00011"):
        split, index = sid.split("-")
        assert cohort.labels[sid] == ["normal", "pneumonia"][int(arrays[f"{split}_labels"][int(index), 0])]
        np.testing.assert_array_equal(cohort.modalities["image"].images[sid], arrays[f"{split}_images"][int(index)])
    twin = manifest["duplicates"]["train_of_train"]
    copy, original = (f"train-{twin[k]:05d}" for k in ("copy", "original"))
    assert cohort.groups[copy] == cohort.groups[original]
    assert cohort.groups.nunique() == len(cohort.groups) - 1


def test_trainval_form_carves_a_stratified_val_and_tests_on_the_files_val(trainval, caplog):
    arrays = _arrays(trainval)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cohort = _read(trainval, val_fraction=0.25, seed=5)
    assert "no test_images/test_labels" in caplog.text and "is the test split" in caplog.text
    splits = _split_ids(cohort)
    assert splits["test"] == [f"val-{i:05d}" for i in range(len(arrays["val_images"]))]
    assert all(sid.startswith("train-") for sid in splits["train"] + splits["val"])
    kept_train = cohort.labels.loc[splits["train"] + splits["val"]]
    for label, n in kept_train.value_counts().items():
        carved = (cohort.labels.loc[splits["val"]] == label).sum()
        assert abs(carved - 0.25 * n) <= 1.5, (label, carved, n)
    twin = _manifest(trainval)["duplicates"]["train_of_train"]
    twins = {f"train-{twin[k]:05d}" for k in ("copy", "original")}
    assert len({name for name, ids in splits.items() if twins & set(ids)}) == 1  # copies on one side
    assert _split_ids(_read(trainval, val_fraction=0.25, seed=5)) == splits
    assert _split_ids(_read(trainval, val_fraction=0.25, seed=6))["val"] != splits["val"]


def test_duplicates_can_be_kept_with_a_warning(official, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cohort = _read(official, drop_cross_split_duplicates=False)
    assert cohort.excluded == {}
    assert "KEPT (they leak into evaluation)" in caplog.text
    assert len(_split_ids(cohort)["train"]) == 96


def test_datamodule_on_the_synthetic_file_keeps_the_predefined_splits(official):
    datamodule = _setup(official)
    summary = datamodule.summary()
    assert {name: sum(c.values()) for name, c in summary["counts"].items()} == {"train": 95, "val": 12, "test": 12}
    assert summary["excluded"] == {TRAIN_DUPLICATE: 1}
    assert datamodule.specs["image"].shape == (1, 28, 28)


def test_rgb_images_and_resizing(tmp_path):
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for s, n in (("train", 6), ("val", 2))}
    labels = {s: np.array([[0], [1]] * (len(images[s]) // 2), dtype=np.uint8) for s in images}
    _save(
        tmp_path / "bloodmnist.npz",
        **{f"{s}_{k}": d[s] for s in images for k, d in (("images", images), ("labels", labels))},
    )
    cohort = _read(tmp_path, classes=["a", "b"], val_fraction=0.5)
    loaded = cohort.modalities["image"].load_many(["train-00000", "val-00001"], 16)
    assert loaded.shape == (2, 16, 16, 3) and loaded.dtype == np.uint8


def _good_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 8), ("val", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array([[0], [1]] * (n // 2), dtype=np.uint8)
    return arrays


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"val_labels": None}, r"bad\.npz: missing key\(s\) \['val_labels'\]"),
        ({"test_images": np.zeros((2, 28, 28), np.uint8)}, r"missing key\(s\) \['test_labels'\]"),
        ({"train_labels": np.zeros((7, 1), np.uint8)}, r"train_images has 8 images but train_labels has 7 labels"),
        ({"val_images": np.zeros((4, 28, 28), np.float32)}, r"bad\.npz: val_images has dtype float32; expected uint8"),
        ({"train_images": np.zeros((8, 28, 28, 2), np.uint8)}, r"train_images has shape \(8, 28, 28, 2\)"),
        ({"train_labels": np.zeros((8, 1), np.float32)}, r"train_labels has dtype float32; expected integer"),
        ({"train_labels": np.zeros((8, 3), np.uint8)}, r"train_labels has shape \(8, 3\).*multi-label"),
        (
            {"val_labels": np.array([[0], [1], [2], [1]], np.uint8)},
            r"bad\.npz: val split, position 2: label 2 is not a class index 0\.\.1",
        ),
    ],
)
def test_bad_files_name_the_file_and_key(tmp_path, change, message):
    arrays = _good_arrays()
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        _read(tmp_path)


def test_finding_the_file(tmp_path):
    with pytest.raises(DataError, match=r"expected one \.npz file, found 0 \(none\)"):
        _read(tmp_path)
    _save(tmp_path / "a.npz", **_good_arrays())
    _save(tmp_path / "b.npz", **_good_arrays())
    with pytest.raises(DataError, match=r"found 2 \(a\.npz, b\.npz\); set data\.reader\.file"):
        _read(tmp_path)
    assert len(_read(tmp_path, file="b.npz").labels) == 12
    assert len(_read(None, file=str(tmp_path / "a.npz")).labels) == 12
    with pytest.raises(DataError, match=r"MedMNIST file not found: .*c\.npz"):
        _read(tmp_path, file="c.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"cannot read MedMNIST file .*broken\.npz"):
        _read(tmp_path, file="broken.npz")
    with pytest.raises(DataError, match="medmnist data folder not found"):
        _read(tmp_path / "nowhere")


def test_invalid_options():
    with pytest.raises(ValueError, match="val_fraction"):
        MedMNISTConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="distinct"):
        MedMNISTConfig(classes=["a", "a"])


def test_make_demo_data_cli_writes_a_readable_file(tmp_path, capsys):
    root = tmp_path / "cli"
    assert make_demo_data.main(["medmnist", str(root), "--patients", "50", "--seed", "3"]) == 0
    assert "--data.reader.name medmnist" in capsys.readouterr().out
    assert len(_read(root).labels) == 50


def test_real_pneumoniamnist_file(real_file, caplog):
    with np.load(real_file) as npz:
        assert sorted(npz.files) == ["train_images", "train_labels", "val_images", "val_labels"]
        train_labels, val_images = npz["train_labels"][:, 0], npz["val_images"]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cohort = _read(real_file.parent)
    assert "no test_images/test_labels" in caplog.text
    assert cohort.classes == ["normal", "pneumonia"]
    train_ids = [sid for sid in cohort.labels.index if sid.startswith("train-")]
    assert len(train_ids) == 4708 and len(cohort.labels) - len(train_ids) == 524
    assert cohort.labels.loc[train_ids].value_counts().to_dict() == {"pneumonia": 3494, "normal": 1214}
    assert list(np.flatnonzero(train_labels == 0)[[0, -1]]) == [0, 1213]  # normals first in the file
    # 10 train images are byte-identical to 8 val (= test) images: dropped, reported.
    dropped = cohort.excluded[TRAIN_DUPLICATE]
    assert list(cohort.excluded) == [TRAIN_DUPLICATE] and len(dropped) == 10
    val_bytes = {image.tobytes() for image in val_images}
    images = cohort.modalities["image"].images
    assert all(images[sid].tobytes() in val_bytes for sid in dropped)
    assert len({images[sid].tobytes() for sid in dropped}) == 8
    splits = _split_ids(cohort)
    assert splits["test"] == sorted(f"val-{i:05d}" for i in range(524))
    seen = [sid for ids in splits.values() for sid in ids]
    assert len(seen) == len(set(seen)) == 4708 - 10 + 524  # no id in two splits
    kept_train = cohort.labels.loc[splits["train"] + splits["val"]].value_counts()
    carved = cohort.labels.loc[splits["val"]].value_counts()
    assert carved.sum() == len(splits["val"]) and abs(len(splits["val"]) - 470) <= 2
    for label in ("normal", "pneumonia"):
        assert abs(carved[label] / kept_train[label] - 0.1) < 0.003, label  # stratified
    # No test image (nor a copy of one) is left in train or val.
    assert not {images[sid].tobytes() for sid in splits["train"] + splits["val"]} & val_bytes


def test_datamodule_on_the_real_file(real_file):
    datamodule = _setup(real_file.parent)
    summary = datamodule.summary()
    counts = {name: sum(c.values()) for name, c in summary["counts"].items()}
    assert counts["test"] == 524 and counts["train"] + counts["val"] == 4698
    assert summary["counts"]["test"] == {"normal": 135, "pneumonia": 389}
    assert summary["excluded"] == {TRAIN_DUPLICATE: 10}
    assert datamodule.specs["image"].shape == (1, 28, 28)
    batch = next(iter(datamodule.val_dataloader()))
    assert tuple(batch["image"].shape) == (64, 1, 28, 28)


def test_real_images_upsample_to_a_larger_image_size(real_file):
    """``data.image_size: 64`` upsamples the 28 px images (bilinear); shrunk back they are nearly the originals."""
    from PIL import Image

    cohort = _read(real_file.parent)
    ids = ["train-00000", "train-04000", "val-00000"]
    large = cohort.modalities["image"].load_many(ids, 64)
    assert large.shape == (3, 64, 64, 1) and large.dtype == np.uint8
    original = cohort.modalities["image"].load_many(ids, 28)
    for upsampled, image in zip(large, original):
        back = np.asarray(Image.fromarray(upsampled[:, :, 0]).resize((28, 28), Image.Resampling.BILINEAR))
        assert np.abs(back.astype(int) - image[:, :, 0]).mean() < 6
