"""Tabular (clinical metrics) encoder: a multilayer perceptron — the "ANN" of the reference studies."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_fusion.encoders.registry import ENCODERS


@dataclass
class MLPEncoderConfig:
    """Hidden layer widths; each layer is Linear → (BatchNorm) → ReLU → Dropout."""

    widths: list[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.2
    batch_norm: bool = True

    def __post_init__(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be a non-empty list of positive sizes, got {self.widths}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@ENCODERS.register("mlp", input_kind="vector", config=MLPEncoderConfig)
class MLPEncoder(nn.Module):
    """``(B, F)`` clinical features → ``(B, widths[-1])``."""

    def __init__(self, input_shape: tuple[int, ...], options: MLPEncoderConfig) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"the mlp encoder takes vectors (F,), got input shape {input_shape}")
        layers: list[nn.Module] = []
        width_in = input_shape[0]
        for width in options.widths:
            layers.append(nn.Linear(width_in, width))
            if options.batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers += [nn.ReLU(inplace=True), nn.Dropout(options.dropout)]
            width_in = width
        self.layers = nn.Sequential(*layers)
        self.out_features = width_in

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
