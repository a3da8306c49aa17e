"""Synthetic datasets in the real layouts the readers expect, with a learnable class signal.

Each layout's writer registers in :data:`DEMO_LAYOUTS` as a function
``write(root, patients=..., seed=...) -> Path`` with metadata ``reader`` (the reader that reads it)
and ``description``. ``python -m lightning_fusion.make_demo_data <layout> <dir>`` calls them.
"""

from lightning_fusion.demo.mpi_cohort import CLASS_FOLDERS, VIEW_NAMES, generate_mpi_cohort  # noqa: E402
from lightning_fusion.demo.registry import DEMO_LAYOUTS

__all__ = ["CLASS_FOLDERS", "DEMO_LAYOUTS", "VIEW_NAMES", "generate_mpi_cohort"]
from lightning_fusion.demo import cxr_ct_cough, ecg, image_folders, medmnist, ptbxl  # noqa: E402,F401  (register the other layouts' writers)
