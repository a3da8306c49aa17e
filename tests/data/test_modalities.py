"""Modality sources and 1-D signal preprocessing: shapes, conversions, and errors that name the culprit."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lightning_fusion.config import SignalConfig
from lightning_fusion.data.modalities import ArrayImageModality, ImageStackModality, SignalModality
from lightning_fusion.data.signal import SignalPreprocessor
from lightning_fusion.data.splits import assert_patients_disjoint, stratified_split
from lightning_fusion.errors import DataError, LeakageError


def _signals(rng, n=20, leads=3, samples=50, offset=0.0):
    return (rng.normal(size=(n, leads, samples)) * np.array([1.0, 5.0, 0.1])[:leads, None] + offset).astype(np.float32)


@pytest.mark.parametrize("mode", ["lead", "global", "sample", "none"])
def test_signal_normalisation_modes(mode):
    rng = np.random.default_rng(0)
    train = _signals(rng) + np.array([2.0, -1.0, 0.5], dtype=np.float32)[None, :, None]
    out = SignalPreprocessor(SignalConfig(normalise=mode)).fit(train).transform(train)
    assert out.dtype == np.float32 and out.shape == train.shape
    if mode == "lead":
        np.testing.assert_allclose(out.mean(axis=(0, 2)), 0, atol=1e-5)
        np.testing.assert_allclose(out.std(axis=(0, 2)), 1, atol=1e-4)
    elif mode == "global":
        assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-4
        assert out[:, 1].std() > 3 * out[:, 2].std()  # lead scales are kept relative to each other
    elif mode == "sample":
        np.testing.assert_allclose(out.mean(axis=2), 0, atol=1e-5)
    else:
        np.testing.assert_array_equal(out, train)


def test_signal_normalisation_is_fitted_on_train_only():
    rng = np.random.default_rng(1)
    train, other = _signals(rng), _signals(rng, offset=100.0)
    fitted = SignalPreprocessor(SignalConfig()).fit(train)
    before = fitted.summary()
    fitted.transform(other)
    assert fitted.summary() == before
    refit = SignalPreprocessor(SignalConfig()).fit(train)
    assert refit.summary() == before  # the state depends on train alone
    expected = (other - fitted.mean[None, :, None]) / fitted.std[None, :, None]
    np.testing.assert_allclose(fitted.transform(other), expected, rtol=1e-4, atol=1e-4)  # train stats, not refitted


def test_signal_preprocessor_rejects_another_shape():
    fitted = SignalPreprocessor(SignalConfig()).fit(np.zeros((4, 2, 10), np.float32))
    with pytest.raises(ValueError, match=r"expected signals \(N, 2, 10\)"):
        fitted.transform(np.zeros((4, 2, 11), np.float32))


def test_signal_modality_checks_shape_and_values():
    data = {"a": np.zeros((2, 10)), "b": np.zeros((2, 10)), "c": np.zeros((2, 9)), "d": np.full((2, 10), np.nan)}
    source = SignalModality(data.__getitem__, list(data), "signals.csv", leads=["I", "II"])
    assert source.load_many(["a", "b"]).shape == (2, 2, 10)
    with pytest.raises(DataError, match=r"signals\.csv: signals must all have shape \(2, 10\).*c \(2, 9\)"):
        source.load_many(["a", "b", "c"])
    with pytest.raises(DataError, match="patient d: 20 missing or non-finite value.*lead 0, sample 0"):
        source.load("d")
    one_lead = SignalModality(lambda pid: np.arange(5.0), ["x"], "s.csv")
    assert one_lead.load("x").shape == (1, 5)
    wrong_leads = SignalModality(lambda pid: np.zeros((3, 5)), ["x"], "s.csv", leads=["I", "II"])
    with pytest.raises(DataError, match=r"patient x: 3 leads, expected 2"):
        wrong_leads.load("x")


def test_array_images_are_resized_and_checked():
    images = {"a": np.full((28, 28), 200, np.uint8), "b": np.zeros((28, 28, 3), np.uint8), "c": np.zeros((28, 28))}
    source = ArrayImageModality(images, "x.npz")
    assert source.load_many(["a"], 32).shape == (1, 32, 32, 1)
    assert source.load_many(["a"], 28)[0, 0, 0, 0] == 200
    assert source.load_many(["b"], 16).shape == (1, 16, 16, 3)
    with pytest.raises(DataError, match=r"x\.npz: sample c: expected a uint8"):
        source.load_many(["c"], 28)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(np.full((20, 20, 3), 90, np.uint8), "RGB"),
        lambda: Image.fromarray(np.full((20, 20), 90, np.uint8), "L"),
        lambda: Image.fromarray(np.linspace(0, 60000, 400).reshape(20, 20).astype(np.uint16)),
    ],
    ids=["rgb", "gray", "16-bit"],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_image_conversion_handles_gray_rgb_and_16_bit(tmp_path, make, channels):
    path = tmp_path / "img.png"
    make().save(path)
    array = ImageStackModality({"p": [path]}, channels_per_view=channels, convert=True).load("p", 16)
    assert array.shape == (16, 16, channels) and array.dtype == np.uint8
    strict = ImageStackModality({"p": [path]}, channels_per_view=channels)
    if len(Image.open(path).getbands()) != channels:
        with pytest.raises(DataError, match="patient p: .*img.png has 1 channel|patient p: .*img.png has 3 channel"):
            strict.load("p", 16)


def test_grouped_split_keeps_each_patient_whole():
    samples = [f"s{i}" for i in range(60)]
    patients = pd.Series({s: f"p{i // 3}" for i, s in enumerate(samples)})  # 3 records per patient
    labels = pd.Series({s: ("a" if int(patients[s][1:]) % 3 else "b") for s in samples})
    splits = stratified_split(labels, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0, groups=patients)
    assert sum(len(v) for v in splits.values()) == 60
    assert_patients_disjoint(splits, patients)
    for name in ("val", "test"):
        assert set(labels[splits[name]]) == {"a", "b"}  # stratified at patient level
    leaky = {"train": ["s0", "s3"], "val": ["s1"], "test": ["s6"]}  # s0 and s1 are the same patient p0
    with pytest.raises(LeakageError, match=r"p0 \(train and val\)"):
        assert_patients_disjoint(leaky, patients)
