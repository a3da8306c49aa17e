"""Every encoder × fusion × modality subset: shapes, finite values, gradients to every trainable part."""

import time
from itertools import combinations

import pytest
import timm
import torch
from safetensors.torch import save_file

from lightning_fusion.config import load_config
from lightning_fusion.encoders import ENCODERS
from lightning_fusion.encoders.image import TimmImageEncoder, TimmImageEncoderConfig
from lightning_fusion.errors import PretrainedWeightsError
from lightning_fusion.fusion import FUSIONS
from lightning_fusion.models import ModalitySpec, build_model

SPECS = {
    "image": ModalitySpec("image", (9, 32, 32)),
    "signal": ModalitySpec("signal", (12, 100)),
    "tabular": ModalitySpec("vector", (12,)),
}
SUBSETS = [list(c) for r in (1, 2, 3) for c in combinations(sorted(SPECS), r)]


def _batch(batch_size: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {m: torch.rand(batch_size, *s.shape, generator=generator) for m, s in SPECS.items()}


def _model_config(modalities, fusion, **encoder_overrides):
    overrides = {
        "model.modalities": modalities,
        "model.fusion": {"name": fusion},
        "model.encoders.image.backbone": "test_resnet",
        "model.encoders.signal": {"name": "resnet1d", "widths": [8, 16]},
    }
    overrides.update(encoder_overrides)
    return load_config(None, overrides).model


@pytest.mark.parametrize(
    ("fusion", "modalities"),
    [
        pytest.param(fusion, modalities, id=f"{fusion}-{'+'.join(modalities)}")
        for fusion in FUSIONS.names()
        for modalities in SUBSETS
        if len(modalities) >= FUSIONS.metadata(fusion)["min_modalities"]
        and (not FUSIONS.metadata(fusion).get("conditions") or "image" in modalities)
    ],
)
def test_fusion_forward_backward(fusion, modalities):
    model = build_model(_model_config(modalities, fusion), SPECS, num_classes=3)
    model.train()
    logits = model(_batch())
    assert logits.shape == (4, 3)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("encoders.") for n in trainable)
    no_grad = [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"no gradient reaches {no_grad[:5]}"
    assert set(model.encoders) == set(modalities)


@pytest.mark.parametrize("name", ENCODERS.names())
def test_every_encoder_maps_its_kind_to_features(name):
    kind = ENCODERS.metadata(name)["input_kind"]
    modality, spec = next((m, s) for m, s in SPECS.items() if s.kind == kind)
    options = ENCODERS.metadata(name)["config"]()
    if name == "timm":
        options.backbone = "test_resnet"
    encoder = ENCODERS.create(name, spec.shape, options)
    features = encoder(_batch()[modality])
    assert features.shape == (4, encoder.out_features)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("name", ENCODERS.names(input_kind="signal"))
@pytest.mark.parametrize("shape", [(1, 500), (12, 1000)], ids=["1-lead", "12-lead"])
def test_signal_encoders_take_any_lead_count(name, shape):
    encoder = ENCODERS.create(name, shape, ENCODERS.metadata(name)["config"]())
    features = encoder(torch.randn(3, *shape))
    assert features.shape == (3, encoder.out_features)


def test_resnet1d_rejects_a_signal_too_short_for_its_stages():
    from lightning_fusion.encoders.signal import ResNet1DConfig, ResNet1DEncoder

    with pytest.raises(ValueError, match="needs >= 16 samples, got 10"):
        ResNet1DEncoder((1, 10), ResNet1DConfig(widths=[8, 16, 32]))


def test_encoder_kind_mismatch_names_the_modality():
    config = _model_config(
        ["tabular"], "concat", **{"model.encoders.tabular": {"name": "timm", "backbone": "test_resnet"}}
    )
    with pytest.raises(ValueError, match=r"model\.encoders\.tabular: encoder 'timm' takes image inputs.*\['mlp'\]"):
        build_model(config, SPECS, num_classes=3)


@pytest.mark.parametrize("reduce_channels", [3, None])
def test_channel_reduction_in_front_of_timm(reduce_channels):
    encoder = TimmImageEncoder(
        (9, 32, 32), TimmImageEncoderConfig(backbone="test_resnet", reduce_channels=reduce_channels)
    )
    if reduce_channels:
        assert encoder.reduce.in_channels == 9 and encoder.reduce.out_channels == 3
    else:
        assert isinstance(encoder.reduce, torch.nn.Identity)
    first_conv = next(m for m in encoder.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == (reduce_channels or 9)
    assert encoder(torch.rand(2, 9, 32, 32)).shape == (2, encoder.out_features)


def test_pretrained_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match="not in the local Hugging Face cache.*weights_path"):
        TimmImageEncoder((3, 32, 32), TimmImageEncoderConfig(backbone="resnet18", pretrained=True))
    assert time.perf_counter() - start < 10  # no minute of retries


def test_local_weights_file_is_loaded(tmp_path):
    source = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    encoder = TimmImageEncoder(
        (3, 32, 32), TimmImageEncoderConfig(backbone="test_resnet", weights_path=str(path), reduce_channels=None)
    )
    for name, value in source.state_dict().items():
        assert torch.equal(encoder.backbone.state_dict()[name], value), name


def test_bad_local_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not weights")
    with pytest.raises(
        PretrainedWeightsError, match="could not load weights for 'test_resnet' from .*junk.safetensors"
    ):
        TimmImageEncoder((3, 32, 32), TimmImageEncoderConfig(backbone="test_resnet", weights_path=str(path)))


def test_spatial_attention_block_reweights_the_feature_map_and_trains():
    options = TimmImageEncoderConfig(backbone="test_resnet", reduce_channels=3, spatial_attention=True)
    encoder = TimmImageEncoder((9, 32, 32), options)
    plain = TimmImageEncoder((9, 32, 32), TimmImageEncoderConfig(backbone="test_resnet", reduce_channels=3))
    assert encoder.out_features == plain.out_features
    features = encoder(torch.rand(4, 9, 32, 32))
    assert features.shape == (4, encoder.out_features) and torch.isfinite(features).all()
    features.sum().backward()
    grad = encoder.attention.conv.conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with torch.no_grad():  # a zero attention map zeroes the pooled features: the block really sits on the path
        encoder.attention.gate = torch.nn.Identity()
        encoder.attention.conv = torch.nn.Conv2d(2, 1, 1).requires_grad_(False)
        encoder.attention.conv.weight.zero_()
        encoder.attention.conv.bias.zero_()
        assert encoder.eval()(torch.rand(2, 9, 32, 32)).abs().max() == 0


def test_spatial_attention_on_a_transformer_is_a_clear_error():
    encoder = TimmImageEncoder((3, 32, 32), TimmImageEncoderConfig(backbone="test_vit", spatial_attention=True))
    with pytest.raises(ValueError, match="spatial_attention needs a CNN feature map"):
        encoder(torch.rand(1, 3, 32, 32))
