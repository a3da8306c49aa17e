"""Which process this is when several train one model, and how rank 0 tells the others what it decided.

Three launchers start the processes of a multi-process (DDP) run:

* Lightning's own (``--trainer.devices N`` from one command): rank 0 runs the command alone until
  ``trainer.fit``, which re-runs the command for ranks 1..N-1 with ``LOCAL_RANK`` set. By then rank 0
  has read the data and created the MLflow run; what the others need from it travels in the
  environment they inherit.
* ``torchrun`` (Lightning's ``TorchElasticEnvironment``) and SLURM's ``srun`` (``SLURMEnvironment``):
  every process runs the whole command from the start, at the same time. Only global rank 0 creates
  or opens the MLflow store and the run (an SQLite store created by two processes at once breaks);
  the others wait for it through the store of the ``torch.distributed`` process group, which is set
  up here with Lightning's own ``_init_dist_connection`` and the launcher's cluster environment, and
  which the Trainer then reuses (Lightning skips its own set-up when a process group exists).

The rank is Lightning's ``rank_zero_only.rank``, read from ``RANK`` / ``LOCAL_RANK`` /
``SLURM_PROCID`` when Lightning is imported and set to the Trainer's global rank once one runs: the
same rank that decides which process logs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_fusion import errors

T = TypeVar("T")

_ENV_PREFIX = "LF_FROM_RANK_ZERO_"  # rank 0's decisions, for the ranks Lightning's launcher starts later
_calls: dict[str, int] = {}  # per name: how many times this process has shared it (the same on every rank)


def global_rank() -> int:
    """This process's global rank as Lightning sees it (0 for a single process)."""
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_global_zero() -> bool:
    return global_rank() == 0


def external_environment() -> ClusterEnvironment | None:
    """Lightning's cluster environment when a launcher (``srun``, ``torchrun``) started several processes.

    The same detection, in the same order, as Lightning's Trainer: SLURM first, then torchelastic.
    """
    if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return SLURMEnvironment(auto_requeue=False)  # only for addresses and ranks; the Trainer makes its own
    if TorchElasticEnvironment.detect() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return TorchElasticEnvironment()
    return None


def check_launcher() -> None:
    """Refuse Lightning's by-hand multi-node start (``NODE_RANK=1 python -m ...``): before its Trainer
    exists, that node's first process looks like rank 0 and would open the store and make a run of its own."""
    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK")
    if node and int(node) > 0 and _get_rank() is None:
        raise errors.ConfigError(
            f"NODE_RANK={node} without RANK / LOCAL_RANK / SLURM_PROCID: start several machines with torchrun "
            "(--nnodes, --rdzv-endpoint) or SLURM's srun, which give every process its rank (docs/multi-node.md)"
        )


def _backend(accelerator: str) -> str:
    """The process-group backend Lightning's DDP picks for this accelerator: NCCL on CUDA, Gloo otherwise."""
    import torch

    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def _store(environment: ClusterEnvironment, accelerator: str):
    """The key-value store of the default process group (initialised here if need be, as Lightning would)."""
    import torch.distributed as dist
    from lightning.fabric.utilities.distributed import _init_dist_connection

    if not dist.is_initialized():
        # Lightning's DDP strategy finds the group initialised and uses it; NCCL connects lazily, at
        # the first collective, by which time Lightning has chosen each process's device.
        _init_dist_connection(environment, _backend(accelerator))
    return dist.distributed_c10d._get_default_store()


def _key(name: str) -> str:
    count = _calls.get(name, 0)
    _calls[name] = count + 1
    return f"lightning_fusion/{name}/{count}"


def _error_message(err: BaseException) -> str:
    return json.dumps({"error": type(err).__name__, "message": str(err)})


_KNOWN = {
    cls.__name__: cls
    for cls in (
        errors.ConfigError,
        errors.DataError,
        errors.LeakageError,
        errors.ModelLoadError,
        errors.PretrainedWeightsError,
        errors.TrackingError,
        errors.UnknownNameError,
    )
}


def _raise_from(rank: int, message: dict[str, str]) -> None:
    """Raise what another rank raised: our input errors as themselves (one line, exit 2), others as RuntimeError."""
    cls = _KNOWN.get(message["error"])
    if cls is not None:
        raise cls(message["message"])
    raise RuntimeError(f"rank {rank} failed: {message['error']}: {message['message']}")


@contextmanager
def together(name: str, accelerator: str = "auto") -> Iterator[None]:
    """Every process runs the block; when one of them raises, every process raises (its error).

    With processes started by ``srun`` / ``torchrun``, each posts its outcome and reads everyone's,
    so a rank that finds bad input stops the others before rank 0 creates a run. A no-op otherwise.
    """
    environment = external_environment()
    if environment is None:
        yield
        return
    store = _store(environment, accelerator)
    key, rank, size = _key(name), environment.global_rank(), environment.world_size()
    try:
        yield
    except BaseException as err:
        store.set(f"{key}/{rank}", _error_message(err))
        raise
    store.set(f"{key}/{rank}", json.dumps({}))
    for other in range(size):
        message = json.loads(store.get(f"{key}/{other}"))
        if message:
            _raise_from(other, message)


def from_rank_zero(name: str, produce: Callable[[], T], accelerator: str = "auto") -> T | None:
    """Rank 0 runs ``produce()`` (JSON-safe result); every other process gets that result, or its error.

    ``srun`` / ``torchrun``: through the process group's store (the others wait for rank 0). Lightning's
    own launcher: rank 0 also puts the result in its environment, which the ranks it starts inside
    ``trainer.fit`` inherit; a rank that finds nothing there gets ``None``.
    """
    environment = external_environment()
    key = _key(name)
    variable = _ENV_PREFIX + re.sub(r"\W", "_", name).upper()  # the latest value: what a child started now needs
    if environment is None:
        if is_global_zero():
            value = produce()
            os.environ[variable] = json.dumps(value)
            return value
        text = os.environ.get(variable)
        return json.loads(text) if text is not None else None
    store = _store(environment, accelerator)
    if environment.global_rank() == 0:
        try:
            value = produce()
        except BaseException as err:
            store.set(key, _error_message(err))
            raise
        store.set(key, json.dumps({"value": value}))
        return value
    message = json.loads(store.get(key))
    if "value" not in message:
        _raise_from(0, message)
    return message["value"]


__all__ = ["check_launcher", "external_environment", "from_rank_zero", "global_rank", "is_global_zero", "together"]
