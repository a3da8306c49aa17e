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

from lightning_fusion.data.kinds import image, signal, vector  # noqa: F401  (register the built-ins)
from lightning_fusion.data.kinds.base import ModalityKind
from lightning_fusion.data.kinds.registry import KINDS, kind_of

__all__ = ["KINDS", "ModalityKind", "kind_of"]
