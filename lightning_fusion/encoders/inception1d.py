"""``inception1d``: the 1-D Inception network of the PTB-XL benchmark (Strodthoff et al. 2021).

Strodthoff, Wagner, Schaeffter, Samek, "Deep Learning for ECG Analysis: Benchmarks and Insights from
PTB-XL", IEEE JBHI 25(5), 2021 (code: github.com/helme/ecg_ptbxl_benchmarking): ``inception1d`` was,
with ``xresnet1d101``, the best model on most PTB-XL tasks. It follows InceptionTime (Ismail Fawaz
et al., "InceptionTime: Finding AlexNet for time series classification", DMKD 34, 2020):

* ``depth`` inception modules; each squeezes its input through a 1×1 *bottleneck*, runs three
  convolutions of decreasing kernel size on it (39, 19, 9 by default) in parallel with a max-pool →
  1×1 branch on the input, concatenates the four (``4 × filters`` channels), BatchNorm, ReLU;
* a residual 1×1 projection + BN shortcut around every three modules;
* no down-sampling (the receptive field comes from the long kernels); concat pooling (global
  average and max over time) at the end, as the benchmark's head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_fusion.encoders.registry import ENCODERS


@dataclass
class Inception1DConfig:
    """Modules, filters per branch, kernel sizes, bottleneck width, residual shortcuts, dropout."""

    depth: int = 6  # inception modules (the benchmark's)
    filters: int = 32  # channels of each of the four branches; a module outputs 4x this
    kernel_sizes: list[int] = field(default_factory=lambda: [39, 19, 9])  # the parallel convolutions
    bottleneck: int = 32  # 1x1 squeeze before the convolutions
    residual: bool = True  # a projected shortcut around every three modules
    dropout: float = 0.0  # on the pooled features

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.filters < 1 or self.bottleneck < 1:
            raise ValueError(f"filters and bottleneck must be >= 1, got {self.filters}, {self.bottleneck}")
        if not self.kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd sizes >= 1 (same padding), got {self.kernel_sizes}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class InceptionModule1D(nn.Module):
    """Bottleneck → parallel convolutions, plus max-pool → 1×1; concatenated, BN, ReLU."""

    def __init__(self, width_in: int, options: Inception1DConfig) -> None:
        super().__init__()
        squeezed = options.bottleneck if width_in > 1 else width_in
        self.bottleneck = nn.Conv1d(width_in, squeezed, 1, bias=False) if width_in > 1 else nn.Identity()
        self.convs = nn.ModuleList(
            nn.Conv1d(squeezed, options.filters, k, padding=k // 2, bias=False) for k in options.kernel_sizes
        )
        self.pool_branch = nn.Sequential(
            nn.MaxPool1d(3, stride=1, padding=1), nn.Conv1d(width_in, options.filters, 1, bias=False)
        )
        self.out_features = options.filters * (len(options.kernel_sizes) + 1)
        self.norm = nn.Sequential(nn.BatchNorm1d(self.out_features), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = self.bottleneck(x)
        return self.norm(torch.cat([conv(squeezed) for conv in self.convs] + [self.pool_branch(x)], dim=1))


@ENCODERS.register("inception1d", input_kind="signal", config=Inception1DConfig)
class Inception1DEncoder(nn.Module):
    """``(B, leads, samples)`` → ``(B, 2 × 4 × filters)`` (average and max pooled features)."""

    def __init__(self, input_shape: tuple[int, ...], options: Inception1DConfig) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"the inception1d encoder takes signals (leads, samples), got input shape {input_shape}")
        width = input_shape[0]
        self.blocks = nn.ModuleList()
        self.shortcuts = nn.ModuleDict()
        residual_from = width
        for index in range(options.depth):
            module = InceptionModule1D(width, options)
            self.blocks.append(module)
            width = module.out_features
            if options.residual and index % 3 == 2:
                self.shortcuts[str(index)] = nn.Sequential(
                    nn.Conv1d(residual_from, width, 1, bias=False), nn.BatchNorm1d(width)
                )
                residual_from = width
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(options.dropout)
        self.out_features = 2 * width

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        x = shortcut_input = signals
        for index, module in enumerate(self.blocks):
            x = module(x)
            if str(index) in self.shortcuts:
                x = self.act(x + self.shortcuts[str(index)](shortcut_input))
                shortcut_input = x
        return self.dropout(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))
