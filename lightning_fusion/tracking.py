"""MLflow run layout: where runs land, how they are tagged, and which artifacts they keep.

Default store: ``sqlite:///mlflow.db`` in the working directory with artifacts under ``./mlruns``
(MLflow 3 refuses a plain folder as tracking URI). ``tracking.tracking_uri`` or
``$MLFLOW_TRACKING_URI`` point elsewhere (e.g. a tracking server).

A run is FINISHED only when everything, artifacts included, has been written; any error marks it
FAILED, a stop signal (SIGTERM, SIGINT) KILLED. Lightning closes its loggers after ``fit`` and again
after ``test``; :class:`RunLogger` ignores those "success" calls so a crash between them cannot leave
a run that looks finished.

Every experiment a run lands in is tagged ``mlflow.experimentKind = custom_model_development``, the
value the MLflow UI's experiment-kind selector writes for experiments of trained models. MLflow
3.17's UI picks its view from its GenAI / Model training switch instead (URL parameter
``workflowType``); ``docs/mlflow-ui.md`` has the URLs that open on the models.

A run or parent run (``compare``, ``fit --cv``, a sweep) that an interrupt ends is KILLED (:func:`end_status`).

Several processes (DDP): only global rank 0 opens the store and has the run. On the other ranks a
:class:`RunLogger` holds no MLflow client at all (creating one opens the store, and an SQLite store
created by two processes at once breaks), and every method that would use one is rank-zero-only.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from lightning_fusion.config import TrackingConfig
from lightning_fusion.errors import TrackingError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read and written by the MLflow UI (its experiment-kind selector)
MODEL_TRAINING_KIND = "custom_model_development"


def resolve_tracking_uri(configured: str | None) -> str:
    """Config value, else ``$MLFLOW_TRACKING_URI``, else the local SQLite store."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def tag_for_model_training(client: Any, experiment_id: str) -> None:
    """Mark the experiment as one of trained models for the MLflow UI (unless it already is)."""
    if client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


class RunLogger(MLFlowLogger):
    """An MLFlowLogger whose run is closed by :meth:`close`, not by Lightning's per-stage teardown."""

    def __init__(self, **options: Any) -> None:
        if rank_zero_only.rank == 0:
            try:
                super().__init__(**options)  # opens (or creates) the store
            except Exception as err:  # a locked or unreadable SQLite store, a bad URI
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise TrackingError(f"{options.get('tracking_uri')}: cannot open the MLflow store: {reason}") from None
            return
        # Not rank 0: MLFlowLogger's attributes without its client (see the module docstring).
        Logger.__init__(self)
        self._experiment_name = options.get("experiment_name", "lightning_logs")
        self._experiment_id: str | None = None
        self._tracking_uri = options.get("tracking_uri") or ""
        self._run_name = options.get("run_name")
        self._run_id = options.get("run_id")
        self.tags = options.get("tags")
        self._log_model = options.get("log_model", False)
        self._logged_model_time: dict[str, float] = {}
        self._checkpoint_callback = None
        self._prefix = options.get("prefix", "")
        self._artifact_location = options.get("artifact_location")
        self._log_batch_kwargs: dict[str, Any] = {}
        self._initialized = False
        self._mlflow_client = None

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The MLflow client; the first call creates the run and tags its experiment (created or reused).

        Lightning's logger calls ``mlflow.set_tracking_uri``, which also writes ``MLFLOW_TRACKING_URI`` into
        ``os.environ``: every process started later in this one (a notebook's next command, a sweep's worker,
        ``mlflow models serve``) would then log to this run's store. The variable is put back as it was; the
        in-process default that Lightning set stays.
        """
        before = os.environ.get("MLFLOW_TRACKING_URI")
        client = super().experiment
        if os.environ.get("MLFLOW_TRACKING_URI") != before:
            if before is None:
                del os.environ["MLFLOW_TRACKING_URI"]
            else:
                os.environ["MLFLOW_TRACKING_URI"] = before
        if not getattr(self, "_kind_tagged", False):
            tag_for_model_training(client, self._experiment_id)
            self._kind_tagged = True
        return client

    def finalize(self, status: str = "success") -> None:
        # Lightning's own exception path marks the run FAILED at once (it calls this while handling the
        # exception), unless an interrupt stopped it: the run's code marks it KILLED once it has kept
        # the last checkpoint.
        if status == "failed" and interrupt_of(sys.exc_info()[1]) is None:
            super().finalize(status)

    @rank_zero_only
    def close(self, status: str) -> None:
        """Mark the run FINISHED (``"success"``), FAILED (``"failed"``) or KILLED (``"killed"``)."""
        if status == "killed":
            if self._initialized:
                self.experiment.set_terminated(self.run_id, "KILLED")
            return
        super().finalize(status)

    def open(self) -> str:
        """Create (or open) the run now; a store that cannot be used is a :class:`TrackingError` (no run)."""
        try:
            return self.run_id or ""
        except Exception as err:  # MlflowException (server unreachable), SQLAlchemy's "database is locked"
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise TrackingError(f"{self._tracking_uri}: cannot start an MLflow run there: {reason}") from None

    @property
    def existing_run_id(self) -> str | None:
        """The run's id if it has been created (or opened), without creating it."""
        return self._run_id if self._initialized else None

    @rank_zero_only
    def reopen(self) -> None:
        """Mark the (resumed) run RUNNING again."""
        self.experiment.update_run(self.run_id, status="RUNNING")

    @rank_zero_only
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flat params (MLflow caps a value at 6000 characters; longer values are cut with a mark)."""
        self.log_hyperparams({k: _param_text(v) for k, v in params.items()})

    @rank_zero_only
    def log_text(self, text: str, artifact_file: str) -> None:
        self.experiment.log_text(self.run_id, text, artifact_file)

    @rank_zero_only
    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.experiment.log_text(self.run_id, json.dumps(data, indent=2, default=_json_default), artifact_file)

    @rank_zero_only
    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.experiment.log_figure(self.run_id, figure, artifact_file)

    @rank_zero_only
    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.experiment.log_artifact(self.run_id, str(path), artifact_path)

    @rank_zero_only
    def log_folder(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.experiment.log_artifacts(self.run_id, str(path), artifact_path)

    @rank_zero_only
    def log_frame_csv(self, frame: Any, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            frame.to_csv(path, index=False)
            parent = str(Path(artifact_file).parent)
            self.experiment.log_artifact(self.run_id, str(path), None if parent == "." else parent)


def interrupt_of(error: BaseException | None) -> BaseException | None:
    """The interrupt (Ctrl-C, or SIGTERM) behind ``error``, if there is one.

    Lightning turns a ``KeyboardInterrupt`` inside ``Trainer.fit`` into ``SystemExit(1)`` raised while
    handling it, so the interrupt is looked for along the chain of exceptions, not only at the top; a
    SIGTERM that only Lightning handled arrives as its ``SIGTERMException``.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (KeyboardInterrupt, SIGTERMException)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def end_status(error: BaseException) -> str:
    """The MLflow status of a run that ``error`` ended: ``KILLED`` for an interrupt, else ``FAILED``."""
    return "KILLED" if interrupt_of(error) is not None else "FAILED"


def create_run_logger(
    tracking: TrackingConfig, run_name: str, tags: Mapping[str, str], run_id: str | None = None
) -> RunLogger:
    """A logger for a new run in ``tracking.experiment`` (created with artifacts under ``artifact_root``),
    or for the existing run ``run_id`` (a resumed run)."""
    return RunLogger(
        experiment_name=tracking.experiment,
        run_name=tracking.run_name or run_name,
        tracking_uri=resolve_tracking_uri(tracking.tracking_uri),
        tags=dict(tags),
        # one folder per experiment: <artifact_root>/<experiment>/<run id>/artifacts
        artifact_location=(Path(tracking.artifact_root).expanduser() / _folder_name(tracking.experiment))
        .resolve()
        .as_uri(),
        log_model=False,
        run_id=run_id,
    )


def metric_key_part(text: str) -> str:
    """``text`` as one part of an MLflow metric key (``compare/<model>/auroc``): safe characters only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 6000 else text[:5980] + "...[truncated]"


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
