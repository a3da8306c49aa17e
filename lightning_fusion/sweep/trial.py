"""A trial that trains on several processes (DDP) runs in a fresh process of its own.

Why: Lightning's ``ddp`` launcher starts the other ranks by re-running the current command, and it
marks rank 0's own environment as launched (``LOCAL_RANK``), so a second DDP ``Trainer`` in the same
process starts no ranks, and the process group outlives ``DDPStrategy.teardown``. A sweep worker that
trained several DDP trials in-process would, on its first trial, start copies of *the whole sweep*
as the other ranks. So the worker (the only process that talks to the Optuna storage) samples the
trial's parameters, composes the experiment, writes it into a job file and starts ``python -m
lightning_fusion.sweep.trial JOB``; Lightning re-runs that command for the other ranks, which read the
same job file. :class:`SameTrialOnEveryRank` checks that every rank resolved the same configuration
before any step is taken.

Pruning: each validation epoch, the study metric (synchronised across ranks: ``sync_dist`` /
torchmetrics) is sent by rank 0 over a pipe to the worker, which reports it to its Optuna trial and
answers whether to prune; rank 0 broadcasts the answer and every rank stops together
(:class:`PruneThroughWorker`). Only rank 0 writes the result file and has an MLflow run.

Processes started by ``torchrun`` or SLURM's ``srun`` (several, each running the sweep command):
there is no trial process to start, the ranks exist already. Global rank 0 is the only worker (the
only process that opens the Optuna storage and MLflow); it hands each trial's job to the others
through the process group's store (:func:`run_trial_here`), and every rank trains it in its own
process, Trainer after Trainer on the same process group; the other ranks only follow
(:func:`follow_rank_zero`) until rank 0 says the study is done (:func:`release_followers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L

CHANNEL_ENV = "LF_TRIAL_CHANNEL"  # "<read fd>,<write fd>" of rank 0's pipes to the worker; popped at start


@dataclass
class TrialJob:
    """Everything a trial process needs; written by the worker, read by every rank."""

    config: dict[str, Any]  # the composed experiment (``to_dict``): sampled and composed once, by the worker
    parent_run_id: str
    tags: dict[str, str]
    run_name: str
    metric: str
    direction: str
    result_path: str
    prune_each_epoch: bool = False
    cv: int | None = None  # with ``fold``: train the fold model of a ``cv: K`` study
    fold: int | None = None


class TrialProcessError(RuntimeError):
    """The trial's training process failed; its traceback is in the worker's stderr above."""


# --------------------------------------------------------------------------------------------------
# Worker side


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """SIGTERM the trial process if its worker dies (Linux); Lightning then stops the other ranks."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_trial_process(job: TrialJob, report: Any = None) -> dict[str, Any]:
    """Run ``job`` in ``python -m lightning_fusion.sweep.trial`` and return rank 0's result.

    ``report(step, value) -> bool`` is called in this process for each validation epoch when
    ``job.prune_each_epoch``; it reports to the Optuna trial and says whether to prune.
    """
    with tempfile.TemporaryDirectory(prefix="lf-trial-") as folder:
        job.result_path = str(Path(folder) / "result.json")
        job_path = Path(folder) / "job.json"
        job_path.write_text(json.dumps(asdict(job)))
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ) | {CHANNEL_ENV: f"{to_child_r},{from_child_w}"}
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "lightning_fusion.sweep.trial", str(job_path)],
                pass_fds=(to_child_r, from_child_w),
                env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        try:
            with os.fdopen(from_child_r) as requests, os.fdopen(to_child_w, "w") as replies:
                for line in requests:  # ends when the trial process exits (it holds the only write end)
                    message = json.loads(line)
                    prune = bool(report(message["step"], message["value"])) if report else False
                    with contextlib.suppress(BrokenPipeError):
                        replies.write(json.dumps({"prune": prune}) + "\n")
                        replies.flush()
            code = process.wait()
        except BaseException:  # an interrupted or failing worker stops its trial's training too
            process.terminate()  # SIGTERM: the trial process ends its MLflow run, Lightning stops its ranks
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
        result = json.loads(Path(job.result_path).read_text()) if Path(job.result_path).exists() else {}
    if code != 0 or "error" in result or "best" not in result:
        reason = result.get("error") or f"exit code {code}"
        raise TrialProcessError(f"{job.run_name}: the trial's training process failed ({reason}); see its log above")
    return result


# --------------------------------------------------------------------------------------------------
# Trial process side (every rank)


def config_digest(config_dict: dict[str, Any], fold: int | None) -> str:
    return hashlib.sha256(json.dumps([config_dict, fold], sort_keys=True, default=str).encode()).hexdigest()


class SameTrialOnEveryRank(L.Callback):
    """Before training: every rank must have composed the same configuration as rank 0.

    Catches, e.g., a study or experiment file edited while the ranks were starting. All ranks raise
    together (the decision is reduced across ranks), so none is left waiting in a collective.
    """

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.world_size = 1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        same = trainer.strategy.broadcast(self.digest, src=0) == self.digest
        if not trainer.strategy.reduce_boolean_decision(same, all=True):
            raise RuntimeError(
                f"rank {trainer.global_rank}: the ranks of this trial composed different configurations "
                f"({'same as' if same else 'differs from'} rank 0); was the study or experiment file changed "
                "while the trial started?"
            )
        self.world_size = trainer.world_size


class _WorkerChannel:
    """Rank 0's line-based JSON pipe to the worker."""

    def __init__(self, spec: str) -> None:
        read_fd, write_fd = (int(v) for v in spec.split(","))
        self.replies = os.fdopen(read_fd)
        self.requests = os.fdopen(write_fd, "w")

    def ask(self, step: int, value: float) -> bool:
        self.requests.write(json.dumps({"step": step, "value": value}) + "\n")
        self.requests.flush()
        line = self.replies.readline()
        if not line:
            raise TrialProcessError("the sweep worker closed the pruning channel")
        return bool(json.loads(line)["prune"])


class _DirectChannel:
    """Rank 0 of a sweep under torchrun / srun: the worker is this process; ask its Optuna trial directly."""

    def __init__(self, report: Any) -> None:
        self.report = report

    def ask(self, step: int, value: float) -> bool:
        return bool(self.report(step, value))


class PruneThroughWorker(L.Callback):
    """Reports the (rank-synchronised) study metric to the worker each epoch; all ranks stop if it prunes."""

    def __init__(self, monitor: str, channel: _WorkerChannel | None) -> None:
        self.monitor, self.channel = monitor, channel
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_at is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(f"study metric {self.monitor!r} was not logged; logged: {sorted(trainer.callback_metrics)}")
        prune = False
        if trainer.is_global_zero and self.channel is not None:
            prune = self.channel.ask(trainer.current_epoch, float(value))
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at = trainer.current_epoch
            trainer.fit_loop.min_epochs = 0  # a backbone warm-up's minimum must not keep a pruned trial going
            trainer.should_stop = True


def _write_result(path: str, result: dict[str, Any]) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)  # the worker never reads half a result


def run_job(job: TrialJob, channel: _WorkerChannel | _DirectChannel | None) -> dict[str, Any]:
    """Train the trial (every rank); rank 0's summary is returned (``main`` writes it to ``job.result_path``)."""
    from lightning_fusion.config import resolve, to_dict
    from lightning_fusion.fit.crossval import fold_datamodule, plan_folds
    from lightning_fusion.fit.run import fit
    from lightning_fusion.sweep.best_metric import BestMetric

    config = resolve(job.config)
    datamodule = None
    if job.fold is not None:
        modalities = list(config.model.modalities)
        datamodule = fold_datamodule(config, modalities, plan_folds(config, modalities, job.cv, 1)[job.fold])
    same = SameTrialOnEveryRank(config_digest(to_dict(config), job.fold))
    best = BestMetric(job.metric, job.direction)
    pruning = PruneThroughWorker(job.metric, channel)
    callbacks: list[L.Callback] = [same, best] + ([pruning] if job.prune_each_epoch else [])
    result = fit(
        config,
        datamodule,
        job.parent_run_id,
        extra_tags=job.tags,
        callbacks=callbacks,
        run_test=False,
        run_name=job.run_name,
    )
    return {
        "best": best.best,
        "epochs": best.epochs,
        "pruned_at": pruning.pruned_at,
        "run_id": result.run_id,
        "world_size": same.world_size,
    }


def _checked(job: TrialJob, result: dict[str, Any]) -> dict[str, Any]:
    if result["best"] is None:
        raise ValueError(f"{job.metric} was never logged: no validation epoch ran (see Lightning's messages above)")
    if not math.isfinite(result["best"]):
        raise FloatingPointError(f"{job.metric} is {result['best']}")
    return result


# --------------------------------------------------------------------------------------------------
# Processes started by torchrun / srun


_SHARED = "sweep-trial"  # what rank 0 hands out: a job, or None when the study is done


def run_trial_here(job: TrialJob, report: Any = None) -> dict[str, Any]:
    """Rank 0 (the worker): hand ``job`` to the other ranks and train it with them, in this process."""
    from lightning_fusion.fit import ranks

    ranks.from_rank_zero(_SHARED, lambda: asdict(job), job.config["trainer"]["accelerator"])
    return _checked(job, run_job(job, _DirectChannel(report) if report else None))


def release_followers(accelerator: str = "auto") -> None:
    """Rank 0, once the study is done (or failed): the other ranks stop following."""
    from lightning_fusion.fit import ranks

    ranks.from_rank_zero(_SHARED, lambda: None, accelerator)


def follow_rank_zero(accelerator: str = "auto") -> int:
    """A rank > 0 of a sweep under torchrun / srun: train every trial rank 0 hands out, until it says done."""
    import logging

    from lightning_fusion.fit import ranks

    while True:
        shared = ranks.from_rank_zero(_SHARED, lambda: None, accelerator)
        if shared is None:
            return 0
        job = TrialJob(**shared)
        try:
            run_job(job, None)
        except Exception as err:  # rank 0 fails the trial in Optuna; this rank waits for the next one
            logging.getLogger(__name__).warning("%s failed on this rank: %s", job.run_name, err)


def main(argv: list[str] | None = None) -> int:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from lightning_fusion.cli import log_to_stderr, stop_on_sigterm

    stop_on_sigterm()  # the worker stops a trial with SIGTERM: end the run instead of dying with it RUNNING
    argv = sys.argv[1:] if argv is None else argv
    channel = os.environ.pop(CHANNEL_ENV, None)  # the ranks Lightning starts from here do not inherit it
    job = TrialJob(**json.loads(Path(argv[0]).read_text()))
    log_to_stderr()
    try:
        result = _checked(job, run_job(job, _WorkerChannel(channel) if channel else None))
    except Exception as err:
        if rank_zero_only.rank == 0:
            _write_result(job.result_path, {"error": f"{type(err).__name__}: {err}"})
        raise
    if rank_zero_only.rank == 0:
        _write_result(job.result_path, result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
