"""What every reader of a dataset folder shares: its options, its registry name, the root check.

A reader registers in :data:`~lightning_fusion.data.readers.READERS` (which gives it its
:attr:`~FolderReader.name`), is built as ``cls(options)``, and turns ``data.root`` into a
:class:`~lightning_fusion.data.cohort.Cohort` with ``read(root)``. ``prepare(root)`` makes data the
package generates (the demo readers); user data has nothing to generate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lightning_fusion.errors import DataError


class FolderReader:
    """Base of the readers of a dataset folder: ``cls(options)``, ``prepare(root)``, ``read(root)``."""

    registry_name: ClassVar[str]  # set by READERS.register
    holds: ClassVar[str] = "the dataset"  # what data.root holds, in the error when it is missing

    def __init__(self, options: Any) -> None:
        self.options = options

    @property
    def name(self) -> str:
        """The reader's registry name (the cohort's name too)."""
        return type(self).registry_name

    def prepare(self, root: Path | None) -> None:
        """Nothing to generate for user data (the demo readers override this)."""

    def root_folder(self, root: Path | str | None) -> Path:
        """``data.root`` as a folder that exists.

        Raises:
            DataError: ``data.root`` is not set, or is not a folder; the message names the reader.
        """
        if root is None:
            raise DataError(f"the {self.name} reader needs data.root (the folder holding {self.holds})")
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{self.name} data folder not found: {root}")
        return root
