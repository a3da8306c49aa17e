"""A trained masking model's probabilities under other presence masks: the encoders once, the fusion once per mask.

A fusion that supports missing modalities (``FUSIONS`` metadata ``supports_missing``) masks an absent
modality's features through the batch's ``present`` flags; the encoders do not look at them. So the
same patients under ``C`` different masks need the encoders only once: their features are repeated
``C`` times and the fusion runs on ``C × B`` rows, each row masked as that mask says — exactly what
the model does at inference for a patient who lacks those modalities. Modality Shapley values
(:mod:`~lightning_fusion.explain.shapley`) and the robustness curve
(:mod:`~lightning_fusion.evaluation.robustness`) are built on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lightning_fusion.explain.inputs import inspecting, model_inputs
from lightning_fusion.fusion import FUSIONS
from lightning_fusion.fusion.masking import as_present_dict


def check_masking(module: Any, purpose: str) -> None:
    """Raise unless ``module``'s fusion masks absent modalities (``supports_missing``); ``purpose`` names what needs it.

    Raises:
        ValueError: a one-modality model, or a fusion that cannot mask (the message names it and those that can).
    """
    if len(module.modalities) < 2:
        raise ValueError(f"{purpose} need a model with >= 2 modalities; this one has {list(module.modalities)}")
    fusion = module.experiment_config.model.fusion
    if not fusion.metadata.get("supports_missing", False):
        raise ValueError(
            f"{purpose} need a fusion that masks absent modalities; model.fusion {fusion.name!r} does not "
            f"(one of {', '.join(FUSIONS.names(supports_missing=True))} does)"
        )


def presence_matrix(module: Any, inputs: Mapping[str, Any], batch_size: int) -> torch.Tensor:
    """``(B, M)`` bool: the batch's ``present`` flags in ``module.modalities`` order (unnamed: present)."""
    given = inputs.get("present") or {}
    device = next(module.parameters()).device
    columns = [
        torch.as_tensor(given[m], device=device).bool()
        if m in given
        else torch.ones(batch_size, dtype=torch.bool, device=device)
        for m in module.modalities
    ]
    return torch.stack(columns, dim=1)


def masked_probabilities(module: Any, batch: Mapping[str, Any], masks: torch.Tensor) -> torch.Tensor:
    """Class probabilities of ``batch`` under each of ``C`` presence masks.

    Args:
        module: a trained :class:`~lightning_fusion.lit.FusionLitModule` whose fusion masks (checked).
        batch: the model's modalities as a loader yields them (its own ``present`` is ignored: ``masks`` says).
        masks: ``(C, B, M)`` bool, column ``i`` for ``module.modalities[i]``; every row needs one modality.

    Returns ``(C, B, K)`` float probabilities, in eval mode (training flags restored), without gradients.
    """
    check_masking(module, "masked predictions")
    count, batch_size, _ = masks.shape
    model = module.model
    with inspecting(module), torch.no_grad():
        inputs = model_inputs(module, batch)
        inputs.pop("present", None)
        masks = masks.to(next(module.parameters()).device)
        flat = as_present_dict(masks.reshape(count * batch_size, -1), module.modalities)
        if model.merge_inputs is None and not model.fusion.conditions_encoders:
            finished = module.finish_batch(inputs)
            features = model.fusion.encode(model.encoders, finished)
            repeated = {m: value.repeat(count, *([1] * (value.ndim - 1))) for m, value in features.items()}
            scores = model.fusion(repeated, flat)
        else:  # the encoders see the other modalities: the whole model on the repeated inputs
            repeated = {m: value.repeat(count, *([1] * (value.ndim - 1))) for m, value in inputs.items()}
            scores = module(repeated | {"present": flat})
    return scores.float().softmax(dim=1).reshape(count, batch_size, -1)
