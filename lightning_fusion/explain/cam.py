"""Grad-CAM / Grad-CAM++ heat maps of an image branch (Selvaraju et al., 2017) and their overlays on each view.

Any model whose image encoder is a timm CNN (the image-only CNN or any fusion) is explained at its
backbone's last feature map (:func:`cam_target_layer`); :func:`view_overlays` lays a ``(B, H, W)`` heat
map over each view of a multi-view stack (9 channels = 3 RGB views) and :func:`save_png` writes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from lightning_fusion.explain.inputs import (
    ModalityFunction,
    Target,
    explanation_of,
    input_kind,
    inspecting,
    model_inputs,
    target_indices,
)

if TYPE_CHECKING:
    from lightning_fusion.lit import FusionLitModule

CAM_METHODS: dict[str, type] = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}

__all__ = ["CAM_METHODS", "cam_target_layer", "grad_cam", "save_png", "view_overlays"]


# --------------------------------------------------------------------------------------------------
# Grad-CAM
# --------------------------------------------------------------------------------------------------
def _image_encoder(module: nn.Module, batch: Mapping[str, Any], modality: str) -> nn.Module:
    """The encoder that sees ``modality`` alone; clear errors for other kinds and stacked early fusion."""
    kind = input_kind(module, modality, batch)
    if explanation_of(kind) != "grad_cam":
        raise ValueError(
            f"Grad-CAM explains image modalities; {modality!r} is a {kind} modality "
            "(use tabular_attributions for tabular inputs)"
        )
    model = module.model
    name = modality
    if model.merge_inputs is not None:
        name, members = next((g, ms) for g, ms in model.merge_inputs.groups.items() if modality in ms)
        if len(members) > 1:
            others = [m for m in members if m != modality]
            raise ValueError(
                f"Grad-CAM per modality is not defined for input-level (early) fusion: {modality!r} is stacked "
                f"with {others} into one input of the {name!r} encoder, so its feature map mixes them"
            )
    encoder = model.encoders[name]
    if not isinstance(getattr(encoder, "backbone", None), nn.Module):
        kind = type(encoder).__name__
        raise ValueError(f"Grad-CAM needs an image encoder with a .backbone; {modality!r} uses {kind}")
    return encoder


def _backbone_name(encoder: nn.Module) -> str:
    options = getattr(encoder, "options", None)
    return str(getattr(options, "backbone", type(encoder.backbone).__name__))


def _last_feature_layer(encoder: nn.Module, images: torch.Tensor) -> tuple[str, nn.Module, tuple[int, ...]]:
    """The backbone module that outputs its final feature map (``forward_features``): name, module, shape.

    The backbone's input is what the encoder's ``reduce`` step hands on (normalised, channel-reduced
    images), captured by a hook during one encoder forward on the first sample. ``forward_features``
    then runs with a hook on every backbone module; the target is the last module to finish whose
    output has the feature map's shape (for a timm ResNet ``layer4``, the last stage; a container
    finishes after its children, so a stage wins over its last activation).
    """
    backbone, name = encoder.backbone, _backbone_name(encoder)
    if not callable(getattr(backbone, "forward_features", None)):
        raise ValueError(f"cannot find the feature map of backbone {name!r} (no forward_features); pass target_layer")
    captured: list[torch.Tensor] = []
    reduce = getattr(encoder, "reduce", None)
    with torch.no_grad():
        if isinstance(reduce, nn.Module):
            handle = reduce.register_forward_hook(lambda _m, _i, out: captured.append(out))
            try:
                encoder(images[:1])
            finally:
                handle.remove()
        inputs = captured[0] if captured else images[:1]
        finished: list[tuple[str, nn.Module, tuple[int, ...]]] = []

        def record(name: str):
            def hook(layer: nn.Module, _inputs: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor):
                    finished.append((name, layer, tuple(output.shape)))

            return hook

        handles = [m.register_forward_hook(record(n)) for n, m in backbone.named_modules() if n]
        try:
            feature_map = backbone.forward_features(inputs)
        finally:
            for handle in handles:
                handle.remove()
    shape = tuple(feature_map.shape) if isinstance(feature_map, torch.Tensor) else ()
    if len(shape) != 4 or str(getattr(backbone, "output_fmt", "NCHW")) != "NCHW":
        raise ValueError(
            f"Grad-CAM needs a CNN feature map (B, C, H, W); backbone {name!r} is not a CNN "
            f"(forward_features gives shape {shape}, format {getattr(backbone, 'output_fmt', 'NCHW')})"
        )
    matches = [entry for entry in finished if entry[2] == shape]
    if not matches:
        raise ValueError(f"no module of backbone {name!r} outputs its feature map {shape}; pass target_layer")
    return matches[-1]


def cam_target_layer(module: FusionLitModule, batch: Mapping[str, Any], modality: str) -> str:
    """The name, inside the image encoder's backbone, of the layer :func:`grad_cam` uses by default."""
    encoder = _image_encoder(module, batch, modality)
    with inspecting(module):
        images = model_inputs(module, batch)[modality]
        return _last_feature_layer(encoder, images)[0]


def grad_cam(
    module: FusionLitModule,
    batch: Mapping[str, Any],
    modality: str,
    target: Target = None,
    method: Literal["gradcam", "gradcam++"] = "gradcam",
    target_layer: str | None = None,
) -> np.ndarray:
    """``(B, H, W)`` float32 heat maps in [0, 1] of image ``modality``: where the target class's evidence is.

    Works for any model whose image encoder has a CNN backbone (the image-only CNN or any fusion, also
    input-level fusion when this image is the only one in its stack): the model is seen as a function
    of ``batch[modality]`` alone (:class:`ModalityFunction`), the samples' other modalities fixed.

    Args:
        target: class index for every sample, one per sample, or ``None`` for each sample's predicted class.
        method: ``gradcam`` or ``gradcam++``.
        target_layer: a backbone module name (e.g. ``"layer3"``); default the last feature map
            (:func:`cam_target_layer`). A 1×1 map (image too small for the backbone) carries no
            spatial information: a warning, and the heat maps are all 0.

    Each map is normalised to [0, 1] per sample (``pytorch_grad_cam``); a map that is 0 everywhere
    means no positive evidence. Gradients reach the feature map even when the backbone is frozen
    (``requires_grad`` false): the images themselves are made to require gradients.

    Raises:
        ValueError: a non-image modality, a stacked early-fusion input, a non-CNN backbone, a bad target.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown Grad-CAM method {method!r}; choose one of {sorted(CAM_METHODS)}")
    encoder = _image_encoder(module, batch, modality)
    with inspecting(module):
        inputs = model_inputs(module, batch)
        images = inputs[modality].float().requires_grad_(True)
        if target_layer is None:
            _, layer, shape = _last_feature_layer(encoder, images.detach())
            if shape[2] * shape[3] == 1:
                warnings.warn(
                    f"{_backbone_name(encoder)}: its last feature map is 1x1 for {tuple(images.shape[2:])} images, "
                    "so Grad-CAM has no spatial information (all-zero maps); use larger images or an earlier "
                    "target_layer",
                    stacklevel=2,
                )
        else:
            layers = dict(encoder.backbone.named_modules())
            if target_layer not in layers or not target_layer:
                raise ValueError(f"backbone {_backbone_name(encoder)!r} has no module {target_layer!r}")
            layer = layers[target_layer]
        function = ModalityFunction(module, inputs, modality)
        targets = None
        if target is not None:
            chosen = target_indices(target, torch.zeros(images.shape[0], len(module.classes)))
            targets = [ClassifierOutputTarget(int(t)) for t in chosen]
        cam = CAM_METHODS[method](model=function, target_layers=[layer])
        try:  # not `with cam`: its __exit__ swallows IndexErrors
            maps = cam(input_tensor=images, targets=targets)
        finally:
            cam.activations_and_grads.release()
    return np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0)


def view_overlays(
    image_chw: np.ndarray | torch.Tensor, cam: np.ndarray, views: int | None = None, image_weight: float = 0.5
) -> list[np.ndarray]:
    """One ``(H, W, 3)`` uint8 RGB overlay of the heat map ``cam`` ``(H, W)`` per view of ``image_chw``.

    ``image_chw`` is one sample ``(C, H, W)`` in [0, 1]. Its channels split into ``views`` equal groups
    of 1 (grayscale) or 3 (RGB) channels; by default groups of 3 when C is a multiple of 3 (9 channels
    = 3 stacked RGB views), else one grayscale view per channel. Drawn with ``pytorch_grad_cam``'s
    ``show_cam_on_image`` (jet colormap, ``image_weight`` of the image).
    """
    image = (image_chw.detach().cpu().numpy() if isinstance(image_chw, torch.Tensor) else np.asarray(image_chw)).astype(
        np.float32
    )
    if image.ndim != 3:
        raise ValueError(f"image_chw must be one image (C, H, W), got shape {image.shape}")
    channels, height, width = image.shape
    heat = np.asarray(cam, dtype=np.float32)
    if heat.shape != (height, width):
        raise ValueError(f"cam must have the image's size ({height}, {width}), got shape {heat.shape}")
    if views is None:
        views = channels // 3 if channels % 3 == 0 else channels
    if views < 1 or channels % views or channels // views not in (1, 3):
        raise ValueError(f"{channels} channels cannot split into {views} views of 1 (grayscale) or 3 (RGB) channels")
    per_view = channels // views
    overlays = []
    for view in range(views):
        part = image[view * per_view : (view + 1) * per_view].transpose(1, 2, 0)
        rgb = np.repeat(part, 3, axis=2) if per_view == 1 else part
        overlays.append(show_cam_on_image(np.clip(rgb, 0, 1), np.clip(heat, 0, 1), True, image_weight=image_weight))
    return overlays


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` image (uint8, or floats in [0, 1]) as PNG; makes folders."""
    data = np.asarray(array)
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[2] not in (3, 4)):
        raise ValueError(f"save_png takes (H, W), (H, W, 3) or (H, W, 4) images, got shape {data.shape}")
    if data.dtype != np.uint8:
        data = np.round(np.clip(data.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data).save(path, format="PNG")
    return path
