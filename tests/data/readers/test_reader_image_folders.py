"""The ``image_folders`` layout: single images in class folders, its synthetic writer, conversion, grouping."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lightning_fusion.data.readers.image_folders  # noqa: F401  (registers the reader)
import lightning_fusion.demo.image_folders  # noqa: F401  (registers the writer)
from lightning_fusion import make_demo_data
from lightning_fusion.config import load_config
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.data.readers.image_folders import ImageFoldersConfig, ImageFoldersReader
from lightning_fusion.demo.image_folders import PATIENT_PATTERN, write_image_folders
from lightning_fusion.errors import DataError

PATIENTS = 16


@pytest.fixture(scope="module")
def slices_master(tmp_path_factory) -> Path:
    """16 synthetic patients (read-only: copy it to modify)."""
    return write_image_folders(tmp_path_factory.mktemp("cmr") / "cmr", patients=PATIENTS, seed=1)


@pytest.fixture
def slices(slices_master, tmp_path) -> Path:
    return Path(shutil.copytree(slices_master, tmp_path / "cmr"))


def _read(root, **options):
    return ImageFoldersReader(ImageFoldersConfig(**options)).read(root)


def _setup(root, **reader_options):
    config = load_config(
        None,
        {
            "data.reader": {"name": "image_folders", **reader_options},
            "data.root": str(root),
            "data.image_size": 32,
            "data.batch_size": 8,
            "data.split": {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 3},
            "model.modalities": ["image"],
            "model.encoders": {"image": {"name": "timm", "backbone": "test_resnet", "reduce_channels": None}},
        },
    )
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")
    return datamodule


def _manifest(root) -> dict:
    return json.loads((root / "cohort.json").read_text())


def _gray_ramp() -> np.ndarray:
    """A 16×16 grayscale image spanning 0..255 (so 16-bit rescaling to its own range is exact)."""
    return np.linspace(0, 255, 256).round().astype(np.uint8).reshape(16, 16)


def test_writer_is_deterministic_and_writes_the_layout(slices_master, tmp_path):
    again = write_image_folders(tmp_path / "again", patients=PATIENTS, seed=1)
    files = sorted(p.relative_to(slices_master) for p in slices_master.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((slices_master / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = write_image_folders(tmp_path / "other", patients=PATIENTS, seed=2)
    assert (other / "cohort.json").read_bytes() != (slices_master / "cohort.json").read_bytes()

    manifest = _manifest(slices_master)
    assert {p.parts[0] for p in files} == {"Normal", "Sick"}
    assert manifest["images"] == len(files)
    slices_per_patient = {}
    for f in files:
        assert f.name.startswith("cmr") and "_slice" in f.name, f
        slices_per_patient.setdefault((f.parts[0], f.name.split("_")[0]), []).append(f)
    assert len(slices_per_patient) == PATIENTS
    assert {len(v) for v in slices_per_patient.values()} <= {2, 3}
    per_class = {c: len({p for (cls, p) in slices_per_patient if cls == c}) for c in ("Normal", "Sick")}
    assert per_class == manifest["class_counts"]
    for mode, stored in manifest["other_formats"].items():
        assert stored, f"no {mode} file mixed in"
        for relative in stored:
            with Image.open(slices_master / relative) as image:
                assert image.mode == mode and image.size == (64, 64)


def test_reader_counts_labels_and_ids(slices_master):
    cohort = _read(slices_master)
    manifest = _manifest(slices_master)
    assert cohort.classes == ["Normal", "Sick"]
    assert len(cohort.labels) == manifest["images"]
    for folder in ("Normal", "Sick"):
        assert (cohort.labels == folder).sum() == len(list((slices_master / folder).glob("*.png")))
    first = sorted((slices_master / "Normal").glob("*.png"))[0]
    sample_id = f"normal/{first.stem.replace('_', '-')}"
    assert cohort.labels[sample_id] == "Normal"
    assert cohort.modalities["image"].files[sample_id] == [first]
    assert cohort.groups is None and cohort.splits is None  # each file its own patient; no predefined split
    # Given class names match folders case-insensitively and are used as the labels.
    renamed = _read(slices_master, classes=["sick", "normal"])
    assert renamed.classes == ["sick", "normal"] and sorted(renamed.labels.unique()) == ["normal", "sick"]


def test_patient_pattern_groups_slices_and_splits_keep_patients_whole(slices_master):
    cohort = _read(slices_master, patient_pattern=PATIENT_PATTERN)
    patient_of = {sid: sid.split("/")[-1].split("-slice")[0] for sid in cohort.labels.index}  # cmr0001
    assert cohort.groups.to_dict() == patient_of
    assert cohort.groups.nunique() == PATIENTS
    datamodule = _setup(slices_master, patient_pattern=PATIENT_PATTERN)
    split_of_patient = {}
    for split, ids in datamodule.splits.items():
        for sid in ids:
            patient = patient_of[sid]
            assert split_of_patient.setdefault(patient, split) == split, f"patient {patient} crosses splits"
    assert sum(len(ids) for ids in datamodule.splits.values()) == len(cohort.labels)
    assert {s: len(v) for s, v in datamodule.splits.items() if not v} == {}
    assert datamodule.specs["image"].shape[0] == 1  # grayscale: one channel, RGB/16-bit files converted
    batch = next(iter(datamodule.train_dataloader()))
    assert tuple(batch["image"].shape[1:]) == (1, 32, 32)


def test_rgb_rgba_and_16_bit_files_become_the_wanted_mode(tmp_path):
    gray = _gray_ramp()
    for folder in ("Normal", "Sick"):
        (tmp_path / folder).mkdir()
        Image.fromarray(gray, mode="L").save(tmp_path / folder / "gray.png")
        Image.fromarray(gray, mode="L").convert("RGB").save(tmp_path / folder / "rgb.png")
        Image.fromarray(gray, mode="L").convert("RGBA").save(tmp_path / folder / "rgba.png")
        Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / folder / "deep.png")
    assert Image.open(tmp_path / "Normal" / "deep.png").mode == "I;16"
    cohort = _read(tmp_path)
    image = cohort.modalities["image"]
    loaded = {sid: image.load(sid, 16) for sid in sorted(image.patient_ids)}
    assert len(loaded) == 8
    for sid, array in loaded.items():
        assert array.shape == (16, 16, 1) and array.dtype == np.uint8, sid
        np.testing.assert_array_equal(array[:, :, 0], gray, err_msg=sid)
    rgb = _read(tmp_path, channels=3).modalities["image"].load("normal/gray", 16)
    assert rgb.shape == (16, 16, 3) and (rgb == gray[:, :, None]).all()
    # Without conversion an RGB file in a grayscale set is an error naming the file.
    strict = _read(tmp_path, convert=False).modalities["image"]
    with pytest.raises(DataError, match=r"rgb\.png has 3 channel\(s\) \(mode RGB\); expected 1"):
        strict.load("normal/rgb", 16)


def test_sub_folders_non_image_files_and_hidden_files(tmp_path, caplog):
    gray = _gray_ramp()
    for relative in ("Normal/a.png", "Normal/2021/site b/a.png", "Sick/x/y/z.jpg", "Sick/q.bmp"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gray).save(tmp_path / relative)
    (tmp_path / "Normal" / "notes.txt").write_text("not an image")
    (tmp_path / "Sick" / "x" / "scan.dcm").write_bytes(b"DICM")
    (tmp_path / "Sick" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / ".cache").mkdir()  # hidden folder: not a class
    (tmp_path / "README.md").write_text("files at the root are not samples")
    with caplog.at_level(logging.INFO, logger="lightning_fusion.data.readers.image_folders"):
        cohort = _read(tmp_path)
    assert sorted(cohort.labels.index) == ["normal/2021/site-b/a", "normal/a", "sick/q", "sick/x/y/z"]
    assert cohort.classes == ["Normal", "Sick"]
    assert "ignored 3 non-image file(s)" in caplog.text
    assert ".dcm ×1" in caplog.text and ".txt ×1" in caplog.text


def test_patients_spanning_classes_are_one_group(tmp_path, caplog):
    gray = _gray_ramp()
    for relative in ("Normal/p1_slice1.png", "Sick/p1_slice2.png", "Sick/p2_slice1.png", "Normal/p3_slice1.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gray).save(tmp_path / relative)
    with caplog.at_level(logging.WARNING, logger="lightning_fusion.data.readers.image_folders"):
        cohort = _read(tmp_path, patient_pattern=PATIENT_PATTERN)
    assert cohort.groups.to_dict() == {
        "normal/p1-slice1": "p1",
        "normal/p3-slice1": "p3",
        "sick/p1-slice2": "p1",
        "sick/p2-slice1": "p2",
    }
    assert "1 patient(s) have images in several class folders" in caplog.text and "p1" in caplog.text


def test_bad_folders_name_the_culprit(slices, tmp_path):
    with pytest.raises(DataError, match=r"image_folders data folder not found: .*nowhere"):
        _read(tmp_path / "nowhere")
    (slices / "Normal").rename(slices / "Normals")
    with pytest.raises(DataError, match=r"Normals: unknown class folder 'Normals'; did you mean 'normal'"):
        _read(slices, classes=["normal", "sick"])
    with pytest.raises(DataError, match=r"no folder for class\(es\) \['dilated'\]; found folders"):
        _read(slices, classes=["normals", "sick", "dilated"])
    (slices / "normal").mkdir()
    with pytest.raises(DataError, match=r"no image files .* for class 'normal'"):
        _read(slices)
    (slices / "normal").rmdir()
    shutil.rmtree(slices / "Sick")
    with pytest.raises(DataError, match=r"only one class folder \(Normals\)"):
        _read(slices)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class folders"):
        _read(empty)


def test_unmatched_patient_pattern_names_the_file(slices):
    odd = slices / "Sick" / "extra" / "scan7.png"
    odd.parent.mkdir()
    shutil.copy(next((slices / "Sick").glob("*.png")), odd)
    with pytest.raises(DataError, match=r"scan7\.png: patient_pattern .* finds no patient id in 'extra/scan7\.png'"):
        _read(slices, patient_pattern=PATIENT_PATTERN)


def test_same_stem_twice_is_a_duplicate_id(slices):
    first = sorted((slices / "Normal").glob("*.png"))[0]
    Image.open(first).convert("L").save(first.with_suffix(".jpg"))
    with pytest.raises(DataError, match=rf"duplicate patient ids .*{first.stem}"):
        _read(slices)


def test_unreadable_image_names_the_file_at_setup(slices):
    broken = sorted((slices / "Sick").glob("*.png"))[0]
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match=rf"unreadable image .*{broken.name}"):
        _setup(slices)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"channels": 2}, "channels must be 1"),
        ({"patient_pattern": r"^\w+_slice"}, "exactly one group"),
        ({"patient_pattern": r"^(\w+"}, "not a valid regex"),
        ({"classes": ["Normal", "normal"]}, "distinct"),
    ],
)
def test_invalid_options(options, message):
    with pytest.raises(ValueError, match=message):
        ImageFoldersConfig(**options)


def test_make_demo_data_cli_writes_a_readable_set(tmp_path, capsys):
    root = tmp_path / "cli"
    assert make_demo_data.main(["image_folders", str(root), "--patients", "10", "--seed", "4"]) == 0
    assert "--data.reader.name image_folders" in capsys.readouterr().out
    cohort = _read(root, patient_pattern=PATIENT_PATTERN)
    assert cohort.groups.nunique() == 10
    assert _manifest(root)["patients"] == 10
