"""Checkpoints a kill cannot spoil, and a ModelCheckpoint that still finds its files in another folder.

Lightning's ``TorchCheckpointIO`` opens the target file and writes into it: a process killed while
saving (preemption, ``kill -9``, a full disk) leaves a truncated ``last.ckpt`` where a good one was.
:class:`AtomicCheckpointIO` writes a temporary sibling, flushes it to disk and renames it into place
(``os.replace``), so a reader sees the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_fusion.data.cache import write_file_atomically

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary sibling file, ``fsync``, then ``os.replace`` onto the target."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):  # remote storage: Lightning's own
            super().save_checkpoint(checkpoint, path, storage_options)
            return

        def write(stream) -> None:
            torch.save(checkpoint, stream)
            stream.flush()
            os.fsync(stream.fileno())

        write_file_atomically(Path(path), write)


class RunCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose resumed state follows its files into a new folder.

    The state saved in a checkpoint names files by their full path. A run resumed from another
    folder (its checkpoints downloaded from MLflow, or a different ``tracking.artifact_root``) looks
    for the same file names in its own folder; a best checkpoint that is not there is forgotten (the
    next epoch becomes the best) with a warning, rather than tested from a path that does not exist.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath:
            state_dict = dict(state_dict, dirpath=self.dirpath)
            if os.path.realpath(old) != os.path.realpath(self.dirpath):

                def moved(path: str) -> str:
                    return os.path.join(self.dirpath, os.path.basename(path)) if path else path

                for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                    state_dict[key] = moved(state_dict.get(key, ""))
                state_dict["best_k_models"] = {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}
        best = state_dict.get("best_model_path")
        if best and not os.path.isfile(best):
            log.warning("the resumed run's best checkpoint %s is missing; the next epoch becomes the best", best)
            state_dict = dict(
                state_dict, best_model_path="", best_model_score=None, kth_best_model_path="", best_k_models={}
            )
        super().load_state_dict(state_dict)


__all__ = ["AtomicCheckpointIO", "RunCheckpoint"]
