"""Dataset readers: one per data layout, each turning a folder into a :class:`Cohort`.

Readers register in :data:`READERS` with ``config`` (their options dataclass) and are built as
``cls(options)``; ``reader.prepare(root)`` makes data that the package generates (once, on one
process), ``reader.read(root)`` returns the cohort.
"""

from lightning_fusion.data.readers import cxr_ct_cough, ecg, image_folders, medmnist, mpi, ptbxl  # noqa: E402,F401  (register the built-ins)
from lightning_fusion.data.readers.registry import READERS

__all__ = ["READERS"]
