"""Modality encoders: each maps one modality's batch tensor to a feature vector ``(B, out_features)``.

Encoders register in :data:`ENCODERS` with ``input_kind`` (which modality kind they accept:
``image`` ``(B, C, H, W)``, ``vector`` ``(B, F)``, ``signal`` ``(B, L, T)``) and ``config`` (the
dataclass of their options). Every encoder is built as ``cls(input_shape, options)`` and exposes
``out_features``.
"""

from lightning_fusion.encoders import (  # noqa: E402,F401  (register the built-ins)
    image,
    inception1d,
    signal,
    tabular,
    xresnet1d,
)
from lightning_fusion.encoders.registry import ENCODERS

__all__ = ["ENCODERS"]
