"""The demo data layouts' registry: a leaf module, so its entries register without importing their package."""

from lightning_fusion.registry import Registry

DEMO_LAYOUTS: Registry = Registry("demo data layout")

__all__ = ["DEMO_LAYOUTS"]
