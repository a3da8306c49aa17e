"""Conditioning fusions: the other modalities scale and shift an image encoder's feature maps (FiLM, DAFT, ...).

Level: intermediate. Needs one image modality encoded by a timm backbone (the conditioned one) and at
least one other modality (``min_modalities`` 2); no missing modalities (``supports_missing`` False:
without its image a sample has no feature map to condition, and a stage's statistics are shared).

**How it fits the Fusion interface.** Every other fusion meets the modalities as pooled vectors,
``fusion(features, present)``. A conditioning fusion must act *inside* the image encoder, on the
``(B, C, H, W)`` feature map of one of its stages, so it also owns the encoding step:
:meth:`Fusion.encode` runs the encoders (by default each on its own input), and here it

1. encodes the conditioning modalities (all but the image; a clinical table with its missing-value
   indicators, when ``data.tabular`` adds them, goes through its own encoder) and concatenates
   their features into a context vector ``c`` of shape ``(B, D_c)``;
2. runs the image encoder with a forward hook on the chosen stage, which replaces the stage's
   output ``x`` by ``γ(c) ⊙ x + β(c)`` (per sample and channel, broadcast over H and W); the hook is
   registered for that one call and removed after it, so the encoder on its own stays unconditioned;
3. returns the features, and :meth:`forward` classifies the (conditioned) pooled image features
   with the head, as FiLM and DAFT do.

The stage is an index into timm's ``feature_info`` (negative from the end), the same list
``features_only`` models use, so any timm CNN works (ResNet ``layerN``, EfficientNet / MobileNet
``blocks.N``, ConvNeXt ``stages.N``); the fusion is built with the encoders (``build_model`` passes them
when the registry entry has ``conditions``) to read the stage's channel count ``C``. The scale and
shift generators belong to the fusion, not the backbone, so they always train; freezing the backbone
(``freeze``, ``unfreeze_from``, ``warmup_epochs``) is unaffected, and gradients reach the conditioning
modalities through the frozen layers after the stage. ``γ = 1 + Δγ``, so a small generator output
starts near the unconditioned network (FiLM, DAFT).

Strategies:

* ``film``: FiLM (Perez et al., 2018, "FiLM: Visual Reasoning with a General Conditioning Layer",
  AAAI): ``[Δγ, β] = Linear(c)``.
* ``daft``: DAFT (Pölsterl et al., 2021, "Combining 3D Image and Tabular Data via the Dynamic Affine
  Feature Map Transform", MICCAI): the stage's globally average-pooled feature map joins the context
  in a bottleneck, ``[Δγ, β] = Linear(ReLU(Linear([GAP(x), c])))``, width ``(C + D_c) //
  bottleneck_factor`` (7 in the paper). DAFT conditions inside the last residual block, before its
  addition; here it acts on a stage's output, which works for any timm CNN.
* ``channel_attention``: channel-wise multiplicative attention from the table (Duanmu et al., 2020,
  "Prediction of Pathological Complete Response to Neoadjuvant Chemotherapy in Breast Cancer Using
  Deep Learning with Integrative Imaging, Molecular and Demographic Data", MICCAI; fusilli's
  ``ImageChannelWiseMultiAttention``): a weight per channel, ``γ = 2 · sigmoid(Linear(c))`` in (0, 2)
  (1 at a zero context), no shift. Duanmu et al. weight the maps after every convolution block; here
  one stage, the same hook as FiLM.

A backbone whose stage output is not a 4-D feature map (a vision transformer's tokens) is a clear
error at the first forward. There are no per-sample modality weights (``modality_weights()`` is ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from lightning_fusion.fusion.base import Fusion
from lightning_fusion.fusion.head import build_head
from lightning_fusion.fusion.registry import FUSIONS
from lightning_fusion.registry import suggest


@dataclass
class FiLMFusionConfig:
    """``stage``: the timm feature stage conditioned (index into ``feature_info``, negative from the end);
    ``modality``: the conditioned image modality (needed only when the model has several)."""

    stage: int = -1
    modality: str | None = None


@dataclass
class DAFTFusionConfig(FiLMFusionConfig):
    """FiLM's options and ``bottleneck_factor``: the bottleneck is ``(C + D_c) // bottleneck_factor`` wide."""

    bottleneck_factor: int = 7

    def __post_init__(self) -> None:
        if self.bottleneck_factor < 1:
            raise ValueError(f"bottleneck_factor must be >= 1, got {self.bottleneck_factor}")


class ConditioningFusion(Fusion):
    """What ``film``, ``daft`` and ``channel_attention`` share: the hook, the context, the head.

    A subclass makes the per-channel ``(γ, β)`` in :meth:`scale_and_shift`.
    """

    conditions_encoders = True

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        num_classes: int,
        head: Any,
        options: Any = None,
        *,
        encoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(feature_dims, num_classes, head, options)
        if encoders is None:
            raise ValueError(f"{self.name} fusion conditions an image encoder: build it with encoders=")
        self.conditioned = self._conditioned_modality(encoders)
        self.sources = [m for m in self.modalities if m != self.conditioned]
        stage = encoders[self.conditioned].feature_stage(self.options.stage)
        self.stage_name, self.channels = stage.name, stage.channels
        self.context_width = sum(feature_dims[m] for m in self.sources)
        self.head = build_head(feature_dims[self.conditioned], head.widths, head.dropouts, num_classes)

    def _conditioned_modality(self, encoders: Mapping[str, nn.Module]) -> str:
        images = [m for m in self.modalities if callable(getattr(encoders[m], "feature_stage", None))]
        wanted = self.options.modality
        if wanted is not None:
            if wanted not in images:
                raise ValueError(
                    f"model.fusion.modality: {suggest(wanted, images, 'image modality') if images else repr(wanted)} "
                    f"({self.name} conditions one of the model's timm-encoded image modalities: {images})"
                )
            return wanted
        if len(images) != 1:
            found = f"several ({images})" if images else "none"
            raise ValueError(
                f"{self.name} fusion conditions one image modality encoded by a timm backbone; the model's "
                f"modalities {self.modalities} have {found}"
                + ("; choose one with model.fusion.modality" if images else "")
            )
        return images[0]

    def scale_and_shift(self, feature_map: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C)`` scale ``γ`` and shift ``β`` for ``(B, C, H, W)`` maps and ``(B, D_c)`` context."""
        raise NotImplementedError

    def encode(self, encoders: Mapping[str, nn.Module], inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        features = {m: encoders[m](inputs[m]) for m in self.sources}
        context = torch.cat([features[m] for m in self.sources], dim=1)
        stage = encoders[self.conditioned].feature_stage(self.options.stage).module
        with stage.register_forward_hook(partial(self._modulate, context)):
            features[self.conditioned] = encoders[self.conditioned](inputs[self.conditioned])
        return features

    def _modulate(self, context: torch.Tensor, _module: nn.Module, _args: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"{self.name} fusion conditions (B, C, H, W) feature maps; stage {self.options.stage} "
                f"({self.stage_name}) gives {shape}; use a CNN backbone"
            )
        scale, shift = self.scale_and_shift(output, context.to(output.dtype))
        return output * scale.to(output.dtype)[:, :, None, None] + shift.to(output.dtype)[:, :, None, None]

    def forward(
        self, features: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if present is not None:
            mask = self.presence(features, present)
            if not bool(mask.all()):
                absent = [m for i, m in enumerate(self.modalities) if not bool(mask[:, i].all())]
                raise ValueError(
                    f"{self.name} fusion cannot handle a missing modality ({absent} absent in some samples of this "
                    f"batch); use one of {', '.join(FUSIONS.names(supports_missing=True))}"
                )
        return self.head(features[self.conditioned])


@FUSIONS.register(
    "film", level="intermediate", min_modalities=2, supports_missing=False, conditions="image", config=FiLMFusionConfig
)
class FiLMFusion(ConditioningFusion):
    """FiLM: a linear map of the context gives each channel's scale and shift."""

    def __init__(self, feature_dims, num_classes, head, options=None, *, encoders=None) -> None:
        super().__init__(feature_dims, num_classes, head, options, encoders=encoders)
        self.generator = nn.Linear(self.context_width, 2 * self.channels)

    def scale_and_shift(self, feature_map: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta_scale, shift = self.generator(context).chunk(2, dim=1)
        return 1 + delta_scale, shift


@FUSIONS.register(
    "daft", level="intermediate", min_modalities=2, supports_missing=False, conditions="image", config=DAFTFusionConfig
)
class DAFTFusion(ConditioningFusion):
    """DAFT: the pooled feature map and the context through a bottleneck give each channel's scale and shift."""

    def __init__(self, feature_dims, num_classes, head, options=None, *, encoders=None) -> None:
        super().__init__(feature_dims, num_classes, head, options, encoders=encoders)
        width = max(1, (self.channels + self.context_width) // self.options.bottleneck_factor)
        self.generator = nn.Sequential(
            nn.Linear(self.channels + self.context_width, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, 2 * self.channels),
        )

    def scale_and_shift(self, feature_map: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta_scale, shift = self.generator(torch.cat([feature_map.mean(dim=(2, 3)), context], dim=1)).chunk(2, dim=1)
        return 1 + delta_scale, shift


@FUSIONS.register(
    "channel_attention",
    level="intermediate",
    min_modalities=2,
    supports_missing=False,
    conditions="image",
    config=FiLMFusionConfig,
)
class ChannelAttentionFusion(ConditioningFusion):
    """Channel-wise attention: the context gives each channel a weight in (0, 2), no shift."""

    def __init__(self, feature_dims, num_classes, head, options=None, *, encoders=None) -> None:
        super().__init__(feature_dims, num_classes, head, options, encoders=encoders)
        self.generator = nn.Linear(self.context_width, self.channels)

    def scale_and_shift(self, feature_map: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = 2 * torch.sigmoid(self.generator(context))
        return weights, torch.zeros_like(weights)
