"""Low-rank multimodal fusion (LMF): the tensor product of the modalities, in rank-``r`` factors.

Level: intermediate. Accepts any set of two or more modalities (``min_modalities`` 2; tested with 2, 3
and 4) and supports missing modalities: any sample needs only one of them present.

Tensor fusion (Zadeh et al., 2017) appends a 1 to each modality's features, ``z_m = [f_m; 1]``, and
takes their outer product ``Z = z_1 ⊗ … ⊗ z_M``: because of the appended 1s, ``Z`` holds every
unimodal term, every bimodal interaction and so on up to the M-way one. A linear layer ``W · Z`` on
that tensor has ``Π_m (D_m + 1) × d`` weights. Low-rank multimodal fusion (Liu et al., 2018, "Efficient
Low-rank Multimodal Fusion with Modality-Specific Factors", ACL) writes ``W`` as a sum of ``r``
rank-one tensors with one factor per modality, ``W = Σ_i w_i ⊗_m W_m^(i)``, so the product is never
formed:

    fused = Σ_{i=1..r} λ_i · Π_m (W_m^(i) z_m) + b          (Π: elementwise over the d outputs)

with factors ``W_m^(i)`` of shape ``(D_m + 1, d)``, learned rank weights ``λ`` and bias ``b``: linear
in each modality, ``Σ_m (D_m + 1) × d × r`` weights. ``rank`` is ``r`` and ``d`` the fused width (the
classifier head's input).

A modality absent from a sample gets ``f_m = 0`` in that sample, so ``z_m = [0; 1]`` keeps only its
appended 1: exactly the terms of the full product that do not involve modality ``m`` (the other
modalities' sub-tensor, through the factor's last row). Its features are replaced with
``torch.where``, so the prediction does not depend on the placeholder input at all. There are no
per-sample modality weights (``modality_weights()`` is ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lightning_fusion.fusion.base import Fusion
from lightning_fusion.fusion.head import build_head
from lightning_fusion.fusion.registry import FUSIONS


@dataclass
class LowRankFusionConfig:
    """``rank``: the number of rank-one terms ``r``; ``d``: the fused width (the head's input width)."""

    rank: int = 4
    d: int = 64

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.d < 1:
            raise ValueError(f"d must be >= 1, got {self.d}")


@FUSIONS.register("lmf", level="intermediate", min_modalities=2, supports_missing=True, config=LowRankFusionConfig)
class LowRankFusion(Fusion):
    """``{m: (B, D_m)}`` (+ presence mask) → ``(B, num_classes)`` logits via rank-``r`` tensor fusion."""

    def __init__(
        self, feature_dims: Mapping[str, int], num_classes: int, head, options: LowRankFusionConfig | None = None
    ) -> None:
        super().__init__(feature_dims, num_classes, head, options)
        rank, width = self.options.rank, self.options.d
        self.factors = nn.ParameterDict(
            {m: nn.Parameter(_initial_factor(rank, feature_dims[m], width)) for m in self.modalities}
        )  # factors[m]: (r, D_m + 1, d)
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(width))
        self.head = build_head(width, head.widths, head.dropouts, num_classes)

    def forward(
        self, features: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        mask = self.presence(features, present)  # (B, M)
        product = None
        for i, modality in enumerate(self.modalities):
            values = features[modality]
            values = torch.where(mask[:, i : i + 1], values, torch.zeros_like(values))  # absent: only the appended 1
            augmented = torch.cat([values, torch.ones_like(values[:, :1])], dim=1)  # (B, D_m + 1)
            term = torch.einsum("bi,rid->brd", augmented, self.factors[modality].to(augmented.dtype))  # (B, r, d)
            product = term if product is None else product * term
        fused = torch.einsum("brd,r->bd", product, self.rank_weights.to(product.dtype)) + self.bias.to(product.dtype)
        return self.head(fused)


def _initial_factor(rank: int, dim: int, width: int) -> torch.Tensor:
    """``(r, D + 1, d)``: feature rows ``N(0, 1/D)``, the appended-1 row all ones.

    Each factor then starts as ``1 + (a linear term of unit scale)``, so the product over modalities
    starts near ``1 + Σ_m (unimodal terms) + ...`` whatever the number of modalities; Xavier
    initialisation (the authors' code) makes every factor small, and a product of three or four
    small factors vanishes (outputs that barely move with their inputs).
    """
    factor = torch.randn(rank, dim + 1, width) / dim**0.5
    factor[:, -1, :] = 1.0
    return factor
