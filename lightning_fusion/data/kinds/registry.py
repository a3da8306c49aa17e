"""The modality kinds' registry: a leaf module, so the kinds register without importing their package."""

from __future__ import annotations

from typing import Any

from lightning_fusion.registry import Registry

KINDS: Registry = Registry("modality kind")  # name -> ModalityKind instance (data/kinds/base.py)


def kind_of(modality: Any) -> Any:
    """The :class:`ModalityKind` of ``modality``: a kind name, or anything with a ``kind`` attribute."""
    return KINDS.get(modality if isinstance(modality, str) else modality.kind)


__all__ = ["KINDS", "kind_of"]
