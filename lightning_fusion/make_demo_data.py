"""``python -m lightning_fusion.make_demo_data <layout> <dir> [--patients N] [--seed S]``.

Writes a small synthetic dataset in one of the real layouts the readers take, so any experiment can
be tried end to end without patient data: ``fit --config experiments/<x>.yaml --data.root <dir>``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lightning_fusion.demo import DEMO_LAYOUTS
from lightning_fusion.errors import UnknownNameError


def _layouts_help() -> str:
    return "\n".join(
        f"  {name:<14} {DEMO_LAYOUTS.metadata(name)['description']} (reader: {DEMO_LAYOUTS.metadata(name)['reader']})"
        for name in DEMO_LAYOUTS
    )


def _quote(value: object) -> str:
    return shlex.quote(str(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_fusion.make_demo_data",
        description="Write a synthetic dataset in a reader's layout.",
        epilog="layouts:\n" + _layouts_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("layout", help="one of: " + ", ".join(DEMO_LAYOUTS))
    parser.add_argument("root", type=Path, help="folder to write (must not exist, or be empty)")
    parser.add_argument("--patients", type=int, default=None, help="number of patients (default: per layout)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed → same files)")
    args = parser.parse_args(argv)
    try:
        write = DEMO_LAYOUTS.get(args.layout)
    except UnknownNameError as err:
        parser.error(str(err))
    kwargs = {"seed": args.seed}
    if args.patients is not None:
        kwargs["patients"] = args.patients
    try:
        root = write(args.root, **kwargs)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    meta = DEMO_LAYOUTS.metadata(args.layout)
    options = "".join(f" --data.reader.{key} {_quote(value)}" for key, value in meta.get("reader_options", {}).items())
    print(f"wrote the {args.layout} layout to {root}")
    print(f"read it with: --data.reader.name {meta['reader']}{options} --data.root {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
