"""Train-only augmentation per modality kind: signals (policies), tables (feature noise), radiographs."""

import numpy as np
import pytest
import torch

from lightning_fusion.config import AugmentConfig, load_config
from lightning_fusion.data.batch_transforms import BatchAugment, random_resized_crop
from lightning_fusion.data.kinds import KINDS
from lightning_fusion.data.signal_augment import SignalAugment, baseline_wander, time_shift
from lightning_fusion.data.transforms import build_augmentation
from lightning_fusion.errors import ConfigError
from lightning_fusion.lit import FusionLitModule

SIGNAL_SHAPE = (12, 200)


def _signals(count=64):
    return torch.randn(count, *SIGNAL_SHAPE, generator=torch.Generator().manual_seed(0))


def _module(**overrides) -> FusionLitModule:
    settings = {
        "model.modalities": ["signal", "tabular"],
        "model.encoders.signal": {"name": "resnet1d", "widths": [8, 16]},
        **overrides,
    }
    specs = {"signal": {"kind": "signal", "shape": list(SIGNAL_SHAPE)}, "tabular": {"kind": "vector", "shape": [5]}}
    return FusionLitModule(load_config(None, settings), specs, ["a", "b"])


def test_time_shift_moves_each_recording_and_fills_with_zero():
    signals = torch.arange(10.0).view(1, 1, 10).repeat(2, 3, 1)
    shifted = time_shift(signals, torch.tensor([2, -3]))
    assert shifted[0, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert shifted[1, 2].tolist() == [3, 4, 5, 6, 7, 8, 9, 0, 0, 0]


def test_baseline_wander_stays_within_its_amplitude_and_is_slow():
    wander = baseline_wander(torch.Size((32, 12, 1000)), amplitude=0.05, cycles=2.0, device=torch.device("cpu"))
    assert wander.abs().max() <= 0.05 + 1e-6
    # at most 2 cycles per recording: a sign change at most every quarter of the recording or so
    sign_changes = (wander[..., 1:].sign() != wander[..., :-1].sign()).sum(dim=2)
    assert int(sign_changes.max()) <= 5


@pytest.mark.parametrize("policy", ["safe", "strong"])
def test_signal_policies_keep_shape_and_dtype(policy):
    signals = _signals()
    augmented = SignalAugment(policy)(signals)
    assert augmented.shape == signals.shape and augmented.dtype == torch.float32
    assert torch.isfinite(augmented).all()


def test_the_strong_signal_policy_changes_more_than_the_safe_one():
    torch.manual_seed(0)
    signals = _signals(256)
    change = {p: float((SignalAugment(p)(signals) - signals).abs().mean()) for p in ("safe", "strong")}
    assert 0 < change["safe"] < change["strong"]
    # safe applies each transform to about half of the recordings: some come out exactly as they went in
    torch.manual_seed(1)
    untouched = (SignalAugment("safe")(signals) == signals).flatten(1).all(dim=1).float().mean()
    assert 0.0 < float(untouched) < 0.2  # four transforms at p = 0.5: 1/16 of the recordings untouched


def test_signals_and_tables_are_augmented_in_training_steps_only(monkeypatch):
    module = _module(**{"data.signal.augment": "strong", "data.tabular.noise": 0.5})
    batch = {"signal": _signals(8), "tabular": torch.randn(8, 5), "label": torch.zeros(8, dtype=torch.long)}
    plain = module.finish_batch(batch)
    assert torch.equal(plain["signal"], batch["signal"]) and torch.equal(plain["tabular"], batch["tabular"])
    trained = module.finish_batch(batch, augment=True)
    assert not torch.equal(trained["signal"], batch["signal"]) and not torch.equal(trained["tabular"], batch["tabular"])
    calls = []
    original = SignalAugment.__call__
    monkeypatch.setattr(SignalAugment, "__call__", lambda self, x: calls.append(1) or original(self, x))
    module.eval()
    with torch.no_grad():
        module(batch)
        module.validation_step(batch, 0)
        module.predict_step(batch | {"index": torch.arange(8)}, 0)
    assert calls == []  # forward (validation, test, predict) never augments
    module.train()
    module.training_step(batch, 0)
    assert calls == [1]


def test_no_augmentation_by_default_for_signals_and_tables():
    module = _module()
    assert module.batch_augmentations == {"signal": None, "tabular": None}
    data = load_config(None, {}).data
    assert [KINDS.get(kind).augmentation_policy(data) for kind in ("signal", "vector")] == [None, None]


def test_feature_noise_has_the_configured_spread():
    torch.manual_seed(0)
    noise = KINDS.get("vector").batch_augmentation(load_config(None, {"data.tabular.noise": 0.3}).data)
    rows = torch.zeros(4000, 5)
    assert float(noise(rows).std()) == pytest.approx(0.3, rel=0.05)


def test_a_misspelt_signal_policy_suggests_the_right_one():
    message = r"data\.signal: unknown signal augmentation policy 'strng'; did you mean 'strong'"
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"data.signal.augment": "strng"})


# -------------------------------------------------------------------------------------------------
# images: the opt-in radiograph policy
# -------------------------------------------------------------------------------------------------
def _radiographs(count=16, size=28):
    """Soft vertical gradients with a bright spot: intensity spread and structure to crop."""
    rng = np.random.default_rng(0)
    base = np.linspace(40, 200, size)[None, :, None, None] * np.ones((count, size, size, 1))
    base[:, 10:14, 10:14] = 255
    return np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8)


def test_the_radiograph_policy_changes_images_within_range_in_both_pipelines():
    options = AugmentConfig(policy="radiograph", p=1.0)
    images = _radiographs()
    per_sample = build_augmentation(options, image_size=28)
    for image in images:
        out = per_sample(image=image)["image"]
        assert out.shape == image.shape and out.dtype == np.uint8
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    torch.manual_seed(0)
    augmented = BatchAugment(options)(batch)
    assert augmented.shape == batch.shape and float(augmented.min()) >= 0 and float(augmented.max()) <= 1
    safe = BatchAugment(AugmentConfig(p=1.0, rotate_limit=0, shift_limit=0, brightness=(1.0, 1.0)))(batch)
    assert torch.equal(safe, batch)  # the safe policy at identity strengths leaves images as they were
    assert float((augmented - batch).abs().mean()) > 0.02


def test_contrast_and_gamma_move_the_intensity_spread_and_mean():
    batch = torch.from_numpy(_radiographs()).permute(0, 3, 1, 2).float() / 255
    identity = {"p": 1.0, "rotate_limit": 0, "shift_limit": 0, "brightness": (1.0, 1.0), "crop_scale": (1.0, 1.0)}
    low_contrast = AugmentConfig(policy="radiograph", contrast=(0.5, 0.5), gamma=(1.0, 1.0), **identity)
    assert float(BatchAugment(low_contrast)(batch).std()) == pytest.approx(0.5 * float(batch.std()), rel=0.02)
    darker = AugmentConfig(policy="radiograph", contrast=(1.0, 1.0), gamma=(2.0, 2.0), **identity)
    assert torch.allclose(BatchAugment(darker)(batch), batch.pow(2.0))


def test_random_resized_crop_zooms_in_and_stays_inside():
    size = 32
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, -1).repeat(64, 1, size, 1)
    cropped = random_resized_crop(ramp, (0.5, 0.5))
    span = cropped[:, 0, 0, -1] - cropped[:, 0, 0, 0]
    assert torch.allclose(span, torch.full_like(span, 0.5**0.5), atol=0.05)  # a side of sqrt(0.5)
    assert float(cropped.min()) >= 0 and float(cropped.max()) <= 1  # never outside the image


def test_radiograph_policy_has_no_flip():
    options = AugmentConfig(policy="radiograph")
    names = [type(t).__name__ for t in build_augmentation(options, image_size=28).transforms]
    assert not any("Flip" in name or "Transpose" in name for name in names)
    assert names[0] == "RandomResizedCrop" and names[-2:] == ["ColorJitter", "RandomGamma"]
