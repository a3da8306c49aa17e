"""What every reader of user data shares: it keeps its options and has nothing to generate."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FolderReader:
    """Base of the readers of a dataset folder: ``cls(options)``, ``prepare(root)``, ``read(root)``."""

    name = ""

    def __init__(self, options: Any) -> None:
        self.options = options

    def prepare(self, root: Path | None) -> None:
        """Nothing to generate for user data (the demo readers override this)."""
