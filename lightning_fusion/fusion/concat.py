"""Intermediate fusion by concatenation: per-modality features → concatenated → MLP head.

With a single modality this is the unimodal baseline (encoder → head): the image-only CNN or the
tabular-only ANN of the reference studies, trained and evaluated exactly like the fusion model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lightning_fusion.fusion import FUSIONS
from lightning_fusion.fusion.head import build_head


@FUSIONS.register("concat", level="intermediate", min_modalities=1, supports_missing=False, config=None)
class ConcatFusion(nn.Module):
    """``{m: (B, D_m)}`` → ``(B, num_classes)``; modalities concatenated in a fixed (sorted) order."""

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int, head, options=None) -> None:
        super().__init__()
        self.modalities = sorted(feature_dims)
        self.head = build_head(sum(feature_dims.values()), head.widths, head.dropouts, num_classes)

    def forward(self, features: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None):
        if present is not None:
            for modality in self.modalities:
                if not bool(present[modality].all()):
                    raise ValueError(
                        f"concat fusion cannot handle a missing {modality!r} modality; "
                        "drop those patients or use a fusion that supports missing modalities"
                    )
        return self.head(torch.cat([features[m] for m in self.modalities], dim=1))
