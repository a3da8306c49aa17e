"""The encoders' registry: a leaf module, so its entries register without importing their package."""

from lightning_fusion.registry import Registry

ENCODERS: Registry = Registry("encoder")

__all__ = ["ENCODERS"]
