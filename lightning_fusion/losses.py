"""Training losses by name (``optim.loss``): LOSSES maps a name to ``loss(logits, target, weight, options)``.

Every loss takes class logits ``(B, K)``, integer targets ``(B,)``, optional per-class weights ``(K,)``
(inverse training frequency, ``optim.class_weights``) and ``optim.label_smoothing``, and averages as
torch's ``cross_entropy`` does (a weighted mean: the sum over samples divided by the sum of their
classes' weights).

* ``cross_entropy``: torch's ``F.cross_entropy``.
* ``focal``: the focal loss of Lin et al. (2017), each class's ``-log p`` scaled by ``(1 - p) ** focal_gamma``
  so confidently right samples count less; the class weights play the part of its ``alpha``. At
  ``focal_gamma: 0`` it is ``cross_entropy`` exactly (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lightning_fusion.registry import Registry

LOSSES: Registry[Callable[..., torch.Tensor]] = Registry("loss")


@LOSSES.register("cross_entropy")
def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, optim: Any) -> torch.Tensor:
    return F.cross_entropy(logits, target, weight=weight, label_smoothing=optim.label_smoothing)


@LOSSES.register("focal")
def focal(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, optim: Any) -> torch.Tensor:
    log_probs = logits.log_softmax(dim=1)
    focused = (1 - log_probs.exp()).pow(optim.focal_gamma) * log_probs  # (B, K); gamma 0: log_probs
    weights = weight if weight is not None else torch.ones(logits.shape[1], device=logits.device)
    total = weights[target].sum()
    true_class = F.nll_loss(focused, target, weight=weights, reduction="sum") / total
    if optim.label_smoothing == 0:
        return true_class
    every_class = -(focused * weights).sum() / total  # torch's smoothing term: every class, weighted
    smoothing = optim.label_smoothing
    return (1 - smoothing) * true_class + smoothing / logits.shape[1] * every_class


def training_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, optim: Any) -> torch.Tensor:
    """``optim.loss`` of ``logits`` ``(B, K)`` against ``target`` ``(B,)``."""
    return LOSSES.get(optim.loss)(logits, target, weight, optim)
