"""Optuna ablations: study files in ``ablations/`` and ``python -m lightning_fusion.sweep``."""
