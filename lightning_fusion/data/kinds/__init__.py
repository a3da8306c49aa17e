"""Modality kinds: one :class:`~lightning_fusion.data.kinds.base.ModalityKind` object per kind, in :data:`KINDS`.

A modality source's ``kind`` (and a model spec's ``"kind"``) names an entry here; code that acts
differently per kind asks the kind instead of branching on its name::

    kind = kind_of(source)            # or KINDS.get(spec["kind"])
    preprocessor, train = kind.fit(source, train_ids, train_labels, data_config)
    row_tensor = kind.to_tensor(train[0])

Built-ins: ``image`` (:mod:`~lightning_fusion.data.kinds.image`), ``signal``
(:mod:`~lightning_fusion.data.kinds.signal`) and ``vector`` (:mod:`~lightning_fusion.data.kinds.vector`).
A new kind is one module with a :class:`ModalityKind` subclass and its registry line,
``KINDS.register("volume")(VolumeKind())``, plus an encoder registered with ``input_kind="volume"``.
"""

from __future__ import annotations

from typing import Any

from lightning_fusion.data.kinds.base import ModalityKind
from lightning_fusion.registry import Registry

KINDS: Registry[ModalityKind] = Registry("modality kind")


def kind_of(modality: Any) -> ModalityKind:
    """The kind of ``modality``: a kind name, or anything with a ``kind`` attribute (a source, a spec, an upload)."""
    return KINDS.get(modality if isinstance(modality, str) else modality.kind)


from lightning_fusion.data.kinds import image, signal, vector  # noqa: E402,F401  (register the built-ins)

__all__ = ["KINDS", "ModalityKind", "kind_of"]
