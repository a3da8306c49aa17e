"""The wheels a GPU machine without network needs for ``benchmarks/gpu_check.sh``, as ``pip download`` commands.

    python benchmarks/gpu_wheels.py                      # print the commands
    python benchmarks/gpu_wheels.py --run                # download into .whl/ (needs network)
    python benchmarks/gpu_wheels.py --present freeze.txt # what the GPU machine has: its `pip freeze`

Run it where this project's environment is installed (it reads the installed packages' metadata):
it walks the requirements of ``pyproject.toml``'s dependencies, drops every distribution the GPU
machine already has, and pins the rest to the versions installed here (the tested ones). Without
``--present`` the GPU machine is assumed to hold torch, lightning, timm, torchmetrics, pandas and
scikit-learn with everything they require (as here), plus pip and setuptools; a ``pip freeze`` of
the machine is exact. ``gpu_check.sh`` installs every wheel in ``.whl/`` with ``--no-deps
--no-index``, skipping any distribution the machine already has (its torch stays as it is).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
ASSUMED_PRESENT = ("torch", "lightning", "timm", "torchmetrics", "pandas", "scikit-learn", "pip", "setuptools")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")  # manylinux2014 = manylinux_2_17; newer wheels use 2_28


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_environment(python: str) -> dict[str, str]:
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0", sys_platform="linux", platform_system="Linux")
    env.update(platform_machine="x86_64", os_name="posix", implementation_name="cpython")
    return env


def requirements_of(dist: str, env: dict[str, str], extras: frozenset[str] = frozenset()) -> list[Requirement]:
    """The requirements of installed ``dist`` that apply on the target (markers evaluated; extras given only)."""
    found = []
    for text in metadata.requires(dist) or []:
        requirement = Requirement(text)
        if requirement.marker is None:
            found.append(requirement)
            continue
        if any(requirement.marker.evaluate(env | {"extra": extra}) for extra in (extras or {""})):
            found.append(requirement)
    return found


def closure(roots: list[Requirement], env: dict[str, str]) -> dict[str, str]:
    """Canonical name → installed version of ``roots`` and everything they require (installed here)."""
    seen: dict[str, str] = {}
    stack = list(roots)
    while stack:
        requirement = stack.pop()
        name = canonical(requirement.name)
        if name in seen:
            continue
        try:
            seen[name] = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            print(f"# not installed here, skipped: {requirement}", file=sys.stderr)
            continue
        stack += requirements_of(requirement.name, env, frozenset(requirement.extras))
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--present", type=Path, help="the GPU machine's `pip freeze` (default: assumed, see above)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl")
    parser.add_argument("--run", action="store_true", help="run the downloads (needs network)")
    args = parser.parse_args(argv)
    env = target_environment(args.python_version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = closure([Requirement(r) for r in project], env)
    if args.present:
        lines = args.present.read_text().splitlines()
        present = {canonical(re.split(r"[=<>@ ;]", line.strip(), maxsplit=1)[0]) for line in lines if line.strip()}
    else:
        present = set(closure([Requirement(n) for n in ASSUMED_PRESENT], env))
    missing = {name: version for name, version in sorted(wanted.items()) if name not in present}
    platforms = " ".join(f"--platform {p}" for p in PLATFORMS)
    commands = [
        f"pip download --no-deps --only-binary=:all: --python-version {args.python_version} {platforms} "
        f"-d {shlex.quote(str(args.dest))} {name}=={version}"
        for name, version in missing.items()
    ]
    print(f"# {len(missing)} distributions the GPU machine lacks: {' '.join(missing)}", file=sys.stderr)
    for command in commands:
        print(command)
        if args.run:
            subprocess.run([sys.executable, "-m", *shlex.split(command)], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
