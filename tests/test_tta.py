"""Test-time augmentation (``evaluation.tta``): the mean of the input's and N augmented copies' probabilities,
in the test step and predict alike, for every modality kind that has a training augmentation."""

import numpy as np
import pytest
import torch

from lightning_fusion.config import load_config
from lightning_fusion.errors import ConfigError
from lightning_fusion.lit import TTA_SEED, FusionLitModule

# modality → (kind, sample shape, encoder, the setting that turns its training augmentation on)
KIND_CASES = {
    "image": ("image", [1, 16, 16], {"name": "timm", "backbone": "resnet18", "pretrained": False}, {}),
    "signal": ("signal", [3, 64], {"name": "resnet1d", "widths": [8, 16]}, {"data.signal.augment": "safe"}),
    "tabular": ("vector", [5], {"name": "mlp", "widths": [8]}, {"data.tabular.noise": 0.5}),
}


def _module(modality: str, tta: int, augment: bool = True) -> FusionLitModule:
    kind, shape, encoder, augmentation = KIND_CASES[modality]
    settings = {
        "model.modalities": [modality],
        f"model.encoders.{modality}": encoder,
        "evaluation.tta": tta,
        "data.augment.enabled": augment and modality == "image",
        **(augmentation if augment else {}),
    }
    torch.manual_seed(0)
    module = FusionLitModule(load_config(None, settings), {modality: {"kind": kind, "shape": shape}}, ["a", "b"])
    return module.eval()


def _batch(modality: str, count: int = 6) -> dict:
    kind, shape, _, _ = KIND_CASES[modality]
    generator = torch.Generator().manual_seed(1)
    if kind == "image":  # the device pipeline's uint8 batches, (B, C, H, W)
        values = torch.randint(0, 256, (count, *shape), generator=generator, dtype=torch.uint8)
    else:
        values = torch.randn(count, *shape, generator=generator)
    return {modality: values, "label": torch.arange(count) % 2, "index": torch.arange(count)}


@pytest.mark.parametrize("modality", sorted(KIND_CASES))
def test_tta_averages_the_input_and_copies_augmented_by_the_training_policy(modality):
    module = _module(modality, tta=3)
    batch = _batch(modality)
    with torch.no_grad():
        plain = module(batch).softmax(dim=1)
        finished = module.finish_batch(batch)[modality]
        augmentation = module.batch_augmentations[modality]
        copies = []
        for k in range(3):  # copy k: the same draw for every input, from a generator seeded TTA_SEED + k
            rows = []
            for row in finished.split(1):
                torch.manual_seed(TTA_SEED + k)
                rows.append(augmentation(row))
            copies.append(module.model({modality: torch.cat(rows)}).softmax(dim=1))
        expected = (plain + sum(copies)) / 4
        before = torch.get_rng_state()
        probs = module.probabilities(batch)
        assert torch.equal(torch.get_rng_state(), before)  # the training generator is left as it was
        assert torch.allclose(probs, expected, atol=1e-6)
        assert not torch.allclose(probs, plain, atol=1e-4)  # the copies did change something
        assert torch.equal(module.predict_step(batch, 0)["probs"], probs)


@pytest.mark.parametrize("modality", sorted(KIND_CASES))
def test_an_inputs_tta_probabilities_do_not_depend_on_its_batch(modality):
    """The test step's batches and predict's differ in size; each input's copies must not."""
    module = _module(modality, tta=2)
    batch = _batch(modality, count=8)
    part = {k: v[2:5] for k, v in batch.items()}
    with torch.no_grad():
        whole, alone = module.probabilities(batch), module.probabilities(part)
        assert torch.allclose(whole[2:5], alone, atol=1e-5)
        assert torch.equal(module.probabilities(batch), whole)  # the same on every call


def test_tta_zero_is_the_networks_own_softmax():
    module = _module("signal", tta=0)
    batch = _batch("signal")
    with torch.no_grad():
        assert torch.equal(module.probabilities(batch), module(batch).float().softmax(dim=1))


def test_tta_without_any_augmentation_is_refused():
    with pytest.raises(ConfigError, match=r"evaluation.tta 2 .* none of \['signal'\] is augmented"):
        _module("signal", tta=2, augment=False)


def test_a_negative_tta_is_refused():
    with pytest.raises(ValueError, match="tta must be >= 0"):
        load_config(None, {"evaluation.tta": -1})


def test_the_test_step_reports_tta_probabilities(tmp_path):
    """A tested run's probabilities (its report, metrics and operating point) are predict's."""
    import lightning as L

    module = _module("tabular", tta=2)
    batch = _batch("tabular", count=10)
    loader = torch.utils.data.DataLoader([{k: v[i] for k, v in batch.items()} for i in range(10)], batch_size=4)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.test(module, dataloaders=loader, verbose=False)
    with torch.no_grad():
        expected = module.probabilities(batch).numpy()
    tested = module.test_predictions
    assert np.array_equal(tested["index"], np.arange(10))
    np.testing.assert_allclose(tested["probs"], expected, atol=1e-6)


@pytest.mark.parametrize("modality", ["image", "signal"])
def test_predict_gives_the_tta_probabilities_whatever_its_batch_size(modality):
    """predict, serving and the web page go through ``TrainedModel.predict_arrays``."""
    from lightning_fusion.predict.trained_model import TrainedModel

    module = _module(modality, tta=2)
    batch = _batch(modality, count=7)
    values = batch[modality].numpy()
    arrays = {modality: values.transpose(0, 2, 3, 1) if modality == "image" else values}  # images (N, H, W, C)
    with torch.no_grad():
        expected = module.probabilities(batch).numpy()
    predicted = TrainedModel(module, {}, "in memory", {}).predict_arrays(arrays, batch_size=3)
    np.testing.assert_allclose(predicted, expected, atol=1e-5)
