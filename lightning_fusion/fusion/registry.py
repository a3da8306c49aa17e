"""The fusion strategies' registry: a leaf module, so its entries register without importing their package."""

from lightning_fusion.registry import Registry

FUSIONS: Registry = Registry("fusion strategy")

__all__ = ["FUSIONS"]
