"""Synthetic demo data for lightning_fusion."""

from lightning_fusion.demo.mpi_cohort import CLASS_FOLDERS, VIEW_NAMES, generate_mpi_cohort

__all__ = ["CLASS_FOLDERS", "VIEW_NAMES", "generate_mpi_cohort"]
