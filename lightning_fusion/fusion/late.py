"""Late (decision-level) fusion: one classifier per modality, class probabilities averaged with weights.

Level: decision. Accepts any set of two or more modalities (``min_modalities`` 2) and supports
missing modalities: any sample needs only one of them present.

Each modality has its own classifier head (the configured ``model.head`` on that modality's
features alone), giving per-modality class probabilities ``p_m = softmax(head_m(f_m))``. They are
combined as a weighted average ``p = Σ_m w_m p_m`` with ``w_m ≥ 0``, ``Σ_m w_m = 1``:

- ``weights: learned`` (default): ``w = softmax(a)`` of one learned logit per modality, trained
  end to end with the rest of the model (all equal at the start);
- ``weights: fixed`` with ``fixed_weights: {modality: w}``: the given weights, covering every
  modality of the model, each ≥ 0 and not all 0 (normalised to sum 1).

In a sample where a modality is absent its weight is 0 and the present ones are renormalised (a
sample whose present modalities all have fixed weight 0 cannot be predicted: a clear error).

**The output is log-probabilities**, ``log Σ_m w_m p_m``, computed stably as a ``logsumexp`` in
float32, and it is returned in place of logits: the cross-entropy of the LightningModule
(``F.cross_entropy(logits)``) applies ``log_softmax``, which leaves already-normalised
log-probabilities unchanged, so the loss is exactly the negative log-likelihood of the mixture, and
``softmax`` of the output is the mixture's probabilities (what the metrics use).

This is the weighted sum rule of classifier combination (Kittler et al., 1998, "On combining
classifiers"), the usual decision-level fusion of per-modality models. Weights *tuned on the
validation set* are a separate procedure (a later ``compare`` command that fits unimodal models and
searches weights on validation predictions); ``fixed_weights`` is how such tuned weights are applied.
:meth:`LateWeightedFusion.modality_weights` gives the current weights for logging;
``last_weights`` holds the ``(B, M)`` per-sample weights (after masking) of the last forward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lightning_fusion.fusion.base import Fusion, ModalityWeights
from lightning_fusion.fusion.head import build_head
from lightning_fusion.fusion.registry import FUSIONS
from lightning_fusion.registry import suggest

WEIGHT_MODES = ("learned", "fixed")


@dataclass
class LateWeightedFusionConfig:
    """``weights``: ``learned`` (softmax of learned logits) or ``fixed`` (``fixed_weights``, modality → w ≥ 0)."""

    weights: str = "learned"
    fixed_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_MODES:
            raise ValueError(suggest(self.weights, list(WEIGHT_MODES), "late-fusion weights mode"))
        if self.weights == "learned":
            if self.fixed_weights is not None:
                raise ValueError("fixed_weights are only used with weights: fixed (set weights: fixed, or drop them)")
            return
        if not self.fixed_weights:
            raise ValueError("weights: fixed needs fixed_weights: {modality: weight, ...} for every modality")
        bad = {m: w for m, w in self.fixed_weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"fixed_weights must be finite and >= 0, got {bad}")
        if sum(self.fixed_weights.values()) <= 0:
            raise ValueError(f"fixed_weights must not all be 0, got {self.fixed_weights}")


@FUSIONS.register(
    "late_weighted", level="decision", min_modalities=2, supports_missing=True, config=LateWeightedFusionConfig
)
class LateWeightedFusion(Fusion):
    """``{m: (B, D_m)}`` (+ presence mask) → ``(B, num_classes)`` log-probabilities of the weighted mixture."""

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        num_classes: int,
        head,
        options: LateWeightedFusionConfig | None = None,
    ) -> None:
        super().__init__(feature_dims, num_classes, head, options)
        options = self.options
        self.heads = nn.ModuleDict(
            {m: build_head(feature_dims[m], head.widths, head.dropouts, num_classes) for m in self.modalities}
        )
        self.mode = options.weights
        if self.mode == "learned":
            self.weight_logits = nn.Parameter(torch.zeros(len(self.modalities)))
        else:
            given = dict(options.fixed_weights or {})
            unknown = sorted(set(given) - set(self.modalities))
            if unknown:
                raise ValueError(
                    f"late_weighted fixed_weights: {suggest(unknown[0], self.modalities, 'modality')} "
                    "(the model's modalities)"
                )
            missing = [m for m in self.modalities if m not in given]
            if missing:
                raise ValueError(
                    f"late_weighted fixed_weights must give a weight to every modality of the model; missing {missing}"
                )
            weights = torch.tensor([float(given[m]) for m in self.modalities])
            if weights.sum() <= 0:
                raise ValueError(f"late_weighted fixed_weights must not all be 0, got {given}")
            self.register_buffer("fixed_log_weights", (weights / weights.sum()).log())  # log 0 = -inf
        self.last_weights: torch.Tensor | None = None

    def _weight_scores(self) -> torch.Tensor:
        """``(M,)`` unnormalised log-weights (the learned logits, or the log of the fixed weights)."""
        return self.weight_logits if self.mode == "learned" else self.fixed_log_weights

    def overall_weights(self) -> dict[str, float]:
        """The weight of each modality when all are present (sums to 1), logged with the run."""
        weights = self._weight_scores().detach().float().softmax(dim=0)
        return {m: float(w) for m, w in zip(self.modalities, weights, strict=True)}

    def forward(
        self, features: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        mask = self.presence(features, present)  # (B, M)
        batch_size = mask.shape[0]
        log_probs = torch.stack(
            [self.heads[m](features[m]).float().log_softmax(dim=-1) for m in self.modalities], dim=1
        )  # (B, M, K)
        scores = self._weight_scores().float().expand(batch_size, -1).masked_fill(~mask, float("-inf"))
        unusable = torch.isinf(scores).all(dim=1)
        if bool(unusable.any()):
            samples = unusable.nonzero().flatten().tolist()[:10]
            raise ValueError(
                f"late_weighted fusion: sample(s) {samples} have only modalities with fixed weight 0 present "
                f"(weights {self.overall_weights()}); give those modalities a weight > 0"
            )
        log_weights = scores.log_softmax(dim=1)  # absent (or weight-0) modalities: -inf, the rest renormalised
        self.last_weights = log_weights.detach().exp()
        terms = torch.where(mask.unsqueeze(-1), log_weights.unsqueeze(-1) + log_probs, float("-inf"))
        return terms.logsumexp(dim=1)  # log Σ_m w_m p_m, (B, K)

    def modality_weights(self) -> ModalityWeights | None:
        if self.last_weights is None:
            return None
        source = "late_weighted mixture weights (renormalised over present modalities)"
        return ModalityWeights(self.last_weights, self.modalities, source)
