"""Presence masks shared by the fusion strategies: ``{modality: (B,) bool}`` → one checked ``(B, M)`` tensor.

A batch may carry ``present``: for each modality a ``(B,)`` tensor, true where the sample has that
modality. A modality the mapping does not name counts as present in every sample (a dataset only
needs to list the modalities that can be missing); names the model does not use are ignored. An
absent modality's input must still be a finite placeholder of the right shape (the encoders run on
the whole batch); the fusion then masks its features out, it never relies on the placeholder's value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def presence_mask(
    present: Mapping[str, torch.Tensor] | None,
    modalities: Sequence[str],
    batch_size: int,
    device: torch.device,
    fusion: str,
) -> torch.Tensor:
    """``(B, M)`` bool, column ``i`` for ``modalities[i]``; every sample must have one modality present.

    Raises:
        ValueError: a mask of the wrong shape, or a sample with none of ``modalities`` present.
    """
    if present is None:
        return torch.ones(batch_size, len(modalities), dtype=torch.bool, device=device)
    columns = []
    for modality in modalities:
        if modality not in present:
            columns.append(torch.ones(batch_size, dtype=torch.bool, device=device))
            continue
        column = torch.as_tensor(present[modality], device=device)
        if column.shape != (batch_size,):
            raise ValueError(
                f"{fusion} fusion: present[{modality!r}] must have shape ({batch_size},) (one flag per sample), "
                f"got {tuple(column.shape)}"
            )
        columns.append(column if column.dtype == torch.bool else column != 0)
    mask = torch.stack(columns, dim=1)
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        samples = empty.nonzero().flatten().tolist()
        shown = ", ".join(map(str, samples[:10])) + (", ..." if len(samples) > 10 else "")
        raise ValueError(
            f"{fusion} fusion: sample(s) {shown} of the batch have none of the modalities {list(modalities)} "
            "present; every sample needs at least one present modality (drop those samples from the dataset)"
        )
    return mask


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``scores`` over the entries where ``mask`` is true; masked entries get exactly 0."""
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=dim)


def as_present_dict(mask: torch.Tensor, modalities: Sequence[str]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`presence_mask`: ``(B, M)`` → ``{modality: (B,) bool}``."""
    return {modality: mask[:, i] for i, modality in enumerate(modalities)}
