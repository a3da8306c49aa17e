"""Transfer learning on timm backbones: ordered layer groups, partial freezing, frozen BatchNorm.

**Layer groups.** Every timm model describes its own depth through ``group_matcher(coarse)``, the
regexes timm uses for layer-wise learning-rate decay; :func:`timm.models.group_parameters` turns it
into ordered groups of parameters, input side first: the stem (group 0), then one group per stage
(``coarse``, the default) or per block (``fine``), then whatever the matcher leaves over at the
output end (e.g. MobileNetV3's ``conv_head``, DenseNet's final ``norm5``). The encoder builds its
backbone with ``num_classes=0``, so timm's classifier is an ``Identity`` without parameters and is in
no group. Every backbone parameter is in exactly one group. ``python -m lightning_fusion.layers
<model>`` prints them.

**What is grouped.** Only the timm backbone: for a :class:`~lightning_fusion.encoders.image.TimmImageEncoder`
the groups hold its ``backbone.*`` parameters. Its 1×1 channel-reduction conv (``reduce``) is new and
randomly initialised (no weight file holds it), so it is in no group and is never frozen: it trains
with the head, as the 1×1 conv in front of the frozen base model did in the MPI study. Freezing it
would fix a random projection of the input channels for the whole run.

**Where unfreezing starts** (``unfreeze_from``, resolved by :func:`resolve_unfreeze_point` into an
index ``N``; groups ``>= N`` train, groups ``< N`` are frozen):

* an ``int`` is a group index, ``0 <= N <= n_groups``; ``0`` trains everything, ``n_groups`` freezes
  the whole backbone; negative values count from the end like Python (``-1``: only the last group
  trains, ``-n_groups``: all train);
* a ``float`` ``f`` strictly between 0 and 1 is a fraction of the depth in groups:
  ``N = floor(f × n_groups)``, so ``0.75`` trains the last quarter of the groups, rounded up to whole
  groups (with 6 groups: ``N = 4``, groups 4 and 5 train). At least one group always trains. ``0``
  and ``1`` are not fractions here: write the ints ``0`` (train all) or use ``freeze`` (train none);
  the config reads ``1.0`` as the int ``1``.

**Frozen BatchNorm.** A frozen group's parameters get ``requires_grad = False`` *and* its BatchNorm
layers stay in eval mode, so they normalise with, and keep, their (pretrained) running statistics
even while the model trains; otherwise every training batch would overwrite the ImageNet statistics
the frozen convolutions were trained with. The rule is structural: a running-stats norm layer whose
own parameters are all frozen is held in eval mode (one without affine parameters follows the
nearest enclosing module that has parameters). :func:`apply_frozen_norm_modes` applies it;
``TimmImageEncoder.train()`` calls it after every mode switch, so it holds across Lightning's
train/eval toggling, and :func:`freeze_before` calls it after (un)freezing. (Lightning therefore
warns "Found N module(s) in eval mode at the start of training": those are the frozen BatchNorm
layers, on purpose.) Dropout and drop-path in frozen groups are left alone.

Pure torch/timm: the Lightning two-phase callback lives in :mod:`lightning_fusion.fit.warmup`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import timm
import torch
from timm.models import group_parameters
from torch import nn
from torch.nn.modules.batchnorm import _NormBase


@dataclass(frozen=True)
class LayerGroup:
    """One group of a backbone, in input-to-output order.

    ``module_names`` are the fewest module names that cover exactly this group's parameters
    (``layer1``, or ``blocks.6``, ``conv_head``, ``bn2``); ``parameter_names`` lists them all.
    For an encoder both carry the ``backbone.`` prefix.
    """

    index: int
    name: str
    module_names: tuple[str, ...]
    parameter_names: tuple[str, ...]
    param_count: int


def layer_groups(model: nn.Module, fine: bool = False) -> list[LayerGroup]:
    """The ordered layer groups of a timm model, or of an encoder holding one as ``.backbone``.

    ``fine=False`` uses timm's coarse groups (stem, stages, ...), ``fine=True`` its fine ones
    (stem, blocks, ...). Parameters of an encoder outside its backbone (the 1×1 ``reduce`` conv) are
    in no group.
    """
    backbone, prefix = _backbone_of(model)
    try:
        matcher = backbone.group_matcher(coarse=not fine)
    except NotImplementedError as err:  # a few timm models do not describe their groups
        raise TypeError(f"{type(backbone).__name__} has no timm layer groups (group_matcher): {err}") from None
    id_to_names = group_parameters(backbone, matcher)
    params = dict(backbone.named_parameters())
    owners = _group_owner_index(id_to_names)
    groups = []
    for index, group_id in enumerate(sorted(id_to_names)):
        names = id_to_names[group_id]
        modules = _cover(names, group_id, owners)
        groups.append(
            LayerGroup(
                index=index,
                name=_group_name(index, modules),
                module_names=tuple(prefix + m for m in modules),
                parameter_names=tuple(prefix + n for n in names),
                param_count=sum(params[n].numel() for n in names),
            )
        )
    return groups


def resolve_unfreeze_point(value: int | float, n_groups: int) -> int:
    """The first trained group index ``N`` for ``unfreeze_from = value`` (see the module docstring).

    ``int``: ``0..n_groups``, or ``-n_groups..-1`` from the end. ``float``: a fraction of the depth
    strictly between 0 and 1, ``N = floor(value × n_groups)``.
    """
    if n_groups < 1:
        raise ValueError(f"a backbone needs at least one layer group, got {n_groups}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"unfreeze_from must be a group index (int) or a fraction of depth (float), got {value!r}")
    if isinstance(value, int):
        if not -n_groups <= value <= n_groups:
            raise ValueError(
                f"unfreeze_from {value} is out of range for {n_groups} layer groups: use a group index "
                f"0..{n_groups} ({n_groups} freezes them all), -{n_groups}..-1 from the end, or a fraction in (0, 1)"
            )
        return value + n_groups if value < 0 else value
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        hint = "; for a group index write an int" if math.isfinite(value) and value.is_integer() else ""
        raise ValueError(
            f"unfreeze_from {value!r}: a fraction of depth must be strictly between 0 and 1 "
            f"(0.75: train the last quarter of the layer groups){hint}"
        )
    return math.floor(value * n_groups + 1e-9)


def freeze_before(model: nn.Module, unfreeze_from: int | float, fine: bool = False) -> int:
    """Freeze the layer groups before ``unfreeze_from`` and make the rest trainable; return ``N``.

    Sets ``requires_grad`` on every grouped parameter (``False`` for groups ``< N``, ``True`` for
    ``>= N``) and puts the frozen groups' BatchNorm layers in eval mode (if the model is training).
    Parameters in no group (an encoder's ``reduce`` conv) are left as they are.
    """
    groups = layer_groups(model, fine=fine)
    start = resolve_unfreeze_point(unfreeze_from, len(groups))
    _set_trainable(model, groups, start)
    return start


def freeze_backbone(model: nn.Module) -> None:
    """Freeze every layer group (the whole timm backbone), BatchNorm statistics included."""
    groups = layer_groups(model)
    _set_trainable(model, groups, len(groups))


def _set_trainable(model: nn.Module, groups: list[LayerGroup], start: int) -> None:
    params = dict(model.named_parameters())
    for group in groups:
        for name in group.parameter_names:
            params[name].requires_grad_(group.index >= start)
    apply_frozen_norm_modes(model)


def apply_frozen_norm_modes(model: nn.Module) -> None:
    """Hold the norm layers of frozen parts in eval mode; the others follow ``model.training``.

    A running-stats norm layer (BatchNorm, tracked InstanceNorm) counts as frozen when its own
    parameters all have ``requires_grad = False``; one without affine parameters follows the nearest
    enclosing module that has parameters.
    """
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, _NormBase):
            module.train(model.training and not _is_frozen(name, module, modules))


def _is_frozen(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> bool:
    own = list(module.parameters(recurse=False))
    if own:
        return not any(p.requires_grad for p in own)
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        enclosing = modules[".".join(parts[:depth])]
        params = list(enclosing.parameters())
        if params:
            return not any(p.requires_grad for p in params)
    return False


@functools.lru_cache(maxsize=64)
def count_layer_groups(backbone: str, fine: bool = False) -> int | None:
    """How many layer groups timm model ``backbone`` has, built on the meta device (no memory, no weights).

    ``None`` when the model cannot be built that way; the caller then checks later, on the real model.
    """
    try:
        with torch.device("meta"):
            model = timm.create_model(backbone, pretrained=False, num_classes=0)
        return len(layer_groups(model, fine=fine))
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked when it is built
        return None


# --------------------------------------------------------------------------------------------------
def _backbone_of(model: nn.Module) -> tuple[nn.Module, str]:
    if hasattr(model, "group_matcher"):
        return model, ""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module) and hasattr(backbone, "group_matcher"):
        return backbone, "backbone."
    raise TypeError(
        f"{type(model).__name__} is neither a timm model nor an encoder with a timm .backbone; "
        "layer groups come from timm's group_matcher"
    )


def _group_owner_index(id_to_names: dict[int, list[str]]) -> dict[str, set[int]]:
    """Every dotted prefix of every parameter name → the groups with parameters under it."""
    owners: dict[str, set[int]] = {}
    for group_id, names in id_to_names.items():
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                owners.setdefault(".".join(parts[:depth]), set()).add(group_id)
    return owners


def _cover(names: list[str], group_id: int, owners: dict[str, set[int]]) -> list[str]:
    """The shortest prefixes (module names) whose parameters all lie in ``group_id``, in order."""
    cover: list[str] = []
    for name in names:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if owners[prefix] == {group_id}:
                if prefix not in cover:
                    cover.append(prefix)
                break
    return cover


def _group_name(index: int, modules: list[str]) -> str:
    if index == 0:
        return "stem"  # timm's matchers list the stem first
    return modules[0] if len(modules) == 1 else f"{modules[0]} (+{len(modules) - 1})"
