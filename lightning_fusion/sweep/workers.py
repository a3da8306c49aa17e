"""Which worker runs a trial, and whether a trial's worker is still alive.

A worker is one process running trials of a study (``--workers K`` starts K of them, or one is started
by hand, possibly on another machine). It has

- a **worker id**, an integer: ``--worker-id W`` (default 0); ``--workers K`` gives its processes
  W, W+1, ..., W+K-1. The id picks the worker's sampler seed (:func:`~lightning_fusion.sweep.samplers.worker_seed`),
  so workers with distinct ids never propose the same sequence, and a worker's proposals are
  reproducible from the study file and its id. Workers started by hand need distinct ids: machine A
  ``--workers 4`` (ids 0-3), machine B ``--workers 4 --worker-id 4`` (ids 4-7).
- a **process identity**, ``host:pid``, to tell whether a running trial's worker is still alive.

Each trial records both as user attributes (``lf.worker``, ``lf.process``). A worker refuses to start
with an id that a live process is using (:func:`check_worker_id_free`; it can only see a worker that
is inside a trial, which a worker nearly always is).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_fusion.errors import ConfigError

WORKER_ATTR = "lf.worker"
PROCESS_ATTR = "lf.process"
LAUNCHER_ENV = "LF_SWEEP_LAUNCHER"  # set in the workers that ``--workers K`` starts: their launcher ends the parent run


def process_identity(pid: int | None = None) -> str:
    """``host:pid`` of this process (or of ``pid`` on this host)."""
    return f"{socket.gethostname()}:{pid if pid is not None else os.getpid()}"


def process_alive(identity: str | None) -> bool:
    """Whether the process ``host:pid`` still runs; a process on another host (or unknown) is taken to run.

    On database storage, heartbeats fail the trials of a worker that died on another host.
    """
    if not identity:
        return True
    host, _, pid = identity.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    with contextlib.suppress(OSError):  # a zombie (exited, not yet reaped) does not run
        if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def live_running_trials(study: optuna.Study, not_of: Iterable[str] = ()) -> list[FrozenTrial]:
    """RUNNING trials whose worker is alive, leaving out those of the processes ``not_of``."""
    mine = set(not_of)
    return [
        t
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get(PROCESS_ATTR) not in mine and process_alive(t.user_attrs.get(PROCESS_ATTR))
    ]


def dead_workers(study: optuna.Study) -> list[str]:
    """The processes (``host:pid``) of RUNNING trials that no longer run (of this host: see :func:`process_alive`)."""
    running = study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
    identities = {t.user_attrs.get(PROCESS_ATTR) for t in running}
    return sorted(str(p) for p in identities if p and not process_alive(p))


def check_worker_id_free(study: optuna.Study, worker: int, me: str) -> None:
    """A clear error when a live process runs a trial of this study as worker ``worker``."""
    for trial in live_running_trials(study, not_of=[me]):
        if trial.user_attrs.get(WORKER_ATTR) == worker:
            raise ConfigError(
                f"worker id {worker} is in use by {trial.user_attrs.get(PROCESS_ATTR)} (running trial {trial.number} "
                f"of study {study.study_name!r}); two workers with one id would propose the same parameters: "
                "start this one with another --worker-id"
            )


def fail_trials_of(study: optuna.Study, identities: Iterable[str]) -> list[int]:
    """Mark FAIL the trials still RUNNING of the (exited) processes ``identities``; their numbers."""
    gone = set(identities)
    failed = []
    for trial in study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(PROCESS_ATTR) in gone:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                failed.append(trial.number)
    return failed


__all__ = [
    "LAUNCHER_ENV",
    "PROCESS_ATTR",
    "WORKER_ATTR",
    "check_worker_id_free",
    "dead_workers",
    "fail_trials_of",
    "live_running_trials",
    "process_alive",
    "process_identity",
]
