"""Writing a synthetic dataset atomically: a temporary sibling folder renamed into place.

Every demo writer goes through :func:`write_dataset_once`, so an interrupted run never leaves a partial
dataset that looks complete, two processes (e.g. DDP ranks) racing to write the same dataset both end
up with it, and re-running with the same parameters reuses what is there. The parameters are recorded
in ``<root>/<manifest>`` (``cohort.json`` by default) next to whatever the writer records itself.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "cohort.json"


def is_empty_dir(path: Path) -> bool:
    """Whether ``path`` is an existing directory without entries."""
    return path.is_dir() and not any(path.iterdir())


def matches(root: Path, params: Mapping[str, Any], manifest: str = MANIFEST) -> bool:
    """Whether ``root/<manifest>`` records exactly the generation parameters ``params``."""
    try:
        meta = json.loads((root / manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and all(meta.get(k) == v for k, v in params.items())


def write_dataset_once(
    root: str | Path,
    params: Mapping[str, Any],
    write: Callable[[Path], Mapping[str, Any] | None],
    what: str,
    manifest: str = MANIFEST,
) -> Path:
    """Write a dataset at ``root`` with ``write(tmp_dir)``, or reuse one made with the same ``params``.

    Args:
        root: target folder; must not exist, be empty, or hold a dataset written with ``params``.
        params: the generation parameters (JSON-safe); stored in the manifest and compared on reuse.
        write: fills the temporary folder; may return extra JSON-safe facts (e.g. class counts) that
            are stored in the manifest beside ``params``.
        what: the dataset's name for error messages (e.g. ``"ECG dataset"``).
        manifest: file name of the manifest under ``root``.

    Raises:
        FileExistsError: ``root`` holds something else.
    """
    root = Path(root)
    params = dict(params)
    if root.exists() and not is_empty_dir(root):
        if matches(root, params, manifest):
            return root
        raise FileExistsError(f"{root} exists and is not a {what} generated with {params}; remove it or choose another")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        extra = write(tmp) or {}
        meta = {**extra, **params}
        (tmp / manifest).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if is_empty_dir(root):
            root.rmdir()
        os.replace(tmp, root)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        # A concurrent process (e.g. another DDP rank) may have won the race.
        if isinstance(error, OSError) and matches(root, params, manifest):
            return root
        raise
    return root


def check_integers(**minimum_of: tuple[Any, int]) -> None:
    """``check_integers(patients=(patients, 10), seed=(seed, 0))``: each value an integer >= its minimum."""
    for name, (value, low) in minimum_of.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
