"""Samplers for one study run by several workers: a seed per worker, TPE's constant liar, a grid handed out once.

- **Seeds.** ``sampler.seed`` in the study file is the study's seed; worker ``w`` (see
  :mod:`lightning_fusion.sweep.workers`) samples with :func:`worker_seed`, the ``w``-th child of
  ``numpy.random.SeedSequence(seed)`` (``SeedSequence(seed).spawn(w + 1)[w]``): distinct for every
  worker and every study seed (not ``seed + w``, which gives study seed 1's worker 0 the sequence of
  study seed 0's worker 1), and reproducible from the study file and the worker id. ``seed: null``:
  every worker draws its own from the OS.
- **TPE** runs with ``constant_liar=True``: a trial still running in another worker counts as a bad
  result, so the workers' proposals spread out instead of piling onto the same promising region.
- **Grid** (:class:`GridOnce`): every worker shuffles the grid with the *study* seed (one order for
  all), and each grid point is run once in the whole study (a failed point once more). Workers reserve
  points through the storage before they start a trial; see the class.
"""

from __future__ import annotations

import copy
import itertools
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from lightning_fusion.sweep.study import Study, grid_space
from lightning_fusion.sweep.workers import PROCESS_ATTR, process_alive, process_identity

CLAIM_ATTR = "lf.grid_point"  # trial system attribute: the grid point ({parameter: value}) the trial claimed
RESERVATION_PREFIX = "lf.grid_reservation:"  # + worker: study system attribute, the point it is about to run
STALE_RESERVATION_S = 300  # a reservation lives from reserve() to the trial's start: seconds, not minutes


def worker_seed(study_seed: int | None, worker: int) -> int | None:
    """Worker ``worker``'s sampler seed: ``SeedSequence(study_seed).spawn(worker + 1)[worker]`` as a 32-bit int."""
    if study_seed is None:
        return None
    return int(np.random.SeedSequence(study_seed, spawn_key=(worker,)).generate_state(1)[0])


def build_sampler(study: Study, worker: int = 0) -> BaseSampler:
    """The sampler of worker ``worker``: see the module docstring."""
    spec = study.spec.sampler
    if spec.name == "grid":
        return GridOnce(grid_space(study.spec), seed=spec.seed, worker=worker)
    seed = worker_seed(spec.seed, worker)
    if spec.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


class GridExhausted(RuntimeError):
    """No grid point is left for a trial: each is finished or running in another worker."""


class GridOnce(BaseSampler):
    """Every point of the grid once across all workers, a failed point again.

    Optuna's ``GridSampler`` picks a point no finished or running trial has, but two workers that
    look at the storage at the same moment can pick the same one, and it never re-runs a failed point
    (a study whose total counts finished trials then runs a visited point twice). Here a point is
    *held* by a complete or pruned trial with its parameters; by a running or waiting trial that
    claimed it (trial system attribute ``lf.grid_point``) or was enqueued with it (a heartbeat retry);
    or by a worker's reservation (study system attribute ``lf.grid_reservation:<worker>``). A failed
    trial holds nothing, nor does a running trial or reservation whose worker died on this host, nor a
    reservation older than ``STALE_RESERVATION_S``.

    Taking a point is a claim checked afterwards: write the claim, read the storage again, and if
    another trial or worker holds the same point, withdraw, wait a random moment and try again. Two
    claims cannot both stand: whichever was written last is checked after the other was written, and
    withdraws. A worker of the runner first *reserves* a point (:meth:`reserve`), before it asks Optuna
    for a trial, and stops when none is open, so no trial is ever created without a point; the trial
    then takes the reserved point (:meth:`before_trial`). Without a reservation (Optuna's own
    ``optimize`` loop) a trial claims a point itself, and fails with :class:`GridExhausted` if none is
    left.
    """

    def __init__(self, grid: dict[str, Sequence[Any]], seed: int | None = None, worker: int = 0) -> None:
        self.names = list(grid)
        points = [dict(zip(self.names, values)) for values in itertools.product(*grid.values())]
        order = np.random.default_rng(seed or 0).permutation(len(points))
        self.points = [points[i] for i in order]
        self.worker = worker  # which open point this worker tries first
        self._jitter = random.Random()  # waits only: never the order of the grid
        self._process = process_identity()
        self._reservation_key = f"{RESERVATION_PREFIX}{self._process}:{uuid.uuid4().hex[:8]}"
        self._reserved: dict[str, Any] | None = None

    def _key(self, params: dict[str, Any] | None) -> tuple | None:
        if not params or any(name not in params for name in self.names):
            return None
        return tuple(params[name] for name in self.names)

    def held(self, study: optuna.Study, but_trial: int | None = None, but_reservation: str | None = None) -> set[tuple]:
        """The points held in ``study`` (leaving out one trial's claim and one reservation)."""
        keys = set()
        for trial in study._storage.get_all_trials(study._study_id, deepcopy=False):  # not a pruner-filtered view
            if trial._trial_id == but_trial:
                continue
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                params = trial.params
            elif trial.state in (TrialState.RUNNING, TrialState.WAITING):
                if trial.state == TrialState.RUNNING and not process_alive(trial.user_attrs.get(PROCESS_ATTR)):
                    continue  # its worker died: the point was never run
                params = trial.system_attrs.get(CLAIM_ATTR) or trial.system_attrs.get("fixed_params") or trial.params
            else:
                continue  # a failed trial's point is open again
            keys.add(self._key(params))
        attrs = copy.deepcopy(study._storage.get_study_system_attrs(study._study_id))
        for name, reservation in attrs.items():
            if not name.startswith(RESERVATION_PREFIX) or name == but_reservation or not reservation:
                continue
            if time.time() - reservation["time"] < STALE_RESERVATION_S and process_alive(reservation["process"]):
                keys.add(self._key(reservation["point"]))
        keys.discard(None)
        return keys

    def open_points(self, study: optuna.Study) -> list[dict[str, Any]]:
        held = self.held(study)
        return [p for p in self.points if self._key(p) not in held]

    def _take(
        self, study: optuna.Study, write: Callable[[Any], None], prefer: Callable[[list[dict]], dict], **but: Any
    ) -> dict[str, Any] | None:
        """The claim protocol: an open point that this claim alone holds, or ``None`` when none is open."""
        for attempt in itertools.count():
            held = self.held(study, **but)
            free = [p for p in self.points if self._key(p) not in held]
            if not free:
                return None
            point = prefer(free)
            write(point)
            if self._key(point) not in self.held(study, **but):
                return point  # nobody else holds it: ours
            write(None)
            time.sleep(self._jitter.uniform(0, 0.05 * min(attempt + 1, 20)))
        raise AssertionError("unreachable")

    def reserve(self, study: optuna.Study) -> dict[str, Any] | None:
        """Reserve an open point for this worker's next trial; ``None`` when every point is held."""
        if self._reserved is None:
            key, study_id = self._reservation_key, study._study_id

            def write(point: dict[str, Any] | None) -> None:
                value = {"point": point, "process": self._process, "time": time.time()} if point else None
                study._storage.set_study_system_attr(study_id, key, value)

            self._reserved = self._take(study, write, lambda free: free[self.worker % len(free)], but_reservation=key)
        return self._reserved

    def _release(self, study: optuna.Study) -> None:
        if self._reserved is not None:
            self._reserved = None
            study._storage.set_study_system_attr(study._study_id, self._reservation_key, None)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        storage, trial_id = study._storage, trial._trial_id
        if "fixed_params" in trial.system_attrs:  # enqueued or a heartbeat retry: its point is given
            self._release(study)  # reserve again for the next trial
            return
        if self._reserved is not None:  # the point this worker reserved for it
            storage.set_trial_system_attr(trial_id, CLAIM_ATTR, self._reserved)
            self._release(study)
            return

        def write(point: dict[str, Any] | None) -> None:
            storage.set_trial_system_attr(trial_id, CLAIM_ATTR, point)

        def prefer(free: list[dict]) -> dict:  # trial k prefers the k-th point: trials started together differ
            preferred = self.points[trial.number] if trial.number < len(self.points) else None
            return preferred if preferred in free else free[trial.number % len(free)]

        self._take(study, write, prefer, but_trial=trial_id)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        point = trial.system_attrs.get(CLAIM_ATTR)
        if point is None:
            raise GridExhausted(
                f"trial {trial.number}: no grid point left (each is complete, pruned or running in another worker)"
            )
        if param_name not in point:
            raise ValueError(f"parameter {param_name!r} is not in the grid {self.names}")
        return point[param_name]

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        held = self.held(study, but_trial=trial._trial_id)  # this trial is still RUNNING in the storage
        if state in (TrialState.COMPLETE, TrialState.PRUNED):
            held.add(self._key(trial.params))
        if all(self._key(p) in held for p in self.points):
            study.stop()  # this worker; the others finish the points they hold


__all__ = ["CLAIM_ATTR", "GridExhausted", "GridOnce", "build_sampler", "worker_seed"]
