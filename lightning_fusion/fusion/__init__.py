"""Fusion strategies: combine per-modality features into class scores.

Strategies register in :data:`FUSIONS` with metadata: ``level`` (``input``, ``intermediate`` or
``decision``), ``min_modalities``, ``supports_missing`` (whether a sample may lack some of the
model's modalities) and ``config`` (the dataclass of their options, or none). A strategy is built as
``cls(feature_dims, num_classes, head, options)`` and called as ``fusion(features, present)`` with
``features[modality]: (B, D_m)`` and ``present`` either ``None`` (every modality present) or
``{modality: (B,) bool}`` (see :mod:`lightning_fusion.fusion.masking`). It returns ``(B, K)`` scores
for ``F.cross_entropy``: logits, or log-probabilities for decision-level fusion (``late_weighted``).

Built-ins: ``concat`` (intermediate, the unimodal baseline with one modality; no missing modalities),
``gated`` (intermediate, softmax gate over modalities), ``attention`` (intermediate, self-attention
over modality tokens), ``lmf`` (intermediate, low-rank tensor fusion) and ``late_weighted`` (decision,
weighted average of per-modality classifiers), and ``film``, ``daft`` and ``channel_attention`` (intermediate: the other
modalities scale and shift an image encoder's feature maps; registered with ``conditions``, built
with ``encoders=`` as well, see :mod:`lightning_fusion.fusion.conditioning`).
"""

from lightning_fusion.fusion import attention, concat, conditioning, early, gated, late, lmf  # noqa: E402,F401  (register the built-ins)
from lightning_fusion.fusion.registry import FUSIONS

__all__ = ["FUSIONS"]
