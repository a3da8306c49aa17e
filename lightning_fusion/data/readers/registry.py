"""The dataset readers' registry: a leaf module, so its entries register without importing their package."""

from lightning_fusion.registry import Registry

READERS: Registry = Registry("dataset reader")

__all__ = ["READERS"]
