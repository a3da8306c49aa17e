"""The device pipeline: whole uint8 batches, converted and augmented on the training device.

What must hold: evaluation batches are bit for bit what the per-sample pipeline gives; training
batches are augmented by the same policy (no flips, the same geometry and brightness ranges, the same
share of untouched images), in training only and never twice; ``num_workers: auto`` and the other
loader settings resolve sensibly for the device.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from lightning_fusion.config import AugmentConfig, DataConfig, load_config
from lightning_fusion.data.batch_transforms import BatchAugment, affine_warp
from lightning_fusion.data.datamodule import MultimodalDataModule, resolve_loader_settings
from lightning_fusion.data.dataset import BatchedSamples
from lightning_fusion.data.kinds import KINDS
from lightning_fusion.data.transforms import build_augmentation
from lightning_fusion.errors import ConfigError
from lightning_fusion.lit import FusionLitModule
from tests.conftest import small_overrides


@pytest.fixture(scope="module")
def datamodule(small_cohort_master):
    config = load_config(None, small_overrides(small_cohort_master, **{"data.pipeline": "device"}))
    module = MultimodalDataModule(config.data, config.model.modalities)
    module.setup("fit")
    return module


def _module(datamodule, **overrides) -> FusionLitModule:
    config = load_config(None, small_overrides(datamodule.root, **overrides))
    specs = {m: {"kind": s.kind, "shape": list(s.shape)} for m, s in datamodule.specs.items()}
    return FusionLitModule(config, specs, datamodule.classes, datamodule.class_weights)


def test_device_loader_batches_are_uint8_and_hold_what_the_per_sample_loader_holds(datamodule):
    loader = datamodule.val_dataloader()
    assert isinstance(loader.dataset, BatchedSamples)
    batch = next(iter(loader))
    dataset = datamodule.datasets["val"]
    per_sample = default_collate([dataset[i] for i in range(len(batch["label"]))])
    assert batch["image"].dtype == torch.uint8 and tuple(batch["image"].shape[1:]) == (9, 32, 32)
    assert batch["tabular"].dtype == torch.float32
    assert set(batch) == set(per_sample)
    for key in ("tabular", "label", "index"):
        assert batch[key].dtype == per_sample[key].dtype and torch.equal(batch[key], per_sample[key])
    assert batch["patient_id"] == per_sample["patient_id"]


def test_evaluation_batches_are_bit_identical_to_the_per_sample_path(datamodule):
    module = _module(datamodule)
    for split in ("val", "test"):
        dataset = datamodule.datasets[split]
        indices = list(range(len(dataset)))
        finished = module.finish_batch(dataset.batch(indices))  # what validation and test see
        per_sample = default_collate([dataset[i] for i in indices])
        assert finished["image"].dtype == torch.float32 and finished["image"].is_contiguous()
        assert torch.equal(finished["image"], per_sample["image"])
        assert torch.equal(finished["tabular"], per_sample["tabular"])
        # and the model gives the same logits either way
        module.eval()
        with torch.no_grad():
            assert torch.equal(module(dataset.batch(indices)), module(per_sample))


def test_training_batches_are_augmented_on_the_device_and_only_in_training(datamodule, monkeypatch):
    module = _module(datamodule, **{"data.augment.p": 1.0})
    dataset = datamodule.datasets["train"]
    raw = dataset.batch(range(8))
    plain = module.finish_batch(raw)["image"]
    augmented = module.finish_batch(raw, augment=True)["image"]
    assert augmented.shape == plain.shape and augmented.dtype == torch.float32
    assert float(augmented.min()) >= 0.0 and float(augmented.max()) <= 1.0
    assert not torch.equal(augmented, plain)
    # a batch that is already float (per-sample pipeline, prediction) is never augmented again
    already = {"image": plain.clone(), "tabular": raw["tabular"]}
    assert torch.equal(module.finish_batch(already, augment=True)["image"], plain)
    # augmentation is off: training batches are converted only
    off = _module(datamodule, **{"data.augment.enabled": False})
    assert off.batch_augmentations["image"] is None and torch.equal(off.finish_batch(raw, augment=True)["image"], plain)

    calls = []
    original = BatchAugment.__call__
    monkeypatch.setattr(BatchAugment, "__call__", lambda self, images: calls.append(1) or original(self, images))
    module.eval()
    with torch.no_grad():
        module(raw)
        module.predict_step(raw, 0)
    assert calls == []  # forward (validation, test, predict) never augments


def test_channels_last_applies_to_the_model_and_its_image_batches(datamodule):
    module = _module(datamodule, **{"trainer.channels_last": True})
    module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    module.setup("fit")
    convs = [m.weight for m in module.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    image = module.finish_batch(datamodule.datasets["val"].batch([0, 1]))["image"]
    assert image.is_contiguous(memory_format=torch.channels_last)
    # auto: on for CUDA only
    auto = _module(datamodule)
    auto.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    auto.setup("fit")
    assert not auto.channels_last


def test_compile_compiles_the_model_in_place_once(datamodule, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    module = _module(datamodule, **{"trainer.compile": True})
    module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    keys = set(module.state_dict())
    module.setup("fit")
    module.setup("test")
    assert compiled == ["MultimodalClassifier"] and set(module.state_dict()) == keys


# --------------------------------------------------------------------------------------------------
# The augmentation itself
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("angle", "shift"), [(10.0, (0.0, 0.0)), (-13.0, (0.03, -0.02)), (0.0, (0.05, 0.05))])
def test_the_warp_is_opencvs_rotation_about_the_centre_and_shift(angle, shift):
    rng = np.random.default_rng(0)
    height, width = 40, 56  # not square: the aspect ratio must not skew the rotation
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3)).astype(np.uint8), (7, 7), 2).astype(np.float32)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
    matrix[:, 2] += (shift[0] * width, shift[1] * height)
    expected = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None]
    warped = affine_warp(batch, torch.tensor([angle]), torch.tensor([shift]))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(warped[3:-3, 3:-3], expected[3:-3, 3:-3], atol=0.01)


def test_no_flip_and_identity_settings_leave_nine_channel_images_untouched():
    images = torch.zeros(16, 9, 32, 32)
    images[:, :, :, :16] = 200 / 255  # left half bright: a flip would move it
    augment = BatchAugment(AugmentConfig(p=1.0, rotate_limit=0.0, shift_limit=0.0, brightness=(1.0, 1.0)))
    assert torch.equal(augment(images.clone()), images)
    moved = BatchAugment(AugmentConfig(p=1.0))(images.clone())
    assert moved.shape == images.shape
    # whatever the draw, the bright half stays on the left (rotation ≤ 15°, shift ≤ 3 %)
    assert bool((moved[:, :, 8:24, :12].mean(dim=(1, 2, 3)) > moved[:, :, 8:24, 20:].mean(dim=(1, 2, 3))).all())


def _factor_and_moved(outputs: np.ndarray, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: its brightness factor (mean over a flat interior) and whether it was warped."""
    ratio = outputs[:, 12:20, 12:20].mean(axis=(1, 2, 3)) / inputs[:, 12:20, 12:20].mean(axis=(1, 2, 3))
    edge_changed = np.abs(outputs[:, :, :2] / np.maximum(ratio, 1e-6)[:, None, None, None] - inputs[:, :, :2]).max(
        axis=(1, 2, 3)
    )
    return ratio, edge_changed > 0.05


def test_the_batch_augmentation_draws_like_the_per_sample_one():
    """Same policy, p = 0.5 each: a quarter of the images untouched, brightness factors in [0.8, 1.2],
    the warp on about half; compared between albumentations (per sample) and the batch version."""
    count = 400
    options = AugmentConfig()
    flat = np.full((count, 32, 32, 3), 0.5, dtype=np.float32)  # flat grey: brightness reads off the interior
    flat[:, :, :3] = 0.2  # a darker left border: the warp moves it
    torch.manual_seed(0)
    batch = BatchAugment(options)(torch.from_numpy(flat).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    per_sample = build_augmentation(options)
    per_sample.set_random_seed(0)  # albumentations' own generator: no global seed reaches it
    uint8 = (flat * 255).round().astype(np.uint8)
    one_by_one = np.stack([per_sample(image=image)["image"] for image in uint8]).astype(np.float32) / 255
    drawn = {name: _factor_and_moved(out, flat) for name, out in (("batch", batch), ("per_sample", one_by_one))}
    for name, (factor, warped) in drawn.items():
        brightened = np.abs(factor - 1) > 0.005
        assert factor.min() >= 0.79 and factor.max() <= 1.21, name
        assert 0.38 < brightened.mean() < 0.62 and 0.38 < warped.mean() < 0.62, name
        assert 0.17 < (~brightened & ~warped).mean() < 0.33, name
    # ~200 brightened images each, factors uniform on [0.8, 1.2] (sd 0.115): a mean's standard error is
    # 0.008 and a difference of two means 0.012, so 0.045 is ~4 standard errors of the difference
    factors = {name: f[np.abs(f - 1) > 0.005] for name, (f, _) in drawn.items()}
    assert abs(factors["batch"].mean() - factors["per_sample"].mean()) < 0.045
    assert abs(factors["batch"].std() - factors["per_sample"].std()) < 0.03


@pytest.mark.parametrize("workers", [0, 2])
def test_the_per_sample_augmentation_follows_the_run_seed(small_cohort_master, workers):
    """albumentations draws from its own generator; the training loader seeds it from the run's seed (in the
    loader's workers, from each worker's seed), so one seed gives the same augmented batches twice."""
    settings = {"data.pipeline": "per_sample", "data.num_workers": workers, "data.augment.p": 1.0}
    config = load_config(None, small_overrides(small_cohort_master, **settings))
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")

    def first_batch(seed: int) -> dict:
        torch.manual_seed(seed)  # what seed_everything does for the run
        return next(iter(datamodule.train_dataloader()))

    first, again, other = first_batch(3), first_batch(3), first_batch(4)
    assert torch.equal(first["index"], again["index"]) and torch.equal(first["image"], again["image"])
    image = KINDS.get("image")
    plain = torch.stack([image.to_tensor(datamodule.datasets["train"].arrays["image"][i]) for i in first["index"]])
    assert not torch.equal(first["image"], plain)  # it did augment
    assert not torch.equal(first["image"], other["image"])


def test_loader_workers_augment_differently_from_each_other():
    """Forked workers copy one generator: without their own seeds, every worker's n-th image gets the same
    draw (the classic identical-augmentation bug)."""
    from lightning_fusion.data.dataset import MultimodalDataset, seed_worker_augmentation

    images = np.tile(np.linspace(0, 255, 32 * 32, dtype=np.uint8).reshape(1, 32, 32, 1), (4, 1, 1, 1))
    dataset = MultimodalDataset(
        [f"p{i}" for i in range(4)],
        np.zeros(4),
        {"image": images},
        {"image": "image"},
        build_augmentation(AugmentConfig(p=1.0)),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=1,
        num_workers=2,
        worker_init_fn=seed_worker_augmentation,
        generator=torch.Generator().manual_seed(0),
    )
    first_of_each_worker = [batch["image"] for batch in loader][:2]  # batches alternate between the workers
    assert not torch.equal(*first_of_each_worker)


# --------------------------------------------------------------------------------------------------
# Loader settings
# --------------------------------------------------------------------------------------------------
def test_auto_loader_settings_follow_the_device(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    auto = DataConfig()
    cpu = resolve_loader_settings(auto, "cpu")
    assert (cpu.pipeline, cpu.num_workers, cpu.pin_memory) == ("per_sample", 0, False)
    gpu = resolve_loader_settings(auto, "cuda")
    assert (gpu.pipeline, gpu.num_workers, gpu.pin_memory) == ("device", 8, True)  # 16 cores: capped at 8
    assert resolve_loader_settings(auto, "cuda", local_processes=4).num_workers == 3  # 16 // 4 - 1
    assert resolve_loader_settings(auto, "cuda", local_processes=16).num_workers == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert resolve_loader_settings(auto, "cuda").num_workers == 1
    mps = resolve_loader_settings(auto, "mps")
    assert mps.pipeline == "device" and not mps.pin_memory  # page-locked memory is a CUDA thing
    fixed = DataConfig(num_workers=3, pipeline="per_sample", pin_memory=False)
    assert resolve_loader_settings(fixed, "cuda") == type(gpu)("per_sample", 3, False)
    assert resolve_loader_settings(DataConfig(pipeline="device"), "cpu").pipeline == "device"


def test_the_loader_uses_the_trainers_device(small_cohort_master, monkeypatch):
    config = load_config(None, small_overrides(small_cohort_master))
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")
    assert not isinstance(datamodule.train_dataloader().dataset, BatchedSamples)  # no trainer: the CPU
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    strategy = SimpleNamespace(root_device=torch.device("cuda", 0))
    datamodule.trainer = SimpleNamespace(world_size=2, num_devices=2, strategy=strategy)
    loader = datamodule.train_dataloader()
    assert isinstance(loader.dataset, BatchedSamples) and loader.num_workers == 1 and loader.persistent_workers


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.num_workers": "many"}, "num_workers must be auto or a whole number"),
        ({"data.num_workers": -1}, "num_workers must be auto or a whole number"),
        ({"data.pipeline": "devise"}, "did you mean 'device'"),
        ({"trainer.deterministic": True, "trainer.cudnn_benchmark": True}, "deterministic"),
    ],
)
def test_bad_fast_path_options_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
