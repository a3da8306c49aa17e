"""Integrated Gradients (Sundararajan et al., 2017) of a tabular input: ``(B, F)`` attributions per feature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from captum.attr import IntegratedGradients

from lightning_fusion.explain.inputs import (
    ModalityFunction,
    Target,
    explanation_of,
    input_kind,
    inspecting,
    model_inputs,
    target_indices,
)

if TYPE_CHECKING:
    from lightning_fusion.lit import FusionLitModule


# --------------------------------------------------------------------------------------------------
# Integrated Gradients
# --------------------------------------------------------------------------------------------------
def tabular_attributions(
    module: FusionLitModule,
    batch: Mapping[str, Any],
    modality: str,
    target: Target = None,
    baseline: Literal["zeros"] | np.ndarray | torch.Tensor = "zeros",
    output: Literal["logit", "probability"] = "logit",
    n_steps: int = 50,
    internal_batch_size: int | None = None,
    return_delta: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``(B, F)`` Integrated Gradients of tabular ``modality``: each feature's share of the target's score.

    Completeness: a sample's attributions sum to ``f(x) - f(baseline)`` for the target output ``f``
    (the ``logit``, a log-probability for ``late_weighted`` fusion, or the softmax ``probability``),
    up to the integration error returned by ``return_delta=True`` (captum's convergence delta, ``(B,)``).
    The samples' other modalities stay fixed (:class:`ModalityFunction`).

    Args:
        target: class index for every sample, one per sample, or ``None`` for each sample's predicted class.
        baseline: ``"zeros"``, the all-zero row: with the default tabular preprocessing (impute, then
            z-score fitted on the training patients) that is the training mean of every feature, so
            attributions explain the difference from an average training patient. Or an array ``(F,)``
            or ``(B, F)`` in the model's (preprocessed) input space.
        n_steps, internal_batch_size: captum's integration steps and rows per forward pass.

    Feature names are the caller's (e.g. the data module's tabular preprocessor ``output_columns``).
    A signal modality ``(B, leads, samples)`` works the same way (attributions of the same shape); with
    per-lead normalisation the zero baseline is the training mean of each lead.
    """
    kind = input_kind(module, modality, batch)
    method = explanation_of(kind)
    if method != "integrated_gradients":
        raise ValueError(
            f"tabular_attributions explains tabular (vector) and signal modalities; {modality!r} is a {kind} modality"
            + (" (use grad_cam)" if method == "grad_cam" else "")
        )
    if output not in ("logit", "probability"):
        raise ValueError(f"output must be 'logit' or 'probability', got {output!r}")
    with inspecting(module):
        inputs = model_inputs(module, batch)
        values = inputs[modality].float()
        if isinstance(baseline, str):
            if baseline != "zeros":
                raise ValueError(f"baseline must be 'zeros' or an array, got {baseline!r}")
            start = torch.zeros_like(values)
        else:
            start = torch.as_tensor(np.asarray(baseline) if not isinstance(baseline, torch.Tensor) else baseline)
            start = start.to(values).expand_as(values).clone()
        function = ModalityFunction(module, inputs, modality)

        def forward(x: torch.Tensor, *fixed: torch.Tensor) -> torch.Tensor:
            scores = function(x, *fixed).float()
            return scores.softmax(dim=1) if output == "probability" else scores

        with torch.no_grad():
            targets = target_indices(target, forward(values))
        attributions, delta = IntegratedGradients(forward).attribute(
            values,
            baselines=start,
            target=targets,
            additional_forward_args=function.fixed or None,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    result = attributions.detach().cpu().numpy().astype(np.float32)
    return (result, delta.detach().cpu().numpy()) if return_delta else result
