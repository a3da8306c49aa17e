"""1-D signal encoders (e.g. multi-lead ECG): a ResNet-1D and the flattened-signal MLP.

* ``resnet1d`` — a 1-D residual network in the style of the PTB-XL benchmark models (Strodthoff et
  al. 2021, ``resnet1d_wang``/``xresnet1d``): a wide-kernel stem, stages of basic residual blocks that
  halve the time axis, then global average + max pooling. Leads are input channels.
* ``signal_mlp`` — the signal flattened to one vector through an MLP, as the ECG multimodal study did
  with its digitised single-lead signal. Cheap, but it sees time points, not shapes: a baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_fusion.encoders.registry import ENCODERS
from lightning_fusion.encoders.tabular import MLPEncoder, MLPEncoderConfig


@dataclass
class ResNet1DConfig:
    """Stage widths (each stage halves the time axis), blocks per stage, kernel size, dropout."""

    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    blocks_per_stage: int = 2
    kernel_size: int = 7
    stem_kernel_size: int = 15
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be a non-empty list of positive sizes, got {self.widths}")
        if self.blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {self.blocks_per_stage}")
        for name in ("kernel_size", "stem_kernel_size"):
            if getattr(self, name) < 1 or getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd and >= 1 (same padding), got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class BasicBlock1D(nn.Module):
    """conv-BN-ReLU-conv-BN plus a (projected) shortcut, then ReLU."""

    def __init__(self, width_in: int, width_out: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv1d(width_in, width_out, kernel_size, stride=stride, padding=pad, bias=False),
            nn.BatchNorm1d(width_out),
            nn.ReLU(inplace=True),
            nn.Conv1d(width_out, width_out, kernel_size, padding=pad, bias=False),
            nn.BatchNorm1d(width_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or width_in != width_out:
            self.shortcut = nn.Sequential(
                nn.Conv1d(width_in, width_out, 1, stride=stride, bias=False), nn.BatchNorm1d(width_out)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


@ENCODERS.register("resnet1d", input_kind="signal", config=ResNet1DConfig)
class ResNet1DEncoder(nn.Module):
    """``(B, leads, samples)`` → ``(B, 2 × widths[-1])`` (average and max pooled features)."""

    def __init__(self, input_shape: tuple[int, ...], options: ResNet1DConfig) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"the resnet1d encoder takes signals (leads, samples), got input shape {input_shape}")
        leads, samples = input_shape
        if samples < 2 ** (len(options.widths) + 1):
            raise ValueError(
                f"resnet1d with {len(options.widths)} stages needs >= {2 ** (len(options.widths) + 1)} samples, "
                f"got {samples}"
            )
        width = options.widths[0]
        self.stem = nn.Sequential(
            nn.Conv1d(
                leads, width, options.stem_kernel_size, stride=2, padding=options.stem_kernel_size // 2, bias=False
            ),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        for stage, stage_width in enumerate(options.widths):
            for block in range(options.blocks_per_stage):
                stride = 2 if block == 0 and stage > 0 else 1
                blocks.append(BasicBlock1D(width, stage_width, options.kernel_size, stride))
                width = stage_width
        self.stages = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(options.dropout)
        self.out_features = 2 * width

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(signals))
        return self.dropout(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))


@dataclass
class SignalMLPConfig(MLPEncoderConfig):
    """The MLP on the flattened signal (leads × samples inputs)."""

    widths: list[int] = field(default_factory=lambda: [128, 64])


@ENCODERS.register("signal_mlp", input_kind="signal", config=SignalMLPConfig)
class SignalMLPEncoder(MLPEncoder):
    """``(B, leads, samples)`` flattened → MLP → ``(B, widths[-1])``."""

    def __init__(self, input_shape: tuple[int, ...], options: SignalMLPConfig) -> None:
        if len(input_shape) != 2:
            raise ValueError(f"the signal_mlp encoder takes signals (leads, samples), got input shape {input_shape}")
        super().__init__((input_shape[0] * input_shape[1],), options)

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        return super().forward(signals.flatten(1))
