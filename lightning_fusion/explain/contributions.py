"""How much the predicted class's probability falls when one modality is taken away; the fusion's weights;
and, for a fusion that masks absent modalities, each modality's exact Shapley value
(:mod:`~lightning_fusion.explain.shapley`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from lightning_fusion.explain.inputs import Target, inspecting, model_inputs, target_indices
from lightning_fusion.explain.shapley import modality_shapley

if TYPE_CHECKING:
    from lightning_fusion.lit import FusionLitModule


# --------------------------------------------------------------------------------------------------
# Drop one modality
# --------------------------------------------------------------------------------------------------
@dataclass
class ModalityContributions:
    """What each modality adds to the explained class's probability, per sample.

    Attributes:
        target: ``(B,)`` the explained class per sample (the predicted class unless given).
        probability: ``(B,)`` its probability with every modality as given.
        deltas: modality → ``(B,)`` ``probability`` minus the probability without that modality
            (positive: the modality supports the class). 0 where the modality was already absent; NaN
            where it is the sample's only present modality (nothing would be left to predict from).
        method: ``"mask"`` (the modality marked absent through ``present``, for fusions that support
            missing modalities) or ``"zeros"`` (its input replaced by zeros: a black image, the training
            mean of z-scored tables and signals).
        fusion_weights: modality → ``(B,)`` the fusion's own per-sample modality weights (each sample's
            sum to 1), or ``None`` when the fusion has none. ``weights_source`` says what they are.
        shapley: modality → ``(B,)`` its exact Shapley value of the same probability over every subset of
            modalities (each patient's sum to ``probability − shapley_baseline``), or ``None`` when the fusion
            cannot mask (``shapley_skipped`` says why).
        shapley_baseline: ``(B,)`` ``v(no modality)``: the explained class's prior in the training split.
    """

    target: np.ndarray
    probability: np.ndarray
    deltas: dict[str, np.ndarray]
    method: Literal["mask", "zeros"]
    fusion_weights: dict[str, np.ndarray] | None
    weights_source: str | None
    shapley: dict[str, np.ndarray] | None = None
    shapley_baseline: np.ndarray | None = None
    shapley_skipped: str | None = None


def modality_contributions(
    module: FusionLitModule, batch: Mapping[str, Any], target: Target = None
) -> ModalityContributions:
    """Drop-one-modality deltas of the target class's probability, the fusion's own weights if any, and for a
    fusion that masks, each modality's Shapley value (:func:`~lightning_fusion.explain.shapley.modality_shapley`).

    For each modality: the probability with every modality minus the probability without it — marked
    absent through ``present`` when the fusion supports missing modalities (``FUSIONS`` metadata
    ``supports_missing``), else its input replaced by zeros (see :class:`ModalityContributions`).

    Raises:
        ValueError: a model with a single modality (nothing to compare).
    """
    modalities = list(module.modalities)
    if len(modalities) < 2:
        raise ValueError(f"modality contributions need a model with >= 2 modalities; this one has {modalities}")
    fusion = module.experiment_config.model.fusion
    method: Literal["mask", "zeros"] = "mask" if fusion.metadata.get("supports_missing", False) else "zeros"
    with inspecting(module), torch.no_grad():
        inputs = model_inputs(module, batch)
        full = module(inputs).float().softmax(dim=1)
        fusion_weights = module.model.fusion.modality_weights()  # right after the full-batch forward
        targets = target_indices(target, full)
        rows = torch.arange(full.shape[0], device=full.device)
        probability = full[rows, targets]
        batch_size = full.shape[0]
        given = inputs.get("present") or {}
        present = {
            m: torch.as_tensor(given[m]).bool() if m in given else torch.ones(batch_size, dtype=torch.bool)
            for m in modalities
        }
        present = {m: flags.to(full.device) for m, flags in present.items()}
        deltas = {}
        for modality in modalities:
            if method == "mask":
                others = torch.stack([present[m] for m in modalities if m != modality], dim=1).any(dim=1)
                flags = present | {modality: present[modality] & ~others}  # kept where it is all there is
                dropped = module(inputs | {"present": flags}).float().softmax(dim=1)[rows, targets]
                delta = torch.where(others, probability - dropped, torch.full_like(probability, float("nan")))
            else:
                zeroed = inputs | {modality: torch.zeros_like(inputs[modality])}
                delta = probability - module(zeroed).float().softmax(dim=1)[rows, targets]
            deltas[modality] = delta.cpu().numpy()
    try:
        shapley = modality_shapley(module, inputs, targets)
    except ValueError as err:  # a fusion that cannot mask, a model without its training class frequencies
        shapley, skipped = None, str(err)
    else:
        skipped = None
    return ModalityContributions(
        target=targets.cpu().numpy(),
        probability=probability.cpu().numpy(),
        deltas=deltas,
        method=method,
        fusion_weights=fusion_weights.as_numpy() if fusion_weights is not None else None,
        weights_source=fusion_weights.source if fusion_weights is not None else None,
        shapley=shapley.values if shapley is not None else None,
        shapley_baseline=shapley.baseline if shapley is not None else None,
        shapley_skipped=skipped,
    )
