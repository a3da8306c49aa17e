"""Decoded splits on disk as memory-mapped ``.npy`` files (``data.memory_map``), for datasets larger than memory.

One file per modality and split, ``(N, *row)`` in the kind's array layout (images ``(N, H, W, C)``
``uint8`` at ``data.image_size``), under ``$LF_CACHE_DIR/memory_map``. Its name carries a digest of
the dataset files the rows come from (paths, modification times, sizes), the decoding and resizing
settings, the split's patients in order and a format version: never of fitted preprocessing, which
stays fitted on training patients and runs after reading. So an edited image or another
``image_size`` makes a new file instead of serving a stale one.

Why plain ``.npy`` files rather than LitData's optimized format: no new dependency, any row is one
slice away (random access for shuffling, no chunk streaming), and every process that maps the file
reads the same pages of the OS page cache, so the DDP ranks (and sweep workers) of one node share
one copy instead of holding one each.

One process writes a file, under a lock beside it (``filelock`` when installed, else ``fcntl``),
into a temporary sibling renamed into place when complete (``os.replace``): processes that want
the same file at once wait for the one that writes it and then map the finished file, and a crash
never leaves a half-written file under the final name. Rows are written with plain ``write`` calls
rather than through a writable mapping: a full disk is then an ``OSError`` naming the file, where
a store through a mapping would kill the process with ``SIGBUS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_fusion.data.cache import cache_root
from lightning_fusion.errors import DataError

log = logging.getLogger(__name__)

VERSION = 1  # of the file layout and key; raise it when either changes
CHUNK = 64  # patients decoded (and held in memory) at a time while a file is written


def memory_map_root() -> Path:
    """``$LF_CACHE_DIR/memory_map``, else ``~/.cache/lightning_fusion/memory_map``."""
    return cache_root() / "memory_map"


class MappedRows:
    """The rows of one ``.npy`` file, mapped read-only on first use; indexing copies the rows asked for.

    Pickles as its path, shape and dtype (DataLoader workers started by spawn or forkserver map
    the file themselves instead of receiving a copy of the data).

    Attributes:
        path: the ``.npy`` file.
        written_here: whether this process wrote the file (``False``: it was there, or another
            process wrote it while this one waited).
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, written_here: bool = False) -> None:
        self.path = Path(path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.written_here = written_here
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        """The read-only memory map (opened once per process)."""
        if self._array is None:
            self._array = open_mapped(self.path, self.shape, self.dtype)
        return self._array

    def checked(self) -> MappedRows:
        """Map the file now: :class:`DataError` naming it when it is not what was written."""
        _ = self.array
        return self

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        """``rows[i]``, ``rows[a:b]``, ``rows[index_array]``: those rows only, read into memory."""
        return np.array(self.array[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.array, dtype=dtype)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype, "written_here": self.written_here}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"MappedRows({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def split_key(fingerprint: Any, patient_ids: Sequence[str], have: np.ndarray, settings: dict[str, Any]) -> str:
    """Hex digest of the source's fingerprint, the split's patients (in order, and which have the
    modality), the decoding settings and :data:`VERSION`."""
    facts = {
        "source": fingerprint,
        "patients": list(patient_ids),
        "have": np.asarray(have, bool).astype(int).tolist(),
        "settings": settings,
        "version": VERSION,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def mapped_split(
    name: str,
    fingerprint: Any,
    patient_ids: Sequence[str],
    have: np.ndarray,
    settings: dict[str, Any],
    decode: Callable[[list[str]], np.ndarray],
    folder: Path | None = None,
) -> MappedRows:
    """One split of one modality as :class:`MappedRows`, written first if no process has yet.

    Args:
        name: ``<modality>-<split>``, the start of the file name.
        fingerprint: what identifies the source's data for these patients (JSON-able; e.g. file
            paths, modification times and sizes).
        patient_ids: the split's patients, in row order.
        have: ``(N,)`` bool, which of them have the modality; the others' rows are zeros.
        settings: the decoding and resizing settings (e.g. ``image_size``).
        decode: patient ids → their rows ``(n, *row)``, decoded; called for :data:`CHUNK` at a time.
        folder: where the files go (default :func:`memory_map_root`).
    """
    have = np.asarray(have, bool)
    key = split_key(fingerprint, patient_ids, have, settings)
    path = (folder or memory_map_root()) / f"{name}-{key[:24]}.npy"
    found = _readable(path)
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.with_name(path.name + ".lock")):
        found = _readable(path, warn=True)  # another process may have written it while this one waited
        if found is not None:
            return found
        shape, dtype = _write(path, patient_ids, have, decode)
    log.info("memory map: wrote %s (%s %s)", path, shape, dtype)
    try:
        return MappedRows(path, shape, dtype, written_here=True).checked()
    except DataError as err:
        raise DataError(f"{err}; delete it to have it written again") from None


def _readable(path: Path, warn: bool = False) -> MappedRows | None:
    """The file's rows if it is there and whole; ``None`` if it is missing, or (``warn``) unreadable."""
    if not path.exists():
        return None
    try:
        array = open_mapped(path)
    except DataError as err:
        if warn:
            log.warning("%s; writing it again", err)
            path.unlink(missing_ok=True)
        return None
    return MappedRows(path, array.shape, array.dtype)


def open_mapped(path: Path, shape: tuple[int, ...] | None = None, dtype: Any = None) -> np.ndarray:
    """The ``.npy`` file mapped read-only; :class:`DataError` naming it when it is truncated or not an array,
    or not of ``shape`` and ``dtype`` when given."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"memory map {path} is unreadable (truncated or corrupt?): {err}") from None
    if not isinstance(array, np.memmap) or (shape is not None and (array.shape, array.dtype) != (shape, dtype)):
        raise DataError(
            f"memory map {path} holds {getattr(array, 'shape', '?')} {getattr(array, 'dtype', '?')}, "
            f"expected {shape} {dtype}"
        )
    return array


def _write(
    path: Path, patient_ids: Sequence[str], have: np.ndarray, decode: Callable[[list[str]], np.ndarray]
) -> tuple[tuple[int, ...], np.dtype]:
    """Decode the present patients :data:`CHUNK` at a time and write every row in order into a
    temporary sibling of ``path``, then rename it into place. Returns the array's shape and dtype."""
    present = np.flatnonzero(have)
    if not len(present):
        raise DataError(f"memory map {path.name}: no patient of the split has the modality")
    first = np.asarray(decode([patient_ids[present[0]]]))
    row_shape, dtype = first.shape[1:], first.dtype
    shape = (len(patient_ids), *row_shape)
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    free = shutil.disk_usage(path.parent).free
    if free < row_bytes * len(patient_ids):
        raise DataError(
            f"memory map {path}: needs {row_bytes * len(patient_ids) / 2**30:.2f} GiB, {free / 2**30:.2f} GiB "
            f"free in {path.parent}; set LF_CACHE_DIR to a larger disk or data.memory_map false"
        )
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_2_0(stream, header)
            zero_row = np.zeros(row_shape, dtype)
            written = 0
            for start in range(0, len(present), CHUNK):
                positions = present[start : start + CHUNK]
                rows = np.asarray(decode([patient_ids[i] for i in positions]), dtype=dtype)
                if rows.shape != (len(positions), *row_shape):
                    raise DataError(
                        f"memory map {path.name}: patients {patient_ids[positions[0]]}..: rows of shape "
                        f"{rows.shape[1:]}, the first patient's are {row_shape}"
                    )
                for position, row in zip(positions, rows):
                    for _ in range(written, position):  # patients without the modality: zero rows
                        stream.write(zero_row.tobytes())
                    stream.write(np.ascontiguousarray(row).tobytes())
                    written = position + 1
            for _ in range(written, len(patient_ids)):
                stream.write(zero_row.tobytes())
        os.replace(temporary, path)
    except OSError as err:
        Path(temporary).unlink(missing_ok=True)
        raise DataError(f"memory map {path}: could not write it: {err}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return shape, dtype


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed): ``filelock`` when installed, else ``fcntl``."""
    try:
        from filelock import FileLock
    except ImportError:
        FileLock = None  # noqa: N806
    if FileLock is not None:
        with FileLock(str(path)):
            yield
        return
    import fcntl

    with open(path, "a+b") as stream:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
