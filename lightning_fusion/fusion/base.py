"""What every fusion strategy shares: its constructor's preamble, presence masks, and its modality weights.

A strategy subclasses :class:`Fusion` and registers in :data:`~lightning_fusion.fusion.FUSIONS`; the
registry gives it its :attr:`~Fusion.name`. It is built as ``cls(feature_dims, num_classes, head,
options)`` and called as ``fusion(features, present)`` (see :mod:`lightning_fusion.fusion`).

:meth:`Fusion.modality_weights` is how explanations ask a fusion how much each modality weighed in
its last forward; a strategy without such weights returns ``None``. :meth:`Fusion.encode` runs the
encoders (each on its own input, unless the fusion conditions one on the others). :meth:`Fusion.overall_weights`
gives weights that do not depend on the sample (``late_weighted``), logged with every run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lightning_fusion.fusion.masking import presence_mask
from lightning_fusion.fusion.registry import FUSIONS


@dataclass(frozen=True)
class ModalityWeights:
    """Per-sample modality weights of a fusion's last forward.

    Attributes:
        values: ``(B, M)`` weights, column ``i`` for ``modalities[i]`` (detached, on the fusion's device).
        modalities: the fusion's modalities, in column order.
        source: what the weights are, in words (shown beside them in explanations).
    """

    values: torch.Tensor
    modalities: list[str]
    source: str

    def as_numpy(self) -> dict[str, Any]:
        """``{modality: (B,) float array}``."""
        columns = self.values.detach().float().cpu().numpy()
        return {m: columns[:, i].copy() for i, m in enumerate(self.modalities)}


class Fusion(nn.Module):
    """Base of the fusion strategies: ``{m: (B, D_m)}`` (+ presence mask) → ``(B, K)`` scores.

    Keeps ``modalities`` (sorted: a fixed column order) and ``options`` (an instance of the options
    dataclass registered with the strategy, its defaults when none is given).
    """

    registry_name: ClassVar[str]  # set by FUSIONS.register
    # True for a fusion that acts inside an encoder (encode overridden): a modality's features then
    # depend on the other modalities' inputs, so they cannot be computed from its own input alone.
    conditions_encoders: ClassVar[bool] = False

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int, head: Any, options: Any = None) -> None:
        super().__init__()
        self.modalities = sorted(feature_dims)
        options_class = FUSIONS.metadata(self.name).get("config")
        self.options = options if options is not None or options_class is None else options_class()

    @property
    def name(self) -> str:
        """The strategy's registry name (``concat``, ``gated``, ...)."""
        return type(self).registry_name

    def presence(
        self, features: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None
    ) -> torch.Tensor:
        """``(B, M)`` bool presence mask in ``modalities`` order (all true when ``present`` is ``None``)."""
        first = features[self.modalities[0]]
        return presence_mask(present, self.modalities, first.shape[0], first.device, self.name)

    def encode(self, encoders: Mapping[str, nn.Module], inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Each modality's ``(B, D_m)`` features: every encoder on its own input.

        A conditioning fusion (:mod:`lightning_fusion.fusion.conditioning`) overrides this: it runs one
        encoder with the other modalities' features acting inside it.
        """
        return {modality: encoder(inputs[modality]) for modality, encoder in encoders.items()}

    def modality_weights(self) -> ModalityWeights | None:
        """The per-sample modality weights of the last forward, or ``None`` for a strategy that has none."""
        return None

    def overall_weights(self) -> dict[str, float] | None:
        """Modality weights that do not depend on the sample (summing to 1), or ``None``."""
        return None
