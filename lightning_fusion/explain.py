"""Explanations of a trained model: Grad-CAM for image branches, Integrated Gradients for tables, modality drops.

Pure torch/numpy on top of ``pytorch_grad_cam`` and ``captum``; every function takes the trained
:class:`~lightning_fusion.lit.FusionLitModule` and a batch dict as its dataloaders yield it
(``{modality: tensor, optional "present": {modality: (B,) bool}}``; other keys are ignored) and
returns numpy arrays:

* :func:`grad_cam` — ``(B, H, W)`` heat maps in [0, 1] of one image modality, for any model whose image
  encoder is a timm CNN (the image-only CNN or any fusion): Grad-CAM (Selvaraju et al., 2017) or
  Grad-CAM++ at the backbone's last feature map (:func:`cam_target_layer`). :func:`view_overlays` lays
  a heat map over each view of a multi-view stack (9 channels = 3 RGB views) and :func:`save_png`
  writes the result.
* :func:`tabular_attributions` — ``(B, F)`` Integrated Gradients (Sundararajan et al., 2017) of a
  tabular input; feature names are the caller's (the data module's fitted column names).
* :func:`modality_contributions` — how much the predicted class's probability falls when one modality
  is taken away, plus the fusion's own modality weights where it has them (gated, attention,
  late_weighted).

In each, the explained modality is the only input that varies (:class:`ModalityFunction`): the
samples' other modalities and presence flags stay as given. The module runs in eval mode (no
dropout, BatchNorm running statistics), no parameter or buffer changes, and every submodule's
training flag and every parameter's ``.grad`` are restored afterwards. The targets are the model's
output scores: logits, or log-probabilities for ``late_weighted`` (decision-level) fusion.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from captum.attr import IntegratedGradients
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from lightning_fusion.fusion import FUSIONS

if TYPE_CHECKING:
    from lightning_fusion.lit import FusionLitModule

CAM_METHODS: dict[str, type] = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
Target = int | Sequence[int] | np.ndarray | torch.Tensor | None

__all__ = [
    "CAM_METHODS",
    "ModalityContributions",
    "ModalityFunction",
    "cam_target_layer",
    "grad_cam",
    "modality_contributions",
    "save_png",
    "tabular_attributions",
    "view_overlays",
]


# --------------------------------------------------------------------------------------------------
# One modality as the only input
# --------------------------------------------------------------------------------------------------
class ModalityFunction(nn.Module):
    """The module's output ``(B, K)`` as a function of ``batch[modality]`` alone, the rest of the batch held fixed.

    ``forward(inputs)`` uses the fixed part stored at construction; ``forward(inputs, *fixed)`` takes
    it as tensors in :attr:`fixed` order instead (how captum passes ``additional_forward_args``,
    repeated along the batch axis for each integration step). When the classifier encodes every
    modality separately (no input-level fusion), the other modalities' encoder features are computed
    once here, so only the explained modality's encoder and the fusion run per call; with input-level
    (early) fusion the raw inputs are kept and the whole model runs. Meant for eval mode (this is
    ``MultimodalClassifier.forward`` without modality dropout).
    """

    def __init__(self, module: nn.Module, batch: Mapping[str, Any], modality: str) -> None:
        super().__init__()
        self.module = module
        self.modality = modality
        model = module.model
        self.encoded = model.merge_inputs is None
        present = batch.get("present") or {}
        keys: list[tuple[str, str]] = []
        fixed: list[torch.Tensor] = []
        with torch.no_grad():
            for other in module.modalities:
                if other == modality:
                    continue
                value = model.encoders[other](batch[other]) if self.encoded else batch[other]
                keys.append(("input", other))
                fixed.append(value)
        for name, flags in present.items():
            keys.append(("present", name))
            fixed.append(flags)
        self.keys = keys
        self.fixed: tuple[torch.Tensor, ...] = tuple(fixed)

    def forward(self, inputs: torch.Tensor, *fixed: torch.Tensor) -> torch.Tensor:
        fixed = fixed or self.fixed
        if len(fixed) != len(self.keys):
            raise ValueError(f"expected {len(self.keys)} fixed tensors ({self.keys}), got {len(fixed)}")
        for (_, name), value in zip(self.keys, fixed, strict=True):
            if value.shape[0] != inputs.shape[0]:
                raise ValueError(f"{name!r}: {value.shape[0]} fixed rows for {inputs.shape[0]} {self.modality!r} rows")
        given = {name: value for (kind, name), value in zip(self.keys, fixed, strict=True) if kind == "input"}
        present = {name: value for (kind, name), value in zip(self.keys, fixed, strict=True) if kind == "present"}
        if not self.encoded:
            return self.module(given | {self.modality: inputs} | ({"present": present} if present else {}))
        model = self.module.model
        features = given | {self.modality: model.encoders[self.modality](inputs)}
        return model.fusion(features, present or None)


@contextmanager
def _inspecting(module: nn.Module) -> Iterator[None]:
    """Eval mode with autograd on; restores every submodule's training flag and every parameter's ``.grad``."""
    flags = [(m, m.training) for m in module.modules()]
    grads = [(p, p.grad) for p in module.parameters()]
    module.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for submodule, flag in flags:
            submodule.training = flag
        for parameter, grad in grads:
            parameter.grad = grad


def _model_inputs(module: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The model's modalities (and ``present``) from ``batch``: fresh copies on the module's device."""
    device = next(module.parameters()).device
    missing = [m for m in module.modalities if m not in batch]
    if missing:
        raise ValueError(f"the batch lacks the model's modalities {missing}; it has {sorted(batch)}")
    inputs: dict[str, Any] = {m: torch.as_tensor(batch[m]).to(device).clone() for m in module.modalities}
    if batch.get("present") is not None:
        inputs["present"] = {m: torch.as_tensor(v).to(device).clone() for m, v in batch["present"].items()}
    return inputs


def _kind(module: nn.Module, modality: str, batch: Mapping[str, Any]) -> str:
    if modality not in module.modalities:
        raise ValueError(f"{modality!r} is not a modality of the model; it has {list(module.modalities)}")
    specs = getattr(module, "hparams", {}).get("specs") or {}
    if modality in specs:
        return str(specs[modality]["kind"])
    return {4: "image", 3: "signal", 2: "vector"}.get(torch.as_tensor(batch[modality]).ndim, "unknown")


def _targets(target: Target, scores: torch.Tensor) -> torch.Tensor:
    """``(B,)`` class indices: the predicted class per sample, one class for all, or one per sample."""
    batch_size, num_classes = scores.shape
    if target is None:
        return scores.argmax(dim=1)
    chosen = torch.as_tensor(target, dtype=torch.long, device=scores.device).flatten()
    if chosen.numel() == 1:
        chosen = chosen.expand(batch_size)
    if chosen.shape != (batch_size,):
        raise ValueError(f"target must be one class index or one per sample ({batch_size}), got {chosen.numel()}")
    if bool(((chosen < 0) | (chosen >= num_classes)).any()):
        raise ValueError(f"target class indices must be in [0, {num_classes}), got {chosen.tolist()}")
    return chosen.clone()


# --------------------------------------------------------------------------------------------------
# Grad-CAM
# --------------------------------------------------------------------------------------------------
def _image_encoder(module: nn.Module, batch: Mapping[str, Any], modality: str) -> nn.Module:
    """The encoder that sees ``modality`` alone; clear errors for other kinds and stacked early fusion."""
    kind = _kind(module, modality, batch)
    if kind != "image":
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
    with _inspecting(module):
        images = _model_inputs(module, batch)[modality]
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
    with _inspecting(module):
        inputs = _model_inputs(module, batch)
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
            chosen = _targets(target, torch.zeros(images.shape[0], len(module.classes)))
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


# --------------------------------------------------------------------------------------------------
# Integrated Gradients
# --------------------------------------------------------------------------------------------------
def tabular_attributions(
    module: FusionLitModule,
    batch: Mapping[str, Any],
    modality: str,
    target: Target = None,
    baseline: Literal["zeros"] | np.ndarray | torch.Tensor = "zeros",
    output: Literal["logit", "probability"] = "logit",
    n_steps: int = 50,
    internal_batch_size: int | None = None,
    return_delta: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``(B, F)`` Integrated Gradients of tabular ``modality``: each feature's share of the target's score.

    Completeness: a sample's attributions sum to ``f(x) - f(baseline)`` for the target output ``f``
    (the ``logit``, a log-probability for ``late_weighted`` fusion, or the softmax ``probability``),
    up to the integration error returned by ``return_delta=True`` (captum's convergence delta, ``(B,)``).
    The samples' other modalities stay fixed (:class:`ModalityFunction`).

    Args:
        target: class index for every sample, one per sample, or ``None`` for each sample's predicted class.
        baseline: ``"zeros"``, the all-zero row: with the default tabular preprocessing (impute, then
            z-score fitted on the training patients) that is the training mean of every feature, so
            attributions explain the difference from an average training patient. Or an array ``(F,)``
            or ``(B, F)`` in the model's (preprocessed) input space.
        n_steps, internal_batch_size: captum's integration steps and rows per forward pass.

    Feature names are the caller's (e.g. the data module's tabular preprocessor ``output_columns``).
    A signal modality ``(B, leads, samples)`` works the same way (attributions of the same shape); with
    per-lead normalisation the zero baseline is the training mean of each lead.
    """
    kind = _kind(module, modality, batch)
    if kind not in ("vector", "signal"):
        raise ValueError(
            f"tabular_attributions explains tabular (vector) and signal modalities; {modality!r} is a {kind} modality"
            + (" (use grad_cam)" if kind == "image" else "")
        )
    if output not in ("logit", "probability"):
        raise ValueError(f"output must be 'logit' or 'probability', got {output!r}")
    with _inspecting(module):
        inputs = _model_inputs(module, batch)
        values = inputs[modality].float()
        if isinstance(baseline, str):
            if baseline != "zeros":
                raise ValueError(f"baseline must be 'zeros' or an array, got {baseline!r}")
            start = torch.zeros_like(values)
        else:
            start = torch.as_tensor(np.asarray(baseline) if not isinstance(baseline, torch.Tensor) else baseline)
            start = start.to(values).expand_as(values).clone()
        function = ModalityFunction(module, inputs, modality)

        def forward(x: torch.Tensor, *fixed: torch.Tensor) -> torch.Tensor:
            scores = function(x, *fixed).float()
            return scores.softmax(dim=1) if output == "probability" else scores

        with torch.no_grad():
            targets = _targets(target, forward(values))
        attributions, delta = IntegratedGradients(forward).attribute(
            values,
            baselines=start,
            target=targets,
            additional_forward_args=function.fixed or None,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    result = attributions.detach().cpu().numpy().astype(np.float32)
    return (result, delta.detach().cpu().numpy()) if return_delta else result


# --------------------------------------------------------------------------------------------------
# Drop one modality
# --------------------------------------------------------------------------------------------------
@dataclass
class ModalityContributions:
    """What each modality adds to the explained class's probability, per sample.

    Attributes:
        target: ``(B,)`` the explained class per sample (the predicted class unless given).
        probability: ``(B,)`` its probability with every modality as given.
        deltas: modality → ``(B,)`` ``probability`` minus the probability without that modality
            (positive: the modality supports the class). 0 where the modality was already absent; NaN
            where it is the sample's only present modality (nothing would be left to predict from).
        method: ``"mask"`` (the modality marked absent through ``present``, for fusions that support
            missing modalities) or ``"zeros"`` (its input replaced by zeros: a black image, the training
            mean of z-scored tables and signals).
        fusion_weights: modality → ``(B,)`` the fusion's own per-sample modality weights (each sample's
            sum to 1), or ``None`` when the fusion has none. ``weights_source`` says what they are.
    """

    target: np.ndarray
    probability: np.ndarray
    deltas: dict[str, np.ndarray]
    method: Literal["mask", "zeros"]
    fusion_weights: dict[str, np.ndarray] | None
    weights_source: str | None


def _fusion_weights(fusion: nn.Module) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The fusion's per-sample modality weights from its last forward, if it keeps any."""
    modalities = list(getattr(fusion, "modalities", []))
    source = None
    if getattr(fusion, "last_gates", None) is not None:  # gated: (B, M)
        weights, source = fusion.last_gates, "gated fusion gates (softmax over present modalities)"
    elif getattr(fusion, "last_weights", None) is not None:  # late_weighted: (B, M)
        weights, source = fusion.last_weights, "late_weighted mixture weights (renormalised over present modalities)"
    elif getattr(fusion, "last_attention", None) is not None:  # attention: (B, heads, M query, M key)
        attention = fusion.last_attention.float().mean(dim=1)  # (B, M, M)
        keys_present = attention.sum(dim=1) > 0  # an absent modality's key receives no attention
        queries = keys_present.unsqueeze(-1).to(attention.dtype)  # average over the present query tokens
        weights = (attention * queries).sum(dim=1) / queries.sum(dim=1).clamp_min(1)
        source = "attention received by each modality token in the last block (mean over heads, present queries)"
    else:
        return None, None
    columns = weights.detach().float().cpu().numpy()
    return {m: columns[:, i].copy() for i, m in enumerate(modalities)}, source


def modality_contributions(
    module: FusionLitModule, batch: Mapping[str, Any], target: Target = None
) -> ModalityContributions:
    """Drop-one-modality deltas of the target class's probability, and the fusion's own weights if any.

    For each modality: the probability with every modality minus the probability without it — marked
    absent through ``present`` when the fusion supports missing modalities (``FUSIONS`` metadata
    ``supports_missing``), else its input replaced by zeros (see :class:`ModalityContributions`).

    Raises:
        ValueError: a model with a single modality (nothing to compare).
    """
    modalities = list(module.modalities)
    if len(modalities) < 2:
        raise ValueError(f"modality contributions need a model with >= 2 modalities; this one has {modalities}")
    fusion_name = module.experiment_config.model.fusion["name"]
    method: Literal["mask", "zeros"] = (
        "mask" if FUSIONS.metadata(fusion_name).get("supports_missing", False) else "zeros"
    )
    with _inspecting(module), torch.no_grad():
        inputs = _model_inputs(module, batch)
        full = module(inputs).float().softmax(dim=1)
        weights, source = _fusion_weights(module.model.fusion)  # right after the full-batch forward
        targets = _targets(target, full)
        rows = torch.arange(full.shape[0], device=full.device)
        probability = full[rows, targets]
        batch_size = full.shape[0]
        given = inputs.get("present") or {}
        present = {
            m: torch.as_tensor(given[m]).bool() if m in given else torch.ones(batch_size, dtype=torch.bool)
            for m in modalities
        }
        present = {m: flags.to(full.device) for m, flags in present.items()}
        deltas = {}
        for modality in modalities:
            if method == "mask":
                others = torch.stack([present[m] for m in modalities if m != modality], dim=1).any(dim=1)
                flags = present | {modality: present[modality] & ~others}  # kept where it is all there is
                dropped = module(inputs | {"present": flags}).float().softmax(dim=1)[rows, targets]
                delta = torch.where(others, probability - dropped, torch.full_like(probability, float("nan")))
            else:
                zeroed = inputs | {modality: torch.zeros_like(inputs[modality])}
                delta = probability - module(zeroed).float().softmax(dim=1)[rows, targets]
            deltas[modality] = delta.cpu().numpy()
    return ModalityContributions(
        target=targets.cpu().numpy(),
        probability=probability.cpu().numpy(),
        deltas=deltas,
        method=method,
        fusion_weights=weights,
        weights_source=source,
    )
