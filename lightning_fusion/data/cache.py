"""Files derived from source files (spectrograms, rendered ECGs, decoded signals), cached on disk.

The cache lives under ``$LF_CACHE_DIR`` (default ``~/.cache/lightning_fusion``), one folder per kind.
An entry's key is a hash of its sources' resolved paths, modification times and sizes, plus the
parameters that shaped it and a version, so editing a source file or changing a parameter makes a new
entry rather than serving a stale one. Entries are written to a temporary file and renamed into place,
so a crash or two processes writing at once never leave a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO


def cache_root() -> Path:
    """``$LF_CACHE_DIR``, else ``~/.cache/lightning_fusion``."""
    return Path(os.environ.get("LF_CACHE_DIR", Path.home() / ".cache" / "lightning_fusion"))


def source_key(sources: Sequence[Path], params: Mapping[str, Any], version: int) -> str:
    """Hex digest of the sources' resolved paths, mtimes and sizes, the parameters and the version."""
    stamps = []
    for path in sources:
        stat = Path(path).stat()
        stamps.append([str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size])
    facts = {"files": stamps, "params": dict(params), "version": version}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def write_file_atomically(target: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``target`` through ``write(stream)`` into a temporary sibling, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
