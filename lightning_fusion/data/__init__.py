"""Data: readers per dataset layout → a :class:`~lightning_fusion.data.cohort.Cohort` → batches."""
