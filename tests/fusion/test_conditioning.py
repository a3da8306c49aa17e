"""Conditioning fusions (film, daft): the hook acts on the chosen timm stage of any CNN family, only during the
fusion's encode; exact scale and shift; freezing; clear errors."""

import pytest
import torch

from lightning_fusion.config import load_config
from lightning_fusion.models import ModalitySpec, build_model

CONDITIONING = ["film", "daft", "channel_attention"]
FAMILIES = ["test_resnet", "test_efficientnet", "mobilenetv3_small_050", "test_convnext"]
SPECS = {"image": ModalitySpec("image", (3, 32, 32)), "tabular": ModalitySpec("vector", (6,))}


def _model(fusion, backbone="test_resnet", modalities=("image", "tabular"), specs=SPECS, **overrides):
    data = {
        "model.modalities": list(modalities),
        "model.fusion": fusion if isinstance(fusion, dict) else {"name": fusion},
        "model.encoders.image": {"name": "timm", "backbone": backbone, "reduce_channels": None},
    } | overrides
    return build_model(load_config(None, data).model, specs, num_classes=3)


def _batch(seed=0, batch_size=4):
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.rand(batch_size, *s.shape, generator=generator) for m, s in SPECS.items()}


@pytest.mark.parametrize("stage", [0, -1])
@pytest.mark.parametrize("backbone", FAMILIES)
@pytest.mark.parametrize("fusion", CONDITIONING)
def test_the_table_conditions_the_image_features_at_the_stage_and_only_inside_the_fusion(fusion, backbone, stage):
    torch.manual_seed(0)
    model = _model({"name": fusion, "stage": stage}, backbone).eval()
    batch = _batch()
    other_table = dict(batch, tabular=batch["tabular"] + 1.0)
    with torch.no_grad():
        features = model.fusion.encode(model.encoders, batch)
        changed = model.fusion.encode(model.encoders, other_table)
        alone = model.encoders["image"](batch["image"])
    assert not torch.allclose(features["image"], changed["image"], atol=1e-5), "the table does not reach the image"
    assert not torch.allclose(features["image"], alone, atol=1e-5), "no conditioning happened"
    assert not model.encoders["image"].feature_stage(stage).module._forward_hooks  # the hook is gone again
    model.train()
    logits = model(batch)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    for name in ("fusion.generator", "encoders.tabular"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_film_scales_and_shifts_the_stage_output_exactly():
    model = _model({"name": "film", "stage": 2}).eval()
    fusion, encoder = model.fusion, model.encoders["image"]
    channels = encoder.feature_stage(2).channels
    assert fusion.stage_name == "layer2" and fusion.channels == channels == 48
    with torch.no_grad():  # Δγ = 1 (γ = 2) and β = 0.5 on every channel, whatever the table
        fusion.generator.weight.zero_()
        fusion.generator.bias.copy_(torch.cat([torch.ones(channels), torch.full((channels,), 0.5)]))
    batch = _batch()
    handle = encoder.feature_stage(2).module.register_forward_hook(lambda _m, _i, out: 2 * out + 0.5)
    with torch.no_grad():
        expected = encoder(batch["image"])
        handle.remove()
        conditioned = fusion.encode(model.encoders, batch)["image"]
    torch.testing.assert_close(conditioned, expected)
    torch.testing.assert_close(model(batch), fusion.head(expected))  # the head sees the conditioned image features


def test_channel_attention_weights_each_channel_in_zero_two_without_a_shift():
    model = _model({"name": "channel_attention", "stage": 1}).eval()
    fusion, encoder = model.fusion, model.encoders["image"]
    with torch.no_grad():
        fusion.generator.weight.zero_()
        fusion.generator.bias.copy_(torch.linspace(-20, 20, fusion.channels))  # weights from ~0 to ~2
        scale = 2 * torch.sigmoid(fusion.generator.bias)
        batch = _batch()
        handle = encoder.feature_stage(1).module.register_forward_hook(
            lambda _m, _i, out: out * scale[None, :, None, None]
        )
        expected = encoder(batch["image"])
        handle.remove()
        torch.testing.assert_close(fusion.encode(model.encoders, batch)["image"], expected)


def test_daft_feeds_the_pooled_feature_map_into_its_bottleneck():
    model = _model({"name": "daft", "stage": -1, "bottleneck_factor": 4})
    channels, context = model.fusion.channels, model.fusion.context_width
    first = model.fusion.generator[0]
    assert first.in_features == channels + context and first.out_features == (channels + context) // 4


@pytest.mark.parametrize("fusion", CONDITIONING)
def test_a_frozen_backbone_stays_frozen_and_the_conditioning_still_trains(fusion):
    model = _model({"name": fusion, "stage": 1}, **{"model.encoders.image.unfreeze_from": 3}).train()
    model(_batch()).logsumexp(dim=1).sum().backward()
    backbone = model.encoders["image"].backbone
    frozen = [p for n, p in backbone.named_parameters() if n.startswith(("conv1", "bn1", "layer1", "layer2"))]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.generator.parameters())


def test_conditioning_errors_name_the_fix():
    with pytest.raises(
        ValueError,
        match=r"stage 7 is out of range for 'test_resnet', which has 5 feature stages "
        r"\(0: act1 \(32 channels\), 1: layer1",
    ):
        _model({"name": "film", "stage": 7})
    specs = {"signal": ModalitySpec("signal", (2, 50)), "tabular": ModalitySpec("vector", (6,))}
    with pytest.raises(ValueError, match=r"film fusion conditions one image modality .* have none"):
        _model("film", modalities=("signal", "tabular"), specs=specs, **{"model.encoders.signal": {"name": "resnet1d"}})
    two = SPECS | {"cxr": ModalitySpec("image", (3, 32, 32))}
    cxr = {"model.encoders.cxr": {"name": "timm", "backbone": "test_resnet", "reduce_channels": None}}
    with pytest.raises(ValueError, match=r"have several \(\['cxr', 'image'\]\); choose one with model.fusion.modality"):
        _model("daft", modalities=("image", "cxr", "tabular"), specs=two, **cxr)
    model = _model({"name": "daft", "modality": "cxr"}, modalities=("image", "cxr", "tabular"), specs=two, **cxr)
    assert model.fusion.conditioned == "cxr" and model.fusion.sources == ["image", "tabular"]
    batch = _batch() | {"present": {"tabular": torch.tensor([True, False, True, True])}}
    with pytest.raises(ValueError, match=r"film fusion cannot handle a missing modality \(\['tabular'\]"):
        _model("film")(batch)
