"""Image encoder: any timm backbone as a feature extractor, with optional 1×1 channel reduction.

``timm.create_model(backbone, num_classes=0, in_chans=C)`` returns a network whose output is the
pooled feature vector, so every timm model is an encoder. Multi-view stacks (e.g. 3 SPECT views ×
RGB = 9 channels) can first pass through a learned 1×1 convolution down to 3 channels, as the MPI
fusion study did, so an ImageNet backbone keeps its 3-channel stem.

Transfer learning (:mod:`lightning_fusion.encoders.transfer`): ``freeze`` freezes the whole backbone,
``unfreeze_from: N`` trains only timm's layer groups ``>= N`` (see ``python -m lightning_fusion.layers
<backbone>``), and ``warmup_epochs: E`` first trains the head alone for E epochs with the backbone
frozen, then unfreezes from N at ``optim.lr × finetune_lr_factor`` (the callback in
:mod:`lightning_fusion.fit.warmup`, added by ``training.fit``). Frozen groups keep their BatchNorm
layers in eval mode while the model trains. The 1×1 ``reduce`` conv is new, so it always trains.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.layers.cbam import SpatialAttn
from torch import nn

from lightning_fusion.encoders.registry import ENCODERS
from lightning_fusion.encoders.transfer import (
    apply_frozen_norm_modes,
    count_layer_groups,
    freeze_backbone,
    freeze_before,
    resolve_unfreeze_point,
)
from lightning_fusion.errors import PretrainedWeightsError

# ImageNet statistics, tiled over channel groups of 3; other channel counts use a neutral 0.5/0.25.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TimmImageEncoderConfig:
    """Which timm backbone, which weights, and whether to reduce channels first."""

    backbone: str = "resnet18"
    pretrained: bool = False  # timm weights from the Hugging Face hub or its local cache
    weights_path: str | None = None  # a local .safetensors/.pth file instead of the hub
    reduce_channels: int | None = 3  # 1×1 conv C → n in front of the backbone; null feeds all C channels
    drop_rate: float = 0.0
    # Transfer learning; "groups" are timm's layer groups: python -m lightning_fusion.layers <backbone>
    freeze: bool = False  # freeze the whole backbone (the reduce conv and the head still train)
    unfreeze_from: int | float | None = None  # train groups >= N only: index, negative from the end, or fraction
    warmup_epochs: int = 0  # first train the head alone (backbone frozen) for this many epochs, then unfreeze
    finetune_lr_factor: float = 0.1  # after the warm-up the unfrozen backbone trains at optim.lr × this
    fine_groups: bool = False  # unfreeze_from counts timm's fine groups (blocks), not coarse ones (stages)
    spatial_attention: bool = False  # CBAM spatial attention on the last feature map, before pooling (CNNs only)

    def __post_init__(self) -> None:
        check_backbone_name(self.backbone)
        if self.reduce_channels is not None and self.reduce_channels < 1:
            raise ValueError(f"reduce_channels must be >= 1 or null, got {self.reduce_channels}")
        if self.weights_path is not None and not Path(self.weights_path).is_file():
            raise ValueError(f"weights_path {self.weights_path!r} is not a file")
        self._check_transfer_options()

    def _check_transfer_options(self) -> None:
        if self.freeze and self.unfreeze_from is not None:
            raise ValueError(
                f"freeze: true freezes the whole backbone but unfreeze_from is {self.unfreeze_from!r}; "
                "set one of them (unfreeze_from alone freezes the groups before it)"
            )
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.freeze and self.warmup_epochs > 0:
            raise ValueError(
                f"warmup_epochs {self.warmup_epochs} unfreezes the backbone after the warm-up, but freeze: true "
                "keeps it frozen; drop freeze (and set unfreeze_from to unfreeze only the last groups)"
            )
        if not (math.isfinite(self.finetune_lr_factor) and self.finetune_lr_factor > 0):
            raise ValueError(f"finetune_lr_factor must be > 0, got {self.finetune_lr_factor}")
        if self.unfreeze_from is not None:
            # Range-check against the real group count now (a meta-device build: no memory, no weights).
            n_groups = count_layer_groups(self.backbone, self.fine_groups)
            try:
                resolve_unfreeze_point(self.unfreeze_from, n_groups or 1_000_000)
            except (TypeError, ValueError) as err:
                grouping = "fine" if self.fine_groups else "coarse"
                count = f"{self.backbone} has {n_groups} {grouping} layer groups; " if n_groups else ""
                command = f"python -m lightning_fusion.layers {self.backbone}{' --fine' if self.fine_groups else ''}"
                raise ValueError(f"{err} ({count}list them with {command})") from None


@dataclass(frozen=True)
class FeatureStage:
    """One of a backbone's feature stages: its index, module name and module, and its channel count."""

    index: int
    name: str  # e.g. layer3 (ResNet), blocks.2 (EfficientNet, MobileNet), stages.1 (ConvNeXt)
    module: nn.Module
    channels: int


@ENCODERS.register("timm", input_kind="image", config=TimmImageEncoderConfig)
class TimmImageEncoder(nn.Module):
    """``(B, C, H, W)`` images in [0, 1] → ``(B, num_features)`` pooled backbone features."""

    def __init__(self, input_shape: tuple[int, ...], options: TimmImageEncoderConfig) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"the timm encoder takes images (C, H, W), got input shape {input_shape}")
        channels = input_shape[0]
        mean, std = _normalisation(channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        backbone_channels = channels
        self.reduce: nn.Module = nn.Identity()
        if options.reduce_channels is not None and options.reduce_channels != channels:
            self.reduce = nn.Conv2d(channels, options.reduce_channels, kernel_size=1)
            backbone_channels = options.reduce_channels
        self.backbone = create_backbone(options, backbone_channels)
        # What forward returns: timm's pooled head width (MobileNetV3's conv head: 1024, num_features 288)
        self.out_features = int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        self.options = options
        # The cardiac-MRI study's spatial-attention block: timm's CBAM spatial attention (channel mean and
        # max → 7×7 conv → sigmoid map) reweights the final feature map's positions. It is outside the
        # backbone's layer groups, so like the reduce conv it always trains.
        self.attention: nn.Module | None = SpatialAttn(kernel_size=7) if options.spatial_attention else None
        # The steady state; with warmup_epochs the Lightning callback freezes everything first.
        if options.freeze:
            freeze_backbone(self)
        elif options.unfreeze_from is not None:
            freeze_before(self, options.unfreeze_from, fine=options.fine_groups)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = self.reduce((images - self.mean) / self.std)
        if self.attention is None:
            return self.backbone(inputs)
        feature_map = self.backbone.forward_features(inputs)
        if feature_map.ndim != 4:
            raise ValueError(
                f"spatial_attention needs a CNN feature map (B, C, H, W); {self.options.backbone!r} gives "
                f"shape {tuple(feature_map.shape)}; set spatial_attention: false for this backbone"
            )
        return self.backbone.forward_head(self.attention(feature_map))

    def feature_stage(self, stage: int) -> FeatureStage:
        """The backbone's feature stage ``stage`` (an index into timm's ``feature_info``, negative from the end).

        What a conditioning fusion (:mod:`lightning_fusion.fusion.conditioning`) hooks: the module whose
        output is that stage's ``(B, C, H, W)`` feature map, and ``C``.
        """
        stages = list(getattr(self.backbone, "feature_info", None) or [])
        if not stages:
            raise ValueError(f"timm backbone {self.options.backbone!r} lists no feature stages (feature_info)")
        if not -len(stages) <= stage < len(stages):
            listing = ", ".join(f"{i}: {s['module']} ({s['num_chs']} channels)" for i, s in enumerate(stages))
            raise ValueError(
                f"stage {stage} is out of range for {self.options.backbone!r}, which has {len(stages)} feature "
                f"stages ({listing}); use 0..{len(stages) - 1} or a negative index from the end"
            )
        info = stages[stage]
        module_name = str(info["module"])
        return FeatureStage(
            stage % len(stages), module_name, self.backbone.get_submodule(module_name), int(info["num_chs"])
        )

    def train(self, mode: bool = True) -> TimmImageEncoder:
        """Switch train/eval mode, but keep the BatchNorm layers of frozen layer groups in eval mode."""
        super().train(mode)
        apply_frozen_norm_modes(self)
        return self


def check_backbone_name(backbone: str) -> None:
    """Raise ``ValueError`` with close matches when ``backbone`` is not a timm model name."""
    if not timm.is_model(backbone):
        names = timm.list_models()
        # Names that extend the query, ignoring _ and - ('mobilenet_v1' → 'mobilenetv1_100'), then spelling.
        key = backbone.lower().replace("_", "").replace("-", "")
        extend = [n for n in names if key and n.replace("_", "").replace("-", "").startswith(key)]
        close = list(dict.fromkeys(extend[:3] + difflib.get_close_matches(backbone, names, n=3, cutoff=0.6)))[:3]
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown timm backbone {backbone!r}{hint} (see timm.list_models())")


def _normalisation(channels: int) -> tuple[list[float], list[float]]:
    if channels % 3 == 0:
        return list(_IMAGENET_MEAN) * (channels // 3), list(_IMAGENET_STD) * (channels // 3)
    return [0.5] * channels, [0.25] * channels


def create_backbone(options: TimmImageEncoderConfig, in_chans: int) -> nn.Module:
    """Create the timm feature extractor, loading weights from a local file or the hub cache.

    Fails at once with :class:`PretrainedWeightsError` when pretrained weights are asked for but the
    hub is offline (``HF_HUB_OFFLINE=1``) and they are not in the local cache.
    """
    kwargs = {"num_classes": 0, "in_chans": in_chans, "drop_rate": options.drop_rate}
    if options.weights_path:
        # timm's own loader: drops the classifier, adapts the stem to in_chans.
        overlay = {"file": str(Path(options.weights_path).resolve())}
        try:
            return timm.create_model(options.backbone, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except Exception as err:
            raise PretrainedWeightsError(
                f"could not load weights for {options.backbone!r} from {options.weights_path}: {err}"
            ) from err
    if not options.pretrained:
        return timm.create_model(options.backbone, pretrained=False, **kwargs)
    if _hub_offline() and not _in_hub_cache(options.backbone):
        raise PretrainedWeightsError(
            f"pretrained weights for {options.backbone!r} are not in the local Hugging Face cache and "
            "HF_HUB_OFFLINE is set; download them once where the hub is reachable, or set "
            "model.encoders.<modality>.weights_path to a local .safetensors/.pth file, "
            "or use pretrained: false"
        )
    try:
        return timm.create_model(options.backbone, pretrained=True, **kwargs)
    except Exception as err:
        raise PretrainedWeightsError(
            f"could not get pretrained weights for {options.backbone!r} ({type(err).__name__}: {err}); "
            "set weights_path to a local file or use pretrained: false"
        ) from err


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_hub_cache(backbone: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(backbone)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return False
    repo = repo.split("@")[0]
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return True
    return False
