"""lightning_fusion: multimodal medical classification on PyTorch Lightning, done honestly."""

__version__ = "0.1.0"
