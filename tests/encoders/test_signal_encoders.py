"""The PTB-XL benchmark's 1-D encoders (xresnet1d, inception1d): shapes over their options, gradients, bad options."""

import pytest
import torch

from lightning_fusion.config import load_config
from lightning_fusion.encoders import ENCODERS
from lightning_fusion.encoders.inception1d import Inception1DConfig
from lightning_fusion.encoders.xresnet1d import XResNet1DConfig

SMALL = {  # options small enough for a CPU test, one case per architectural branch
    "xresnet1d-18": ("xresnet1d", {"depth": 18, "base_width": 8, "stem_widths": [8, 8, 8]}),
    "xresnet1d-50": ("xresnet1d", {"depth": 50, "base_width": 4, "stem_widths": [8, 8, 16]}),
    "xresnet1d-101": ("xresnet1d", {"depth": 101, "base_width": 2, "stem_widths": [4, 4, 4]}),
    "inception1d": ("inception1d", {"depth": 3, "filters": 4, "bottleneck": 4, "kernel_sizes": [9, 5]}),
    "inception1d-no-residual": ("inception1d", {"depth": 2, "filters": 4, "residual": False}),
    "inception1d-6": ("inception1d", {"depth": 6, "filters": 4, "bottleneck": 4}),
}


def _encoder(case: str, shape: tuple[int, int]):
    name, options = SMALL[case]
    return ENCODERS.create(name, shape, ENCODERS.metadata(name)["config"](**options))


@pytest.mark.parametrize("case", sorted(SMALL))
@pytest.mark.parametrize("shape", [(1, 250), (12, 1000)], ids=["1-lead", "12-lead"])
def test_features_have_the_declared_width(case, shape):
    encoder = _encoder(case, shape)
    features = encoder(torch.randn(3, *shape))
    assert features.shape == (3, encoder.out_features)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("case", sorted(SMALL))
def test_gradient_reaches_every_parameter(case):
    encoder = _encoder(case, (12, 200)).train()
    encoder(torch.randn(4, 12, 200)).square().sum().backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient reaches {missing[:5]}"
    # The zero-initialised last BatchNorm of each xresnet block learns from the first step (it alone
    # gets a gradient in its block until it leaves zero); inception's weights all get one at once.
    if SMALL[case][0] == "xresnet1d":
        learning = [block.body[-1][1].weight for block in encoder.stages]
    else:
        learning = [p for n, p in encoder.named_parameters() if n.endswith("weight")]
    assert all(p.grad.abs().sum() > 0 for p in learning)


def test_xresnet1d_depths_have_the_resnet_block_counts():
    from lightning_fusion.encoders.xresnet1d import XResBlock1D

    counts = {depth: sum(isinstance(m, XResBlock1D) for m in _xresnet(depth).modules()) for depth in (18, 34, 50, 101)}
    assert counts == {18: 8, 34: 16, 50: 16, 101: 33}
    assert _xresnet(50).out_features == 2 * 8 * 4 * 4  # 8 x base width, 4x expansion, avg + max


def _xresnet(depth):
    return ENCODERS.create("xresnet1d", (12, 100), XResNet1DConfig(depth=depth, base_width=4, stem_widths=[4, 4, 4]))


def test_xresnet1d_blocks_start_as_the_identity():
    encoder = _xresnet(18).eval()
    block = encoder.stages[0]  # same width in and out: the shortcut is the identity
    x = torch.relu(torch.randn(2, block.body[0][0].in_channels, 50))
    assert torch.equal(block(x), x)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (lambda: XResNet1DConfig(depth=42), r"depth must be one of \[18, 34, 50, 101\], got 42"),
        (lambda: XResNet1DConfig(kernel_size=4), "kernel_size must be odd"),
        (lambda: Inception1DConfig(kernel_sizes=[40]), "kernel_sizes must be odd"),
        (lambda: Inception1DConfig(depth=0), "depth must be >= 1"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        options()


def test_xresnet1d_rejects_a_signal_too_short():
    with pytest.raises(ValueError, match="needs >= 32 samples, got 20"):
        ENCODERS.create("xresnet1d", (12, 20), XResNet1DConfig())


def test_chosen_by_name_in_a_config():
    encoder = {"name": "xresnet1d", "depth": 101, "base_width": 16}
    config = load_config(None, {"model.modalities": ["signal"], "model.encoders.signal": encoder})
    options = config.model.encoders["signal"].options
    assert (options.depth, options.base_width, options.kernel_size) == (101, 16, 5)
