"""``xresnet1d``: the 1-D XResNet of the PTB-XL benchmark (Strodthoff et al. 2021), depth 18 to 101.

Strodthoff, Wagner, Schaeffter, Samek, "Deep Learning for ECG Analysis: Benchmarks and Insights from
PTB-XL", IEEE JBHI 25(5), 2021 (code: github.com/helme/ecg_ptbxl_benchmarking): ``xresnet1d101`` was
among the strongest models on every PTB-XL task (superdiagnostic macro AUROC 0.928 at 100 Hz). The
architecture is the "bag of tricks" ResNet (He et al., CVPR 2019; fastai's ``xresnet``) with 1-D
convolutions:

* stem: three conv-BN-ReLU layers (the first with stride 2), then max-pool ÷2;
* four stages of residual blocks (depth 18/34: two-conv basic blocks; 50/101: 1×1 → k → 1×1
  bottlenecks with 4× expansion) whose first block halves the time axis (but the first stage's);
* ResNet-D shortcuts: average-pool before the 1×1 projection, so no sample is skipped;
* the last BatchNorm of each block initialised to zero, so every block starts as the identity;
* concat pooling: global average and max over time, as the benchmark's head.

Kernel size 5 and stem widths 32-32-64 are the benchmark's; ``base_width`` scales the stage widths
(64-128-256-512 at 64) for smaller data or a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_fusion.encoders.registry import ENCODERS

# depth → (blocks per stage, expansion): the ResNet family's layouts
DEPTHS = {18: ([2, 2, 2, 2], 1), 34: ([3, 4, 6, 3], 1), 50: ([3, 4, 6, 3], 4), 101: ([3, 4, 23, 3], 4)}


@dataclass
class XResNet1DConfig:
    """Depth (18, 34, 50, 101), stage width, kernel size, stem widths, dropout on the pooled features."""

    depth: int = 50  # 18 | 34 (basic blocks) | 50 | 101 (bottlenecks, 4x expansion)
    base_width: int = 64  # the first stage's width; each later stage doubles it
    kernel_size: int = 5  # of every non-1x1 convolution (the benchmark's)
    stem_widths: list[int] = field(default_factory=lambda: [32, 32, 64])  # the three stem convolutions
    dropout: float = 0.0  # on the pooled features

    def __post_init__(self) -> None:
        if self.depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {self.depth}")
        if self.base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {self.base_width}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1 (same padding), got {self.kernel_size}")
        if len(self.stem_widths) < 1 or any(w < 1 for w in self.stem_widths):
            raise ValueError(f"stem_widths must be a non-empty list of positive sizes, got {self.stem_widths}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _conv_bn(width_in: int, width_out: int, kernel_size: int, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv1d(width_in, width_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm1d(width_out),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class XResBlock1D(nn.Module):
    """Basic (k, k) or bottleneck (1, k, 1) residual block; zero-initialised last BN; ResNet-D shortcut."""

    def __init__(self, width_in: int, width: int, expansion: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        width_out = width * expansion
        if expansion == 1:
            convs = [_conv_bn(width_in, width, kernel_size, stride), _conv_bn(width, width_out, kernel_size, act=False)]
        else:
            convs = [
                _conv_bn(width_in, width, 1),
                _conv_bn(width, width, kernel_size, stride),
                _conv_bn(width, width_out, 1, act=False),
            ]
        nn.init.zeros_(convs[-1][1].weight)  # the block starts as the identity (He et al. 2019)
        self.body = nn.Sequential(*convs)
        shortcut: list[nn.Module] = []
        if stride != 1:
            shortcut.append(nn.AvgPool1d(stride, stride, ceil_mode=True))
        if width_in != width_out:
            shortcut.append(_conv_bn(width_in, width_out, 1, act=False))
        self.shortcut = nn.Sequential(*shortcut)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


@ENCODERS.register("xresnet1d", input_kind="signal", config=XResNet1DConfig)
class XResNet1DEncoder(nn.Module):
    """``(B, leads, samples)`` → ``(B, 2 × 8 × base_width × expansion)`` (average and max pooled features)."""

    def __init__(self, input_shape: tuple[int, ...], options: XResNet1DConfig) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"the xresnet1d encoder takes signals (leads, samples), got input shape {input_shape}")
        leads, samples = input_shape
        if samples < 32:  # stem ÷2, pool ÷2, three stages ÷2 each
            raise ValueError(f"xresnet1d halves the time axis 5 times and needs >= 32 samples, got {samples}")
        blocks_per_stage, expansion = DEPTHS[options.depth]
        widths = [leads, *options.stem_widths]
        stem = [
            _conv_bn(w_in, w_out, options.kernel_size, 2 if i == 0 else 1)
            for i, (w_in, w_out) in enumerate(zip(widths, widths[1:]))
        ]
        self.stem = nn.Sequential(*stem, nn.MaxPool1d(3, stride=2, padding=1))
        width_in = options.stem_widths[-1]
        blocks: list[nn.Module] = []
        for stage, count in enumerate(blocks_per_stage):
            width = options.base_width * 2**stage
            for block in range(count):
                stride = 2 if block == 0 and stage > 0 else 1
                blocks.append(XResBlock1D(width_in, width, expansion, options.kernel_size, stride))
                width_in = width * expansion
        self.stages = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(options.dropout)
        self.out_features = 2 * width_in

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(signals))
        return self.dropout(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))
