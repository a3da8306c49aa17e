"""Attention intermediate fusion: one token per modality, self-attention across modalities, masked pooling.

Level: intermediate. Accepts any set of two or more modalities (``min_modalities`` 2) and supports
missing modalities: any sample needs only one of them present.

Each modality's feature vector becomes one token of width ``d`` (a linear projection plus a learned
modality embedding, so the attention knows which token is which). ``layers`` Transformer encoder
blocks (post-norm: ``nn.MultiheadAttention`` with ``heads`` heads → residual → LayerNorm → a 2·d
feed-forward → residual → LayerNorm, ``dropout`` throughout) let every modality's token attend to
the others; the tokens are then averaged over the present modalities and the mean goes to the
classifier head. An absent modality is excluded through ``key_padding_mask`` (no token attends to
it) and from the pooling; its token is replaced by its bare modality embedding so that its
placeholder input never enters any computation, so a sample's prediction does not depend on it.

The idea is the Transformer's self-attention (Vaswani et al., 2017) applied across modalities, as
multimodal Transformers fuse modalities by attention (e.g. Tsai et al., 2019, MulT, with
cross-modal attention between sequences); here each modality is a single token, and treating an
absent modality as a padded (masked-out) token lets one model serve every modality combination.

``last_attention`` holds the attention weights of the last block in the last forward,
``(B, heads, M, M)`` per head (not averaged; detached; query × key in ``modalities`` order). In
eval mode each row sums to 1 over the present modalities (an absent key gets weight 0); in training
the weights are those after attention dropout, as ``nn.MultiheadAttention`` returns them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lightning_fusion.fusion.base import Fusion, ModalityWeights
from lightning_fusion.fusion.head import build_head
from lightning_fusion.fusion.registry import FUSIONS


@dataclass
class AttentionFusionConfig:
    """Token width ``d`` (divisible by ``heads``), attention heads, dropout, number of attention blocks."""

    d: int = 64
    heads: int = 4
    dropout: float = 0.1
    layers: int = 1

    def __post_init__(self) -> None:
        if self.d < 1 or self.heads < 1:
            raise ValueError(f"d and heads must be >= 1, got d={self.d}, heads={self.heads}")
        if self.d % self.heads:
            raise ValueError(f"d ({self.d}) must be divisible by heads ({self.heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")


class _AttentionBlock(nn.Module):
    """A post-norm Transformer encoder block that also returns its per-head attention weights."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        self.feed_forward = nn.Sequential(
            nn.Linear(d, 2 * d), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(2 * d, d)
        )
        self.norm2 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attended, weights = self.attention(
            tokens, tokens, tokens, key_padding_mask=padding, need_weights=True, average_attn_weights=False
        )
        tokens = self.norm1(tokens + self.dropout(attended))
        tokens = self.norm2(tokens + self.dropout(self.feed_forward(tokens)))
        return tokens, weights


@FUSIONS.register(
    "attention", level="intermediate", min_modalities=2, supports_missing=True, config=AttentionFusionConfig
)
class AttentionFusion(Fusion):
    """``{m: (B, D_m)}`` (+ presence mask) → ``(B, num_classes)`` logits via self-attention over modality tokens."""

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        num_classes: int,
        head,
        options: AttentionFusionConfig | None = None,
    ) -> None:
        super().__init__(feature_dims, num_classes, head, options)
        options = self.options
        self.project = nn.ModuleDict({m: nn.Linear(feature_dims[m], options.d) for m in self.modalities})
        self.modality_embedding = nn.Parameter(torch.randn(len(self.modalities), options.d) * 0.02)
        self.blocks = nn.ModuleList(
            _AttentionBlock(options.d, options.heads, options.dropout) for _ in range(options.layers)
        )
        self.head = build_head(options.d, head.widths, head.dropouts, num_classes)
        self.last_attention: torch.Tensor | None = None

    def forward(
        self, features: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        mask = self.presence(features, present)  # (B, M)
        projected = torch.stack([self.project[m](features[m]) for m in self.modalities], dim=1)  # (B, M, d)
        embedding = self.modality_embedding.to(projected.dtype).expand_as(projected)
        tokens = torch.where(mask.unsqueeze(-1), projected + embedding, embedding)
        for block in self.blocks:
            tokens, weights = block(tokens, ~mask)
        self.last_attention = weights.detach()
        tokens = torch.where(mask.unsqueeze(-1), tokens, torch.zeros_like(tokens))
        pooled = tokens.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(tokens.dtype)
        return self.head(pooled)

    def modality_weights(self) -> ModalityWeights | None:
        """Attention each modality token received in the last block: mean over heads and present queries."""
        if self.last_attention is None:
            return None
        attention = self.last_attention.float().mean(dim=1)  # (B, M query, M key)
        keys_present = attention.sum(dim=1) > 0  # an absent modality's key receives no attention
        queries = keys_present.unsqueeze(-1).to(attention.dtype)  # average over the present query tokens
        received = (attention * queries).sum(dim=1) / queries.sum(dim=1).clamp_min(1)
        source = "attention received by each modality token in the last block (mean over heads, present queries)"
        return ModalityWeights(received, self.modalities, source)
