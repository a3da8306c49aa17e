"""``python -m lightning_fusion.layers <timm model> [--in-chans C] [--fine]``: the layer groups to unfreeze from.

Prints timm's ordered layer groups of the backbone as the ``timm`` encoder builds it
(``num_classes=0``): index, name, modules, parameters, and how many backbone parameters train with
``unfreeze_from: N`` for each N, so a config can pick N (see :mod:`lightning_fusion.encoders.transfer`).
The model is built on the meta device: no weights are downloaded and no memory is used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import timm
import torch

from lightning_fusion.encoders.image import check_backbone_name
from lightning_fusion.encoders.transfer import LayerGroup, layer_groups, resolve_unfreeze_point

_MAX_MODULES = 3  # module names shown per group before "+k more"


def describe(backbone: str, in_chans: int = 3, fine: bool = False) -> str:
    """The table ``python -m lightning_fusion.layers`` prints."""
    check_backbone_name(backbone)
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans)
    groups = layer_groups(model, fine=fine)
    total = sum(g.param_count for g in groups)
    grouping = "fine (blocks)" if fine else "coarse (stages)"
    lines = [
        f"{backbone}: {len(groups)} {grouping} layer groups, {total:,} backbone parameters (in_chans={in_chans})",
        "unfreeze_from: N trains groups N.. and freezes 0..N-1 (their BatchNorm statistics too); "
        "the head and the 1x1 reduce conv always train",
        "",
    ]
    rows = [("N", "group", "params", "trains from N", "modules")]
    trainable = total
    for group in groups:
        share = f"{trainable:,} ({_percent(trainable, total)})"
        rows.append((str(group.index), group.name, f"{group.param_count:,}", share, _modules(group)))
        trainable -= group.param_count
    rows.append((str(len(groups)), "(none)", "", "0 (0%)", "the whole backbone frozen, as freeze: true"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        lines.append(
            f"  {row[0]:>{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}  {row[4]}"
        )
    examples = ", ".join(f"{f} -> {resolve_unfreeze_point(f, len(groups))}" for f in (0.25, 0.5, 0.75))
    lines += [
        "",
        f"negative N counts from the end (-1 -> {len(groups) - 1}); a fraction f in (0, 1) means "
        f"N = floor(f x {len(groups)}): {examples}",
    ]
    if not fine:
        lines.append("--fine lists timm's fine groups (fine_groups: true in the encoder options)")
    return "\n".join(lines)


def _percent(part: int, total: int) -> str:
    return "100%" if part == total else f"{min(100 * part / total, 99.9):.1f}%"  # never 100.0% when not all


def _modules(group: LayerGroup) -> str:
    names = list(group.module_names)
    if len(names) <= _MAX_MODULES:
        return ", ".join(names)
    return ", ".join(names[:_MAX_MODULES]) + f", +{len(names) - _MAX_MODULES} more"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_fusion.layers",
        description="List a timm backbone's ordered layer groups, to choose model.encoders.<m>.unfreeze_from.",
    )
    parser.add_argument("backbone", help="timm model name, e.g. mobilenetv1_100")
    parser.add_argument("--in-chans", type=int, default=3, help="input channels of the backbone (default 3)")
    parser.add_argument("--fine", action="store_true", help="timm's fine groups (blocks) instead of coarse (stages)")
    args = parser.parse_args(argv)
    if args.in_chans < 1:
        parser.error(f"--in-chans must be >= 1, got {args.in_chans}")
    try:
        print(describe(args.backbone, args.in_chans, args.fine))
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
