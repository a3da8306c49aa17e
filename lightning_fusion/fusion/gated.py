"""Gated intermediate fusion: per-sample learned modality weights over a common feature width.

Level: intermediate. Accepts any set of two or more modalities (``min_modalities`` 2) and supports
missing modalities: any sample needs only one of them present.

Each modality's features are projected to a common width ``d`` (``h_m = tanh(W_m f_m)``). A gate per
modality scores its projection together with the sample's context (the mean of the present
projections), ``s_m = v_m · [h_m, c]``, and a **softmax over the present modalities** turns the
scores into weights ``g_m`` that sum to 1; the fused vector ``Σ_m g_m h_m`` goes to the classifier
head. The softmax (rather than an independent sigmoid per modality) keeps the weights comparable
between samples with different modalities present and makes them readable as "how much of this
prediction came from each modality". An absent modality is masked out of the softmax (weight
exactly 0, the present ones renormalised) and out of the context, so the prediction does not depend
on its placeholder input at all: nothing is zero-filled and then fed to a layer.

The idea follows the Gated Multimodal Unit (Arevalo et al., 2017, "Gated Multimodal Units for
Information Fusion"): tanh projections mixed by learned, input-dependent gates. The GMU gates each
feature dimension with sigmoids for two modalities; here the gate is one scalar per modality and
sample, generalised to M modalities with a softmax, so the gates double as per-sample modality
weights. ``last_gates`` holds the ``(B, M)`` gates of the last forward (detached; columns in
``modalities`` order) for inspection or logging.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lightning_fusion.fusion.base import Fusion, ModalityWeights
from lightning_fusion.fusion.head import build_head
from lightning_fusion.fusion.masking import masked_softmax
from lightning_fusion.fusion.registry import FUSIONS


@dataclass
class GatedFusionConfig:
    """``d``: the common width every modality is projected to (the head's input width)."""

    d: int = 64

    def __post_init__(self) -> None:
        if self.d < 1:
            raise ValueError(f"d must be >= 1, got {self.d}")


@FUSIONS.register("gated", level="intermediate", min_modalities=2, supports_missing=True, config=GatedFusionConfig)
class GatedFusion(Fusion):
    """``{m: (B, D_m)}`` (+ presence mask) → ``(B, num_classes)`` logits via a softmax gate over modalities."""

    def __init__(
        self, feature_dims: Mapping[str, int], num_classes: int, head, options: GatedFusionConfig | None = None
    ) -> None:
        super().__init__(feature_dims, num_classes, head, options)
        options = self.options
        self.project = nn.ModuleDict({m: nn.Linear(feature_dims[m], options.d) for m in self.modalities})
        self.gate = nn.ModuleDict({m: nn.Linear(2 * options.d, 1) for m in self.modalities})
        self.head = build_head(options.d, head.widths, head.dropouts, num_classes)
        self.last_gates: torch.Tensor | None = None

    def forward(
        self, features: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        mask = self.presence(features, present)  # (B, M)
        projected = torch.stack([torch.tanh(self.project[m](features[m])) for m in self.modalities], dim=1)
        # torch.where, not a product: an absent modality contributes nothing even if its features are odd
        projected = torch.where(mask.unsqueeze(-1), projected, torch.zeros_like(projected))  # (B, M, d)
        context = projected.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(projected.dtype)  # mean of present
        scores = torch.cat(
            [self.gate[m](torch.cat([projected[:, i], context], dim=1)) for i, m in enumerate(self.modalities)],
            dim=1,
        )  # (B, M)
        gates = masked_softmax(scores.float(), mask, dim=1)
        self.last_gates = gates.detach()
        fused = (gates.to(projected.dtype).unsqueeze(-1) * projected).sum(dim=1)
        return self.head(fused)

    def modality_weights(self) -> ModalityWeights | None:
        if self.last_gates is None:
            return None
        return ModalityWeights(self.last_gates, self.modalities, "gated fusion gates (softmax over present modalities)")
