"""Whole-batch image conversion and augmentation on the training device (the ``device`` pipeline).

The ``per_sample`` pipeline converts and augments each image in the loader (albumentations, on the
CPU, :mod:`lightning_fusion.data.transforms`). The ``device`` pipeline hands over whole ``uint8``
batches and does the same here, on whatever device the batch is on, in a few tensor operations for
the batch, so a GPU is not starved by per-image Python work. Pure torch (``affine_grid`` and
``grid_sample``): no extra package, and the CPU runs exactly the code a GPU runs.

The policy is :class:`~lightning_fusion.config.AugmentConfig`'s, as in the per-sample pipeline:
with probability ``p`` per image, a rotation of ±``rotate_limit`` degrees about the image centre and
a shift of ±``shift_limit`` of the width and height (bilinear, zero fill); then, with probability
``p`` per image, one brightness factor in ``brightness`` for the whole image, saturating at white.
No flips. The ``radiograph`` policy first crops a random square of ``crop_scale`` of the area (resized
back, bilinear) and ends with contrast around each image's mean and a gamma, each with probability
``p``. Each image draws its own parameters. Differences from the per-sample pipeline: values
stay ``float32`` between the steps (albumentations rounds to ``uint8`` after each), and bilinear
weights are exact rather than OpenCV's 1/32-pixel fixed point.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_fusion.config import AugmentConfig


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` ``uint8`` → ``float32`` in [0, 1]: the same values as the per-sample ``image_to_tensor``."""
    return images.float().div_(255.0)


class BatchAugment:
    """The training augmentation of :class:`AugmentConfig`, for a ``(B, C, H, W)`` float batch in [0, 1].

    Draws from torch's global random generator of the batch's device (seeded by
    ``lightning.seed_everything``); never synchronises with the host.
    """

    def __init__(self, options: AugmentConfig) -> None:
        self.options = options

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        options, count, device = self.options, images.shape[0], images.device
        if count == 0:
            return images
        radiograph = options.policy == "radiograph"
        with torch.autocast(device_type=device.type, enabled=False):  # geometry in float32, also under bf16
            images = images.float()
            if radiograph:
                images = self._choose(random_resized_crop(images, options.crop_scale), images)
            if options.rotate_limit > 0 or options.shift_limit > 0:
                angles = _uniform(count, -options.rotate_limit, options.rotate_limit, device)
                shifts = _uniform((count, 2), -options.shift_limit, options.shift_limit, device)
                warped = affine_warp(images, angles, shifts)
                chosen = torch.rand(count, device=device) < options.p
                images = torch.where(chosen.view(-1, 1, 1, 1), warped, images)  # the others stay bit for bit
            low, high = options.brightness
            if (low, high) != (1.0, 1.0):
                factors = _uniform(count, low, high, device)
                factors = torch.where(torch.rand(count, device=device) < options.p, factors, torch.ones_like(factors))
                images = (images * factors.view(-1, 1, 1, 1)).clamp_(max=1.0)
            if radiograph:
                contrast = _uniform((count, 1, 1, 1), *options.contrast, device)
                mean = images.mean(dim=(1, 2, 3), keepdim=True)
                images = self._choose(((images - mean) * contrast + mean).clamp(0.0, 1.0), images)
                gamma = _uniform((count, 1, 1, 1), *options.gamma, device)
                images = self._choose(images.clamp(min=0.0).pow(gamma), images)
        return images

    def _choose(self, changed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``changed`` for a random ``p`` of the images, the others bit for bit as they were."""
        chosen = torch.rand(images.shape[0], device=images.device) < self.options.p
        return torch.where(chosen.view(-1, 1, 1, 1), changed, images)


def random_resized_crop(images: torch.Tensor, crop_scale: tuple[float, float]) -> torch.Tensor:
    """A square crop of each image, of a random fraction in ``crop_scale`` of its area at a random
    position inside it, resized back to the image size (bilinear)."""
    count = images.shape[0]
    side = _uniform(count, *crop_scale, images.device).sqrt()  # of the width and height
    theta = torch.zeros(count, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, :, 2] = (1.0 - side).view(-1, 1) * _uniform((count, 2), -1.0, 1.0, images.device)  # stays inside
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def affine_warp(images: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotate each image by ``angles`` (degrees, counter-clockwise as OpenCV and albumentations draw it)
    about its centre ``((W - 1) / 2, (H - 1) / 2)``, then shift it by ``shifts`` ``(B, 2)`` (fractions of
    the width and height; positive is right and down). Bilinear, zero outside the image.

    ``cv2.warpAffine(image, cv2.getRotationMatrix2D(centre, angle, 1) + [[0, 0, dx], [0, 0, dy]])``
    with ``dx = shift_x × W``, ``dy = shift_y × H``, up to OpenCV's fixed-point rounding.
    """
    count, _, height, width = images.shape
    radians = angles.to(torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    dx, dy = shifts[:, 0].float() * width, shifts[:, 1].float() * height
    # affine_grid maps each output position to where it samples the input, in coordinates where
    # [-1, 1] spans the image (align_corners=False: the centre is 0, a pixel is 2/W wide). OpenCV's
    # forward map is out = R (in - c) + c + d with R = [[cos, sin], [-sin, cos]]; inverted and scaled
    # by D = diag(W/2, H/2): in_n = D⁻¹ Rᵀ D out_n - D⁻¹ Rᵀ d.
    theta = torch.empty(count, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * (height / width)
    theta[:, 1, 0] = sin * (width / height)
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = -(cos * dx - sin * dy) * (2.0 / width)
    theta[:, 1, 2] = -(sin * dx + cos * dy) * (2.0 / height)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _uniform(shape: int | tuple[int, ...], low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, device=device).uniform_(low, high)
