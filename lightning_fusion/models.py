"""Assemble encoders and a fusion strategy from config into one pure-torch classifier."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lightning_fusion.config import HeadConfig, ModelConfig
from lightning_fusion.encoders import ENCODERS
from lightning_fusion.fusion.early import StackInputs, plan_groups


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality looks like in a batch: its kind and the shape of one sample."""

    kind: str  # image | vector | signal
    shape: tuple[int, ...]


class MultimodalClassifier(nn.Module):
    """``{modality: tensor}`` batch → ``(B, num_classes)`` logits via per-modality encoders and a fusion.

    The batch may carry ``present: {modality: (B,) bool}``, passed on to the fusion. With
    ``modality_dropout`` p > 0, in training mode only, each modality of each sample is additionally
    marked absent with probability p, never all of a sample's present modalities: one of them, chosen
    at random, is kept (ModDrop, Neverova et al., 2016: a model trained this way learns to predict
    from any subset). Only for fusions that support missing modalities (a config rule, checked at resolve).
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        fusion: nn.Module,
        modality_dropout: float = 0.0,
        merge_inputs: nn.Module | None = None,
        aux_heads: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.merge_inputs = merge_inputs  # input-level (early) fusion: modalities merged before the encoders
        if not 0 <= modality_dropout < 1:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.fusion = fusion
        self.modality_dropout = modality_dropout
        # model.aux_loss_weight > 0: one linear classifier per encoder on its features, for the training loss only
        self.aux_heads = nn.ModuleDict(dict(aux_heads)) if aux_heads else None

    def forward(
        self, batch: Mapping[str, torch.Tensor], auxiliary: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(B, K)`` scores; with ``auxiliary`` also ``{encoder input: (B, K)}`` logits of the auxiliary heads."""
        if self.merge_inputs is not None:
            batch = self.merge_inputs(batch)
        features = self.fusion.encode(self.encoders, batch)
        present = batch.get("present")
        if self.training and self.modality_dropout > 0:
            present = self.drop_modalities(present, next(iter(features.values())))
        scores = self.fusion(features, present)
        if not auxiliary:
            return scores
        if self.aux_heads is None:
            raise ValueError("auxiliary logits need model.aux_loss_weight > 0 (no auxiliary heads were built)")
        return scores, {name: head(features[name]) for name, head in self.aux_heads.items()}

    def drop_modalities(
        self, present: Mapping[str, torch.Tensor] | None, like: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``present`` with each present modality of each sample dropped with probability ``modality_dropout``.

        A sample keeps at least one of its present modalities (one at random if all were drawn to go);
        a sample given with none present stays so (the fusion reports it).
        """
        modalities = list(self.encoders)
        batch_size, device = like.shape[0], like.device
        given = torch.ones(batch_size, len(modalities), dtype=torch.bool, device=device)
        for i, modality in enumerate(modalities):
            if present is not None and modality in present:
                given[:, i] = torch.as_tensor(present[modality], device=device) != 0
        kept = given & (torch.rand(batch_size, len(modalities), device=device) >= self.modality_dropout)
        emptied = ~kept.any(dim=1) & given.any(dim=1)
        if bool(emptied.any()):
            rescue = torch.rand(batch_size, len(modalities), device=device).masked_fill(~given, -1.0).argmax(dim=1)
            kept[emptied, rescue[emptied]] = True
        return {modality: kept[:, i] for i, modality in enumerate(modalities)}


def build_model(model: ModelConfig, specs: Mapping[str, ModalitySpec], num_classes: int) -> MultimodalClassifier:
    """Build the classifier for ``model.modalities`` from their specs; errors name the modality."""
    for modality in model.modalities:
        if modality not in specs:
            raise ValueError(f"the dataset has no modality {modality!r}; it has {sorted(specs)}")
    merge_inputs = None
    # Which encoder sees what: one per modality, or (input-level fusion) one per merged group, built
    # with the encoder options of the group's first modality.
    inputs = {m: (m, specs[m]) for m in model.modalities}
    if model.fusion.metadata.get("level") == "input":
        kinds = {m: specs[m].kind for m in model.modalities}
        groups = plan_groups(model.modalities, kinds)
        merge_inputs = StackInputs(groups, kinds, {m: specs[m].shape for m in model.modalities})
        inputs = {
            name: (members[0], ModalitySpec(merge_inputs.kinds[name], merge_inputs.shapes[name]))
            for name, members in groups.items()
        }
    encoders = {}
    for name, (modality, spec) in inputs.items():
        encoder = model.encoders[modality]
        accepted = encoder.metadata["input_kind"]
        if accepted != spec.kind:
            raise ValueError(
                f"model.encoders.{modality}: encoder {encoder.name!r} takes {accepted} inputs, "
                f"but {modality!r} is a {spec.kind} modality; choose one of "
                f"{ENCODERS.names(input_kind=spec.kind)}"
            )
        encoders[name] = encoder.create(spec.shape)
    head = model.head if isinstance(model.head, HeadConfig) else HeadConfig(**model.head)
    # A conditioning fusion (film, daft) acts inside an encoder, so it is built knowing the encoders.
    extra = {"encoders": encoders} if model.fusion.metadata.get("conditions") else {}
    fusion = model.fusion.create({m: e.out_features for m, e in encoders.items()}, num_classes, head, **extra)
    aux_heads = (
        {name: nn.Linear(e.out_features, num_classes) for name, e in encoders.items()}
        if model.aux_loss_weight > 0
        else None
    )
    return MultimodalClassifier(encoders, fusion, model.modality_dropout, merge_inputs, aux_heads)
