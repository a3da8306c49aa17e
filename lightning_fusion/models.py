"""Assemble encoders and a fusion strategy from config into one pure-torch classifier."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lightning_fusion.config import HeadConfig, ModelConfig, component_options
from lightning_fusion.encoders import ENCODERS
from lightning_fusion.fusion import FUSIONS


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality looks like in a batch: its kind and the shape of one sample."""

    kind: str  # image | vector | signal
    shape: tuple[int, ...]


class MultimodalClassifier(nn.Module):
    """``{modality: tensor}`` batch → ``(B, num_classes)`` logits via per-modality encoders and a fusion."""

    def __init__(self, encoders: Mapping[str, nn.Module], fusion: nn.Module) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(dict(encoders))
        self.fusion = fusion

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        features = {modality: encoder(batch[modality]) for modality, encoder in self.encoders.items()}
        return self.fusion(features, batch.get("present"))


def build_model(model: ModelConfig, specs: Mapping[str, ModalitySpec], num_classes: int) -> MultimodalClassifier:
    """Build the classifier for ``model.modalities`` from their specs; errors name the modality."""
    encoders = {}
    for modality in model.modalities:
        if modality not in specs:
            raise ValueError(f"the dataset has no modality {modality!r}; it has {sorted(specs)}")
        component = model.encoders[modality]
        accepted = ENCODERS.metadata(component["name"])["input_kind"]
        if accepted != specs[modality].kind:
            raise ValueError(
                f"model.encoders.{modality}: encoder {component['name']!r} takes {accepted} inputs, "
                f"but {modality!r} is a {specs[modality].kind} modality; choose one of "
                f"{ENCODERS.names(input_kind=specs[modality].kind)}"
            )
        options = component_options(component, ENCODERS)
        encoders[modality] = ENCODERS.create(component["name"], specs[modality].shape, options)
    fusion_name = model.fusion["name"]
    head = model.head if isinstance(model.head, HeadConfig) else HeadConfig(**model.head)
    fusion = FUSIONS.create(
        fusion_name,
        {m: e.out_features for m, e in encoders.items()},
        num_classes,
        head,
        component_options(model.fusion, FUSIONS),
    )
    return MultimodalClassifier(encoders, fusion)
