"""The classifier head shared by fusion strategies: Linear → ReLU → Dropout per hidden width."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def build_head(in_features: int, widths: Sequence[int], dropouts: Sequence[float], num_classes: int) -> nn.Sequential:
    """``(B, in_features)`` → ``(B, num_classes)`` logits, e.g. widths (128, 256), dropouts (0.3, 0.4)."""
    layers: list[nn.Module] = []
    for width, dropout in zip(widths, dropouts, strict=True):
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)
