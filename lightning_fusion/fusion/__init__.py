"""Fusion strategies: combine per-modality features into class logits.

Strategies register in :data:`FUSIONS` with metadata: ``level`` (``input``, ``intermediate`` or
``decision``), ``min_modalities``, ``supports_missing`` and ``config`` (the dataclass of their
options, or none). An intermediate strategy is built as ``cls(feature_dims, num_classes, head,
options)`` and called as ``fusion(features, present)`` with ``features[modality]: (B, D_m)``.
"""

from lightning_fusion.registry import Registry

FUSIONS: Registry = Registry("fusion strategy")

from lightning_fusion.fusion import concat  # noqa: E402,F401  (register the built-ins)

__all__ = ["FUSIONS"]
