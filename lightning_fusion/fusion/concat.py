"""Intermediate fusion by concatenation: per-modality features → concatenated → MLP head.

Level: intermediate. Accepts any non-empty set of modalities (``min_modalities`` 1). With a single
modality this is the unimodal baseline (encoder → head): the image-only CNN or the tabular-only ANN
of the reference studies, trained and evaluated exactly like the fusion model. It is the classic
feature-level fusion (concatenate the learned representations, classify jointly).

It cannot represent an absent modality (a concatenation has no slot to leave out), so a presence
mask with any modality absent in any sample is a clear error pointing to the fusions that can.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lightning_fusion.fusion.base import Fusion
from lightning_fusion.fusion.head import build_head
from lightning_fusion.fusion.registry import FUSIONS


@FUSIONS.register("concat", level="intermediate", min_modalities=1, supports_missing=False, config=None)
class ConcatFusion(Fusion):
    """``{m: (B, D_m)}`` → ``(B, num_classes)``; modalities concatenated in a fixed (sorted) order."""

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int, head, options=None) -> None:
        super().__init__(feature_dims, num_classes, head, options)
        self.head = build_head(sum(feature_dims.values()), head.widths, head.dropouts, num_classes)

    def forward(self, features: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None):
        if present is not None:
            mask = self.presence(features, present)
            batch_size = mask.shape[0]
            for i, modality in enumerate(self.modalities):
                if not bool(mask[:, i].all()):
                    raise ValueError(
                        f"{self.name} fusion cannot handle a missing {modality!r} modality "
                        f"({int((~mask[:, i]).sum())} of {batch_size} samples in this batch lack it); "
                        "drop those patients or use a fusion that supports missing modalities: "
                        f"{', '.join(FUSIONS.names(supports_missing=True))}"
                    )
        return self.head(torch.cat([features[m] for m in self.modalities], dim=1))
