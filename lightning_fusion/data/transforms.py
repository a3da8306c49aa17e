"""Image augmentation (albumentations) for training only, on ``(H, W, C)`` arrays of any channel count.

Medically safe defaults: small rotations and shifts, multiplicative brightness, no flips (left/right
and anterior/inferior positions carry meaning in perfusion maps and chest images). The opt-in
``radiograph`` policy adds a random resized crop, contrast and gamma (1- or 3-channel images).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations pings PyPI on import otherwise

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_fusion.config import AugmentConfig  # noqa: E402


def build_augmentation(options: AugmentConfig, image_size: int | None = None) -> A.Compose | None:
    """The training augmentation pipeline, or ``None`` when disabled.

    The ``radiograph`` policy first crops a random square of ``crop_scale`` of the area and resizes
    it back to ``image_size`` (``RandomResizedCrop``), and ends with contrast around the image mean
    (``ColorJitter``'s, as torchvision's) and gamma (``RandomGamma``), each with probability ``p``.

    Brightness is multiplicative (``MultiplicativeNoise`` with one factor per image), like Keras'
    ``brightness_range=(0.8, 1.2)`` that the reference studies used; it works on ``uint8`` arrays and
    saturates at 255 as a brighter exposure would.
    """
    if not options.enabled:
        return None
    shift = options.shift_limit
    radiograph = options.policy == "radiograph"
    if radiograph and image_size is None:
        raise ValueError("the radiograph policy's random resized crop needs the image size")
    crop, intensity = [], []
    if radiograph:
        crop = [
            A.RandomResizedCrop(
                size=(image_size, image_size), scale=tuple(options.crop_scale), ratio=(1, 1), p=options.p
            )
        ]
        low, high = options.gamma
        intensity = [
            A.ColorJitter(brightness=0, contrast=tuple(options.contrast), saturation=0, hue=0, p=options.p),
            A.RandomGamma(gamma_limit=(100 * low, 100 * high), p=options.p),
        ]
    return A.Compose(
        crop
        + [
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
        + intensity
    )


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` ``uint8`` → ``(C, H, W)`` ``float32`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
