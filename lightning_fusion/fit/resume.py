"""``fit --resume REF``: continue a stopped run, in the same MLflow run, from its last completed epoch.

``REF`` is a run id, ``runs:/<run id>``, or a checkpoint file written by ``fit`` (it names its run).
The run must be KILLED (a stop signal ended it), FAILED (an error: a dead DDP rank, a full disk, a
lost tracking server; a warning says it may fail again) or still RUNNING (its process was killed
without a chance to say so: ``kill -9``, out of memory, a lost node; a warning says so). A FINISHED
run, a cross-validation or a sweep run is refused.

The checkpoint: ``last.ckpt`` in the run's staging folder ``<tracking.artifact_root>/.staging/<run id>/``
when it is still there (killed on this machine or on shared storage), else the run's ``resume/``
artifacts (``last.ckpt`` and the best checkpoint, logged when a signal stopped it), downloaded there.
Training continues from it with its split and fitted preprocessing (not fitted again), optimizer,
scheduler, early-stopping and checkpoint state; epochs and logged steps continue as if uninterrupted.

The config is the run's (saved in the checkpoint). ``--config`` and overrides may repeat it; a
difference is refused with its dotted keys, except for :data:`MAY_CHANGE`: where the run trains
(accelerator, devices, nodes, strategy, how batches are made and computed, tracking store and
artifact root), and ``trainer.max_epochs``, which may be raised (not lowered) to train a stopped run
for longer.

SLURM requeue: when ``fit`` runs in a SLURM job, rank 0 writes the run id to
``<artifact_root>/.staging/slurm-<job id>-<config digest>.json``; when the job is requeued
(preemption, or Lightning's SIGUSR1 auto-requeue; ``SLURM_RESTART_COUNT`` >= 1) the same command
finds that file and resumes the run. The file goes when the run finishes or fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_fusion.config import (
    ExperimentConfig,
    TrackingConfig,
    evolve,
    flatten,
    load_config,
    resolve,
    to_dict,
)
from lightning_fusion.errors import ConfigError, ModelLoadError, TrackingError
from lightning_fusion.fit import ranks

log = logging.getLogger(__name__)

MAY_CHANGE = (
    "trainer.max_epochs",  # raised only
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "data.num_workers",  # how batches are made and computed: the same network, the same weight names
    "data.pipeline",
    "data.pin_memory",
    "trainer.channels_last",
    "trainer.cudnn_benchmark",
    "trainer.compile",
    "tracking.tracking_uri",
    "tracking.artifact_root",
)
LAST = "last.ckpt"
RESUME_ARTIFACTS = "resume"  # where a stopped run keeps last.ckpt and its best checkpoint
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def staging_folder(tracking: TrackingConfig, run_id: str) -> Path:
    """Where a run's checkpoints are written while it trains (only rank 0 writes there)."""
    return Path(tracking.artifact_root).expanduser().resolve() / ".staging" / run_id


@dataclass
class ResumePoint:
    """What a resumed run starts from: its run, checkpoint, config and the checkpoint's fitted data steps."""

    run_id: str
    checkpoint: str  # last.ckpt in the run's staging folder
    config: ExperimentConfig  # the run's, with the allowed changes
    hparams: dict[str, Any]  # config, specs, classes, class_weights
    preprocessing: dict[str, dict[str, Any]]
    splits: dict[str, list[str]]
    epoch: int  # the epoch the checkpoint was saved in (0-based)
    changes: dict[str, list[Any]] = field(default_factory=dict)  # dotted key → [run's, now]

    def build_module(self):
        """The run's network, built from the checkpoint's hyper-parameters (its weights come with ``trainer.fit``)."""
        from lightning_fusion.lit import FusionLitModule
        from lightning_fusion.predict.trained_model import without_hub_weights

        hp, config = self.hparams, to_dict(self.config)
        module = FusionLitModule(without_hub_weights(config), hp["specs"], hp["classes"], hp.get("class_weights"))
        module.hparams["config"] = config  # what later checkpoints say (pretrained flags as given)
        return module


def prepare(reference: str, config_path: str | None, overrides: dict[str, Any], given: ExperimentConfig) -> ResumePoint:
    """Find the run and its checkpoint (rank 0, which tells the other processes), check the config, read it.

    ``given`` is the config of the command line (its tracking store is where the run is looked for).
    """
    from lightning_fusion.predict.trained_model import read_checkpoint

    read: dict[str, dict[str, Any]] = {}

    def place() -> dict[str, str]:
        run_id, found = _locate(reference, given.tracking)
        checkpoint = read_checkpoint(found)
        config, _ = resumed_config(checkpoint, config_path, overrides, reference)
        path = _place(found, staging_folder(config.tracking, run_id), checkpoint)
        read[str(path)] = checkpoint
        return {"run_id": run_id, "checkpoint": str(path)}

    placed = ranks.from_rank_zero("resume", place, given.trainer.accelerator)
    if placed is None:
        raise RuntimeError("--resume: this process was started by Lightning's launcher without rank 0's checkpoint")
    checkpoint = read.pop(placed["checkpoint"], None) or read_checkpoint(placed["checkpoint"])
    config, changes = resumed_config(checkpoint, config_path, overrides, reference)
    ours = checkpoint["lightning_fusion"]
    return ResumePoint(
        run_id=placed["run_id"],
        checkpoint=placed["checkpoint"],
        config=config,
        hparams={k: checkpoint["hyper_parameters"][k] for k in ("config", "specs", "classes", "class_weights")},
        preprocessing=ours.get("preprocessing", {}),
        splits=ours.get("splits", {}),
        epoch=int(checkpoint.get("epoch", 0)),
        changes=changes,
    )


def resumed_config(
    checkpoint: dict[str, Any], config_path: str | None, overrides: dict[str, Any], reference: str
) -> tuple[ExperimentConfig, dict[str, list[Any]]]:
    """The run's config with the command line's allowed changes; any other difference is a ConfigError."""
    run = resolve(checkpoint["hyper_parameters"]["config"])
    given = load_config(config_path, overrides) if config_path else evolve(run, overrides)
    before, after = flatten(to_dict(run)), flatten(to_dict(given))
    differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    refused = [k for k in differ if k not in MAY_CHANGE]
    if refused:
        shown = ", ".join(f"{k} (run: {before.get(k)!r}, given: {after.get(k)!r})" for k in refused)
        raise ConfigError(
            f"--resume {reference}: the config differs from the run's at {shown}; a resumed run keeps its config "
            f"(only {', '.join(MAY_CHANGE)} may change; trainer.max_epochs may only be raised)"
        )
    if given.trainer.max_epochs < run.trainer.max_epochs:
        raise ConfigError(
            f"--resume {reference}: trainer.max_epochs may be raised, not lowered, when a run resumes "
            f"(run: {run.trainer.max_epochs}, given: {given.trainer.max_epochs})"
        )
    return given, {k: [before.get(k), after.get(k)] for k in differ}


def _locate(reference: str, tracking: TrackingConfig) -> tuple[str, Path]:
    """The run id and a local checkpoint of ``reference`` (looked up in MLflow; rank 0 only)."""
    from mlflow.tracking import MlflowClient

    from lightning_fusion.predict.trained_model import read_checkpoint
    from lightning_fusion.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking.tracking_uri)
    path = Path(reference).expanduser()
    found: Path | None = None
    if not reference.startswith("runs:/") and path.is_file():
        found = path
        run_id = read_checkpoint(path)["lightning_fusion"].get("run", {}).get("id")
        if not run_id:
            raise ModelLoadError(f"{reference}: the checkpoint names no MLflow run to resume (written by an older fit)")
    else:
        run_id = reference.removeprefix("runs:/").strip("/").split("/")[0]
        if not _RUN_ID.fullmatch(run_id):
            raise ModelLoadError(f"{reference}: neither a checkpoint file nor a run id (runs:/<32 hex digits>)")
    client = MlflowClient(uri)
    _check_run(client, run_id, uri)
    if found is not None:
        return run_id, found
    staging = staging_folder(tracking, run_id)
    if (staging / LAST).is_file():
        return run_id, staging / LAST
    return run_id, _download(client, run_id, staging, uri)


def _check_run(client, run_id: str, uri: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ModelLoadError(f"run {run_id}: no such run in {uri} (use --tracking-uri for another store)") from None
        raise TrackingError(f"{uri}: cannot read run {run_id}: {str(err).strip().splitlines()[0]}") from None
    except Exception as err:  # SQLAlchemy: a locked or unreadable SQLite store
        raise TrackingError(f"{uri}: cannot read run {run_id}: {str(err).strip().splitlines()[0]}") from None
    status, tags = run.info.status, run.data.tags
    if status == "FINISHED":
        raise ModelLoadError(f"run {run_id} is FINISHED: there is nothing to resume")
    kinds = {"lf.cv": "a cross-validation", "lf.fold": "a cross-validation fold's", "lf.sweep": "a sweep"}
    for tag, kind in kinds.items():
        if tag in tags:
            raise ModelLoadError(f"run {run_id} is {kind} run; --resume continues a single fit run")
    if status == "FAILED":
        log.warning("run %s FAILED (an error, not a stop signal): resuming it; the error may come back", run_id)
    if status == "RUNNING":
        log.warning(
            "run %s is still RUNNING: its process ended without closing it (kill -9, out of memory, a lost node); "
            "resuming it (make sure no other process trains it)",
            run_id,
        )


def _download(client, run_id: str, staging: Path, uri: str) -> Path:
    """The run's ``resume/`` artifacts, downloaded into ``staging`` (each file renamed into place)."""
    import mlflow
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    staging.mkdir(parents=True, exist_ok=True)
    quiet = {MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name: "false"}  # errors stay one line on stderr
    with tempfile.TemporaryDirectory(dir=staging, prefix=".download-") as tmp, _environment(quiet):
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=RESUME_ARTIFACTS, dst_path=tmp, tracking_uri=uri
                )
            )
        except Exception:  # MlflowException, OSError: no such artifact folder
            local = Path(tmp) / "missing"
        files = sorted(local.glob("*.ckpt")) if local.is_dir() else []
        if not any(f.name == LAST for f in files):
            raise ModelLoadError(
                f"run {run_id} kept no checkpoint to resume from (it ended before its first epoch did, "
                f"or was killed without a chance to log one and its staging folder {staging} is gone)"
            )
        for file in files:
            os.replace(file, staging / file.name)
    return staging / LAST


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _place(found: Path, staging: Path, checkpoint: dict[str, Any]) -> Path:
    """``found`` as ``<staging>/last.ckpt``, with the best checkpoint it names beside it (copied if elsewhere)."""
    from lightning_fusion.data.cache import write_file_atomically

    if found.resolve().parent == staging.resolve() and found.name == LAST:
        return found
    staging.mkdir(parents=True, exist_ok=True)
    names = {LAST: found}
    for state in (checkpoint.get("callbacks") or {}).values():
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if best and (found.parent / Path(best).name).is_file():
            names[Path(best).name] = found.parent / Path(best).name
    for name, source in names.items():
        if source.resolve() != (staging / name).resolve():
            with source.open("rb") as stream:
                write_file_atomically(staging / name, lambda out, stream=stream: shutil.copyfileobj(stream, out))
    return staging / LAST


# --------------------------------------------------------------------------------------------------
# SLURM requeue


def requeue_file(config: ExperimentConfig) -> Path | None:
    """``<artifact_root>/.staging/slurm-<job>-<config digest>.json`` in a SLURM job, else ``None``."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    if not job:
        return None
    digest = hashlib.sha256(json.dumps(to_dict(config), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(config.tracking.artifact_root).expanduser().resolve() / ".staging" / f"slurm-{job}-{digest}.json"


def requeued_run(config: ExperimentConfig) -> str | None:
    """The run this requeued SLURM job (``SLURM_RESTART_COUNT`` >= 1) started before, if it left one."""
    path = requeue_file(config)
    if path is None or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
        return None
    try:
        return str(json.loads(path.read_text())["run_id"])
    except (OSError, ValueError, KeyError):
        return None


def remember_for_requeue(config: ExperimentConfig, run_id: str) -> None:
    """Rank 0, once the run exists: where a requeued job finds it."""
    from lightning_fusion.data.cache import write_file_atomically

    path = requeue_file(config)
    if path is not None:
        text = json.dumps({"run_id": run_id, "job": os.environ.get("SLURM_JOB_ID")}).encode()
        write_file_atomically(path, lambda out: out.write(text))


def forget_for_requeue(config: ExperimentConfig) -> None:
    path = requeue_file(config)
    if path is not None:
        path.unlink(missing_ok=True)


__all__ = [
    "MAY_CHANGE",
    "ResumePoint",
    "forget_for_requeue",
    "prepare",
    "remember_for_requeue",
    "requeued_run",
    "resumed_config",
    "staging_folder",
]
