"""Image augmentation (albumentations) for training only, on ``(H, W, C)`` arrays of any channel count.

Medically safe defaults: small rotations and shifts, multiplicative brightness, no flips (left/right
and anterior/inferior positions carry meaning in perfusion maps and chest images).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations pings PyPI on import otherwise

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_fusion.config import AugmentConfig  # noqa: E402


def build_augmentation(options: AugmentConfig) -> A.Compose | None:
    """The training augmentation pipeline, or ``None`` when disabled.

    Brightness is multiplicative (``MultiplicativeNoise`` with one factor per image), like Keras'
    ``brightness_range=(0.8, 1.2)`` that the reference studies used; it works on ``uint8`` arrays and
    saturates at 255 as a brighter exposure would.
    """
    if not options.enabled:
        return None
    shift = options.shift_limit
    return A.Compose(
        [
            A.Affine(
                rotate=(-options.rotate_limit, options.rotate_limit),
                translate_percent={"x": (-shift, shift), "y": (-shift, shift)},
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=options.p,
            ),
            A.MultiplicativeNoise(
                multiplier=tuple(options.brightness), per_channel=False, elementwise=False, p=options.p
            ),
        ]
    )


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` ``uint8`` → ``(C, H, W)`` ``float32`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
