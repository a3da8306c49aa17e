"""The parent MLflow run of several member fits: ``fit --cv`` (one child per fold), ``fit --seeds`` (one per seed).

Every process opens it together (rank 0 alone creates it; a store it cannot use stops all of them
before any training), it holds the experiment's params and ``config.yaml``, and it ends FINISHED,
FAILED on an error, or KILLED on Ctrl-C or SIGTERM (:class:`~lightning_fusion.fit.signals.RunInterrupted`,
raised with its id; such a parent is not resumed). The member fits are children of it
(:func:`~lightning_fusion.fit.run.fit` with ``parent_run_id``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning_fusion.config import ExperimentConfig, flatten, to_dict, to_yaml
from lightning_fusion.fit import ranks, signals
from lightning_fusion.tracking import RunLogger, create_run_logger


@contextmanager
def parent_run(
    config: ExperimentConfig, name: str, tags: dict[str, str], params: dict[str, Any]
) -> Iterator[RunLogger]:
    """The open parent run, closed as the block ends (FINISHED on rank 0 when it ends normally).

    Args:
        name: the run name; ``tags`` its tags; ``params`` added to the config's flattened keys.
    """
    with ranks.together("store", config.trainer.accelerator):  # rank 0 opens the store; its error stops all
        parent = create_run_logger(config.tracking, name, tags)
        if ranks.is_global_zero():
            parent.open()  # a store that cannot be used: one line (tracking error), no run
    try:
        parent.log_params(flatten(to_dict(config)) | params)
        parent.log_text(to_yaml(config), "config.yaml")
        yield parent
        if ranks.is_global_zero():
            parent.close("success")
    except BaseException as error:
        signals.closing()
        signum = signals.stop_signal(error)
        parent.close("failed" if signum is None else "killed")
        if signum is None:
            raise
        raise signals.RunInterrupted(signum, parent.existing_run_id) from error


__all__ = ["parent_run"]
