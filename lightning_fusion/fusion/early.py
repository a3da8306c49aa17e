"""Input-level ("early") fusion: same-kind modalities merged into one input before any encoder.

Level: input. Accepts any set of two or more modalities. Within each kind, the raw inputs become one
(the kind's ``merged_shape`` and ``merge``, :mod:`lightning_fusion.data.kinds`):

* images: every image modality is resampled (bilinear) to the largest height and width among them
  and the images are stacked as channels (CT + CXR + cough spectrogram, 1 channel each → 3 channels),
  then go through ONE image encoder: the encoder configured for the first image modality in
  ``model.modalities``;
* signals: resampled (linear) to the longest length and stacked as leads, through the encoder of the
  first signal modality;
* vectors (clinical tables): concatenated into one feature vector, through the encoder of the first
  vector modality.

Each merged input is one "group" (named after its modalities, e.g. ``ct+cxr+cough``). With only one
kind (e.g. three images) this is pure early fusion: one backbone sees everything at once. With mixed
kinds (image + clinical), raw pixels and table values cannot share one network, so each kind is
fused early and the groups' features are then concatenated into the head: early within a kind,
intermediate across kinds. An absent modality has no place in a stacked input, so a presence mask
with any modality absent is a clear error (``supports_missing`` False).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_fusion.data.kinds import KINDS
from lightning_fusion.fusion.concat import ConcatFusion
from lightning_fusion.fusion.registry import FUSIONS


def plan_groups(modalities: Sequence[str], kinds: Mapping[str, str]) -> dict[str, list[str]]:
    """Group name → its modalities (same kind, in ``modalities`` order); one group per kind present, kinds by name."""
    groups: dict[str, list[str]] = {}
    for kind in KINDS:
        members = [m for m in modalities if kinds[m] == kind]
        if members:
            groups["+".join(members)] = members
    unknown = sorted({kinds[m] for m in modalities} - set(KINDS))
    if unknown:
        raise ValueError(f"early fusion cannot merge modalities of kind(s) {unknown}")
    return groups


def merged_shape(shapes: Sequence[tuple[int, ...]], kind: str) -> tuple[int, ...]:
    """The per-sample shape of the merged input of one group."""
    return KINDS.get(kind).merged_shape(shapes)


class StackInputs(nn.Module):
    """``{modality: tensor}`` batch → ``{group: merged tensor}`` (see the module docstring)."""

    def __init__(self, groups: Mapping[str, Sequence[str]], kinds: Mapping[str, str], shapes: Mapping[str, tuple]):
        super().__init__()
        self.groups = {name: list(members) for name, members in groups.items()}
        self.kinds = {name: kinds[members[0]] for name, members in self.groups.items()}
        self.shapes = {
            name: merged_shape([shapes[m] for m in members], self.kinds[name]) for name, members in groups.items()
        }

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        present = batch.get("present")
        if present is not None:
            for modality in (m for members in self.groups.values() for m in members):
                if modality in present and not bool(torch.as_tensor(present[modality]).all()):
                    raise ValueError(
                        f"early fusion cannot handle a missing {modality!r} modality (a stacked input has no "
                        f"place to leave it out); use one of {FUSIONS.names(supports_missing=True)}"
                    )
        merged = {name: self._merge(name, [batch[m] for m in members]) for name, members in self.groups.items()}
        return merged | ({"present": present} if present is not None else {})

    def _merge(self, name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        if len(tensors) == 1:
            return tensors[0]
        return KINDS.get(self.kinds[name]).merge(tensors, self.shapes[name])


@FUSIONS.register("early", level="input", min_modalities=2, supports_missing=False, config=None)
class EarlyFusion(ConcatFusion):
    """The head over the merged groups' features (one group per kind; see the module docstring)."""
