"""The CT + chest X-ray + cough layout: reader, pairing rule, audio → log-mel cache, synthetic writer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

import lightning_fusion.data.readers.cxr_ct_cough  # noqa: F401  (registers the reader)
import lightning_fusion.demo.cxr_ct_cough  # noqa: F401  (registers the demo layout)
from lightning_fusion import make_demo_data
from lightning_fusion.config import load_config
from lightning_fusion.data import audio
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.data.readers import READERS
from lightning_fusion.data.readers.cxr_ct_cough import CxrCtCoughReaderConfig, natural_key
from lightning_fusion.demo.cxr_ct_cough import split_counts, write_cxr_ct_cough
from lightning_fusion.errors import ConfigError, DataError

PATIENTS = 24  # 6 per class: 4 train, 1 valid, 1 test
SPLIT_OF_FOLDER = {"train": "train", "valid": "val", "test": "test"}
ENCODER = {"name": "timm", "backbone": "test_resnet", "reduce_channels": None}


@pytest.fixture(scope="module")
def demo_master(tmp_path_factory) -> Path:
    """The synthetic dataset with cough spectrogram images (read-only: copy it to modify)."""
    return write_cxr_ct_cough(tmp_path_factory.mktemp("cxr_ct_cough") / "data", patients=PATIENTS, seed=0)


@pytest.fixture
def demo(demo_master, tmp_path) -> Path:
    """A private, modifiable copy of the synthetic dataset."""
    return Path(shutil.copytree(demo_master, tmp_path / "data"))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """An empty spectrogram cache for this test."""
    monkeypatch.setenv("LF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "log_mel"


def _read(root: Path, **options):
    return READERS.create("cxr_ct_cough", CxrCtCoughReaderConfig(**options)).read(root)


def _datamodule(root: Path, **reader_options) -> MultimodalDataModule:
    config = load_config(
        None,
        {
            "data.reader": {"name": "cxr_ct_cough", **reader_options},
            "data.root": str(root),
            "data.image_size": 32,
            "model.modalities": ["ct", "cxr", "cough"],
            "model.encoders": {"ct": ENCODER, "cxr": ENCODER, "cough": ENCODER},
        },
    )
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")
    return datamodule


def _folder(root: Path, split: str, modality: str, label: str) -> Path:
    return root / "processed_dataset_split" / split / modality / label


def _write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def _tone(path: Path, hertz: float, rate: int = 8000, seconds: float = 1.0) -> None:
    t = np.arange(int(rate * seconds)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, (0.5 * np.sin(2 * np.pi * hertz * t)).astype(np.float32), rate)


# --------------------------------------------------------------------------------------------------
# Reading the layout
# --------------------------------------------------------------------------------------------------
def test_counts_ids_and_predefined_splits(demo_master):
    cohort = _read(demo_master)
    expected = split_counts(PATIENTS)
    assert json.loads((demo_master / "cohort.json").read_text())["counts"] == expected
    for folder, per_class in expected.items():
        for label, count in per_class.items():
            ids = [f"{SPLIT_OF_FOLDER[folder]}/{label.lower()}/{k:04d}" for k in range(count)]
            assert (cohort.labels.loc[ids] == label).all()
            assert (cohort.splits.loc[ids] == SPLIT_OF_FOLDER[folder]).all()
    assert len(cohort.labels) == PATIENTS and cohort.excluded == {}
    assert cohort.classes == ["Healthy", "LungsCancer", "Pneumonia", "covid"]
    assert {m: src.patient_ids for m, src in cohort.modalities.items()} == {
        m: set(cohort.labels.index) for m in ("ct", "cxr", "cough", "stack")
    }
    # data.root may also be the processed_dataset_split folder itself.
    inner = _read(demo_master / "processed_dataset_split")
    assert inner.labels.equals(cohort.labels) and inner.splits.equals(cohort.splits)


def test_datamodule_uses_the_predefined_splits(demo_master):
    datamodule = _datamodule(demo_master)
    expected = split_counts(PATIENTS)
    summary = datamodule.summary()
    assert summary["counts"] == {SPLIT_OF_FOLDER[folder]: counts for folder, counts in expected.items()}
    assert summary["excluded"] == {}
    for split, ids in datamodule.splits.items():
        assert ids and all(pid.startswith(f"{split}/") for pid in ids)
    sample = datamodule.datasets["train"][0]
    assert {m: tuple(sample[m].shape) for m in ("ct", "cxr", "cough")} == {
        m: (1, 32, 32) for m in ("ct", "cxr", "cough")
    }


def test_stack_modality_is_the_three_images_as_channels(demo_master):
    cohort = _read(demo_master)
    sid = "train/pneumonia/0001"
    stacked = cohort.modalities["stack"].load(sid, 16)
    assert stacked.shape == (16, 16, 3)
    for channel, modality in enumerate(("ct", "cxr", "cough")):
        np.testing.assert_array_equal(stacked[:, :, channel], cohort.modalities[modality].load(sid, 16)[:, :, 0])
    with pytest.raises(ValueError, match="'stack' is reserved"):
        CxrCtCoughReaderConfig(modality_folders={"stack": "CT", "cxr": "CXR"})


def test_rgb_option_reads_three_channels(demo_master):
    cohort = _read(demo_master, channels_per_view=3)
    image = cohort.modalities["cxr"].load("train/healthy/0000", 16)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8


def test_pairing_follows_natural_sort_order(tmp_path):
    assert sorted(["img10.png", "img2.png", "Img1.png"], key=natural_key) == ["Img1.png", "img2.png", "img10.png"]
    root = tmp_path / "data"
    for number in (1, 2, 10):  # each modality names its files differently; only natural order pairs them
        _write_png(_folder(root, "train", "CT", "covid") / f"scan{number}.png", number)
        _write_png(_folder(root, "train", "CXR", "covid") / f"xray_{number:03d}.png", 100 + number)
        _write_png(_folder(root, "train", "Cough sound", "covid") / f"Cough {number}.PNG", 200 + number)
    cohort = _read(root)
    assert list(cohort.labels.index) == ["train/covid/0000", "train/covid/0001", "train/covid/0002"]
    files = {m: [p.name for p in src.files["train/covid/0002"]] for m, src in cohort.modalities.items()}
    assert files == {
        "ct": ["scan10.png"],
        "cxr": ["xray_010.png"],
        "cough": ["Cough 10.PNG"],
        "stack": ["scan10.png", "xray_010.png", "Cough 10.PNG"],
    }
    pixels = [int(cohort.modalities[m].load("train/covid/0001", 8)[0, 0, 0]) for m in ("ct", "cxr", "cough")]
    assert pixels == [2, 102, 202]


def test_unequal_counts_name_split_class_and_counts(demo):
    next(iter(sorted(_folder(demo, "valid", "CXR", "Pneumonia").iterdir()))).unlink()
    with pytest.raises(
        DataError, match=r"split 'valid', class 'Pneumonia': unequal file counts \(CT 1, CXR 0, Cough sound 1\)"
    ):
        _read(demo)


def test_truncate_option_excludes_and_reports_the_surplus(demo):
    (_folder(demo, "train", "CXR", "Healthy") / "cxr_healthy_4.png").unlink()
    datamodule = _datamodule(demo, on_unequal_counts="truncate")
    reasons = {
        reason: files
        for reason, files in datamodule.summary()["excluded_patients"].items()
        if "split 'train', class 'Healthy'" in reason
    }
    assert sorted(reasons.values()) == [
        ["train/CT/Healthy/ct_healthy_4.png"],
        ["train/Cough sound/Healthy/cough_healthy_4.png"],
    ]
    assert any("surplus ct file" in reason and "CT 4, CXR 3, Cough sound 4" in reason for reason in reasons)
    assert any("surplus cough file" in reason for reason in reasons)
    assert datamodule.summary()["counts"]["train"]["Healthy"] == 3
    assert datamodule.cohort.modalities["ct"].files["train/healthy/0002"][0].name == "ct_healthy_3.png"


def test_unknown_class_folder_suggests_the_closest(demo):
    folder = _folder(demo, "test", "CT", "LungsCancer")
    folder.rename(folder.with_name("Lung_Cancer"))
    with pytest.raises(DataError, match=r"Lung_Cancer: unknown class folder 'Lung_Cancer'; did you mean 'LungsCancer'"):
        _read(demo)


def test_missing_modality_folder_and_unknown_split_folder(demo):
    split = demo / "processed_dataset_split"
    (split / "valid" / "Cough sound").rename(split / "valid" / "Cough_sound")
    with pytest.raises(DataError, match=r"no folder 'Cough sound' for modality 'cough'.*did you mean 'Cough_sound'"):
        _read(demo)
    assert set(_read(demo, modality_folders={"ct": "CT", "cxr": "CXR"}).modalities) == {"ct", "cxr", "stack"}
    (split / "test").rename(split / "tset")
    with pytest.raises(DataError, match=r"unknown split folder 'tset'; did you mean 'test'"):
        _read(demo)


def test_corrupt_image_names_the_file(demo):
    (_folder(demo, "train", "CT", "Healthy") / "ct_healthy_1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"patient train/healthy/0000: unreadable image .*ct_healthy_1\.png"):
        _datamodule(demo)


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match=r"data\.reader: unknown on_unequal_counts 'truncat'; did you mean"):
        load_config(None, {"data.reader": {"name": "cxr_ct_cough", "on_unequal_counts": "truncat"}})
    with pytest.raises(ConfigError, match=r"data\.reader\.spectrogram: hop_length \(2048\) must not exceed n_fft"):
        load_config(None, {"data.reader": {"name": "cxr_ct_cough", "spectrogram": {"hop_length": 2048}}})
    resolved = load_config(None, {"data.reader": {"name": "cxr_ct_cough", "spectrogram": {"n_mels": 32}}})
    assert resolved.data.reader.options.spectrogram.n_mels == 32


# --------------------------------------------------------------------------------------------------
# Recordings → log-mel spectrogram images
# --------------------------------------------------------------------------------------------------
def test_log_mel_image_puts_low_frequencies_at_the_bottom():
    params = audio.MelSpectrogramParams(sample_rate=8000, n_mels=32, n_fft=256, hop_length=128)
    t = np.arange(8000) / 8000
    low = audio.log_mel_image(np.sin(2 * np.pi * 200 * t), params)
    high = audio.log_mel_image(np.sin(2 * np.pi * 3000 * t), params)
    assert low.shape == (32, 1 + 8000 // 128) and low.dtype == np.uint8
    assert int(np.argmax(low.mean(axis=1))) > 24 and int(np.argmax(high.mean(axis=1))) < 8
    assert low.max() == 255
    with pytest.raises(DataError, match=r"cough\.wav: the recording is silent"):
        audio.log_mel_image(np.zeros(8000), params, source="cough.wav")
    with pytest.raises(DataError, match=r"cough\.wav: 100 samples at 8000 Hz is shorter than one FFT window"):
        audio.log_mel_image(np.ones(100), params, source="cough.wav")


def test_wav_coughs_become_cached_spectrogram_images(tmp_path, cache_dir, monkeypatch):
    root = write_cxr_ct_cough(tmp_path / "wav", patients=12, seed=1, cough_audio=True)
    recordings = sorted(root.rglob("*.wav"))
    assert len(recordings) == 12 and not list((root / "processed_dataset_split").rglob("cough_*.png"))
    conversions = []
    convert = audio.log_mel_image
    monkeypatch.setattr(audio, "log_mel_image", lambda *a, **k: conversions.append(a) or convert(*a, **k))

    cohort = _read(root)
    images = {pid: paths[0] for pid, paths in cohort.modalities["cough"].files.items()}
    assert len(conversions) == 12 and len(images) == 12
    assert all(path.parent == cache_dir and path.suffix == ".png" for path in images.values())
    with Image.open(images["train/covid/0000"]) as image:
        assert image.mode == "L" and image.size == (1 + 16000 // 256, 64)  # 1 s at 16 kHz, 64 mel bands
    assert not list(cache_dir.glob(".*partial"))
    modified = {path: path.stat().st_mtime_ns for path in images.values()}

    again = _read(root)  # a fresh reader: every image comes from the cache
    assert len(conversions) == 12
    assert {pid: paths[0] for pid, paths in again.modalities["cough"].files.items()} == images
    assert {path: path.stat().st_mtime_ns for path in images.values()} == modified

    edited = _folder(root, "train", "Cough sound", "covid") / "cough_covid_1.wav"
    stat = edited.stat()
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed recording is converted again
    assert _read(root).modalities["cough"].files["train/covid/0000"][0] != images["train/covid/0000"]
    assert len(conversions) == 13
    assert _read(root, spectrogram=audio.MelSpectrogramParams(n_mels=32)).modalities["cough"].load(
        "train/covid/0000", 32
    ).shape == (32, 32, 1)
    assert len(conversions) == 25  # other parameters: other cached images


def test_corrupt_wav_names_the_file(tmp_path, cache_dir):
    root = tmp_path / "data"
    for modality in ("CT", "CXR"):
        _write_png(_folder(root, "train", modality, "Healthy") / "a1.png", 10)
        _write_png(_folder(root, "train", modality, "Healthy") / "a2.png", 20)
    _tone(_folder(root, "train", "Cough sound", "Healthy") / "c1.wav", 500)
    (_folder(root, "train", "Cough sound", "Healthy") / "c2.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(DataError, match=r"sample train/healthy/0001: unreadable audio file .*c2\.wav"):
        _read(root)


# --------------------------------------------------------------------------------------------------
# The synthetic writer
# --------------------------------------------------------------------------------------------------
def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_writer_is_deterministic_and_follows_the_layout(demo_master, tmp_path):
    again = write_cxr_ct_cough(tmp_path / "again", patients=PATIENTS, seed=0)
    assert _digests(again) == _digests(demo_master)
    assert _digests(write_cxr_ct_cough(tmp_path / "other", patients=PATIENTS, seed=1)) != _digests(demo_master)
    assert write_cxr_ct_cough(again, patients=PATIENTS, seed=0) == again  # same arguments: reused
    top = demo_master / "processed_dataset_split"
    assert sorted(p.name for p in top.iterdir()) == ["test", "train", "valid"]
    assert sorted(p.name for p in (top / "test").iterdir()) == ["CT", "CXR", "Cough sound"]
    assert sorted(p.name for p in (top / "test" / "CXR").iterdir()) == ["Healthy", "LungsCancer", "Pneumonia", "covid"]
    with Image.open(top / "train" / "CT" / "covid" / "ct_covid_1.png") as image:
        assert (image.mode, image.size) == ("L", (64, 64))
    with pytest.raises(ValueError, match="patients must be an integer >= 12"):
        write_cxr_ct_cough(tmp_path / "tiny", patients=8)


def test_make_demo_data_cli(tmp_path, capsys):
    assert make_demo_data.main(["cxr_ct_cough", str(tmp_path / "cli"), "--patients", "12", "--seed", "2"]) == 0
    assert "--data.reader.name cxr_ct_cough" in capsys.readouterr().out
    assert len(_read(tmp_path / "cli").labels) == 12
