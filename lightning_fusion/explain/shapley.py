"""Exact modality Shapley values per patient, for a fusion that masks absent modalities.

The game: the players are the model's ``M`` modalities; ``v(S)`` is the explained class's probability
when only the modalities in ``S`` are present, the others masked exactly as a missing modality is
masked at inference (``present`` false: the fusion drops its features). Every subset is one row of one
batched pass (:func:`~lightning_fusion.explain.masked.masked_probabilities`: the encoders once, the
fusion on ``2^M × B`` rows). A modality the patient lacks is already masked, so adding it changes
nothing: its Shapley value is 0 and the patient's present modalities share the whole difference.

``v(∅)``, the probability with nothing present: no fusion here predicts from no modality
(:func:`~lightning_fusion.fusion.masking.presence_mask` refuses such a sample), so it is the explained
class's prior in the training split (recovered from the checkpoint's balanced class weights
``n / (K · n_k)``, which every run stores). The values of a patient then sum to ``v(all) − v(∅)``: how
far its modalities moved the class's probability from the training prevalence (efficiency).

The explained class is the one the drop-one deltas explain (:mod:`~lightning_fusion.explain.contributions`):
the predicted class unless given.

:func:`shapley_values` is the pure formula over any value table: ``φ_i = Σ_{S ⊆ N∖{i}} |S|! (M−|S|−1)! / M!
· (v(S ∪ {i}) − v(S))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_fusion.evaluation.shapley import shapley_values as subset_model_shapley
from lightning_fusion.explain.inputs import Target, model_inputs, target_indices
from lightning_fusion.explain.masked import check_masking, masked_probabilities, presence_matrix


# --------------------------------------------------------------------------------------------------
# The formula
# --------------------------------------------------------------------------------------------------
def subset_masks(players: int) -> np.ndarray:
    """``(2^M, M)`` bool: row ``s`` holds player ``i`` when bit ``i`` of ``s`` is set (row 0: ∅, last row: all)."""
    if players < 1:
        raise ValueError(f"a game needs at least one player, got {players}")
    rows = np.arange(2**players)[:, None]
    return (rows >> np.arange(players)[None, :]) & 1 == 1


def shapley_values(values: np.ndarray) -> np.ndarray:
    """Exact Shapley values of every game in ``values`` (the formula of
    :func:`lightning_fusion.evaluation.shapley.shapley_values`, on a value table).

    Args:
        values: ``(..., 2^M)`` ``v(S)`` with ``S`` indexed as :func:`subset_masks` (bit ``i``: player ``i``).

    Returns ``(..., M)``: per game, each player's value; they sum to ``v(all) − v(∅)``.
    """
    values = np.asarray(values, dtype=np.float64)
    size = values.shape[-1]
    players = size.bit_length() - 1
    if size < 2 or 2**players != size:
        raise ValueError(f"a value table needs 2^M entries on its last axis (M >= 1), got {size}")
    names = [str(i) for i in range(players)]
    scores = {
        frozenset(names[i] for i in np.flatnonzero(mask)): values[..., row]
        for row, mask in enumerate(subset_masks(players))
        if mask.any()
    }
    by_player = subset_model_shapley(scores, names, empty=values[..., 0])
    return np.stack([np.asarray(by_player[name], dtype=np.float64) for name in names], axis=-1)


# --------------------------------------------------------------------------------------------------
# The game of a trained masking fusion
# --------------------------------------------------------------------------------------------------
@dataclass
class ModalityShapley:
    """Per-patient modality Shapley values of the explained class's probability.

    Attributes:
        target: ``(B,)`` the explained class per patient.
        values: modality → ``(B,)`` its Shapley value (0 for a modality the patient lacks).
        full: ``(B,)`` ``v(all)``: the probability with the patient's modalities as given.
        baseline: ``(B,)`` ``v(∅)``: the explained class's prior in the training split.
        subsets: ``(B, 2^M)`` the whole value table, columns indexed as :func:`subset_masks`.
    """

    target: np.ndarray
    values: dict[str, np.ndarray]
    full: np.ndarray
    baseline: np.ndarray
    subsets: np.ndarray


def training_prior(module: Any) -> np.ndarray:
    """``(K,)`` the class frequencies of the training split, from the balanced weights ``n / (K · n_k)`` a run keeps.

    Raises:
        ValueError: a module without class weights (built outside ``fit``).
    """
    weights = module.hparams.get("class_weights")
    if not weights:
        raise ValueError(
            "modality Shapley values need the training split's class frequencies for v(no modality); this "
            "model was built without class weights (fit stores them in every checkpoint)"
        )
    inverse = 1.0 / np.asarray(weights, dtype=np.float64)
    return inverse / inverse.sum()


def modality_shapley(module: Any, batch: Mapping[str, Any], target: Target = None) -> ModalityShapley:
    """Exact Shapley values of each modality for each patient of ``batch`` (see the module docstring).

    Raises:
        ValueError: a one-modality model, a fusion that cannot mask absent modalities (named), or a model
            without the training class frequencies.
    """
    check_masking(module, "modality Shapley values")
    prior = training_prior(module)
    modalities = list(module.modalities)
    inputs = model_inputs(module, batch)
    batch_size = len(inputs[modalities[0]])
    present = presence_matrix(module, inputs, batch_size)  # (B, M)
    subsets = torch.as_tensor(subset_masks(len(modalities)), device=present.device)  # (2^M, M)
    masks = subsets[:, None, :] & present[None, :, :]  # (2^M, B, M): a lacking modality stays masked
    empty = ~masks.any(dim=2)
    # no fusion predicts from nothing: such rows run with the patient's own mask and are replaced by the prior
    masks = torch.where(empty[..., None], present[None].expand_as(masks), masks)
    probs = masked_probabilities(module, inputs, masks)  # (2^M, B, K)
    targets = target_indices(target, probs[-1])
    rows = torch.arange(batch_size, device=probs.device)
    table = probs[:, rows, targets].T.double().cpu().numpy()  # (B, 2^M)
    baseline = prior[targets.cpu().numpy()]
    table[empty.T.cpu().numpy()] = np.broadcast_to(baseline[:, None], table.shape)[empty.T.cpu().numpy()]
    phi = shapley_values(table)
    return ModalityShapley(
        target=targets.cpu().numpy(),
        values={m: phi[:, i] for i, m in enumerate(modalities)},
        full=table[:, -1],
        baseline=baseline,
        subsets=table,
    )
