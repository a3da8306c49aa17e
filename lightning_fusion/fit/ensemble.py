"""The ensemble model of a parent run: its members' best checkpoints, their probabilities averaged.

``fit --seeds N`` and ``fit --cv K`` log it on their parent run (rank 0): ``checkpoints/`` holds
``ensemble.json`` and each member run's best checkpoint (weights and fitted state only; see
:mod:`lightning_fusion.predict.ensemble`), so ``predict --model runs:/<parent>`` and the web page load
it like one run's model; ``model`` is its pyfunc model (``tracking.log_model``), for ``mlflow models
serve -m runs:/<parent>/model``. A binary ensemble's operating point is fitted on validation-only
probabilities of the ensemble, and where they came from is said in ``ensemble.json``, the param
``operating_point.fitted_on`` and the tag ``lf.ensemble``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lightning_fusion.evaluation.threshold import OperatingPoint
from lightning_fusion.fit.artifacts import log_operating_point
from lightning_fusion.predict.ensemble import EnsembleModel, Member, load_ensemble, write_manifest
from lightning_fusion.predict.loading import resolve_model
from lightning_fusion.predict.serving import inference_checkpoint, log_pyfunc
from lightning_fusion.tracking import RunLogger


def collect_members(tracking_uri: str, members: list[Member], folder: Path, made_by: str) -> EnsembleModel:
    """Each member run's best checkpoint (from its ``checkpoints`` artifact, slimmed) into ``folder`` as
    ``member.file``, and the ensemble of them, loaded as predict loads it."""
    for member in members:
        with tempfile.TemporaryDirectory(prefix="lf-member-") as download:
            checkpoint = resolve_model(f"runs:/{member.run_id}", tracking_uri, Path(download))
            inference_checkpoint(checkpoint, folder / member.file)
    write_manifest(folder, members, made_by)
    return load_ensemble(folder)


def log_ensemble(
    parent: RunLogger,
    folder: Path,
    ensemble: EnsembleModel,
    point: OperatingPoint | None,
    threshold_fitted_on: str,
    log_model: bool,
) -> None:
    """The ensemble in ``folder`` (members collected by :func:`collect_members`) with its operating point,
    as the parent's ``checkpoints`` and (``log_model``) its pyfunc ``model``."""
    members = [Member(**m) for m in ensemble.manifest["members"]]
    made_by = ensemble.manifest["made_by"]
    write_manifest(folder, members, made_by, point, threshold_fitted_on if point else "")
    parent.log_folder(folder, "checkpoints")
    description = f"{made_by}: mean of {len(members)} members' class probabilities"
    parent.experiment.set_tag(parent.run_id, "lf.ensemble", description)
    if point is not None:
        log_operating_point(parent, point, checkpoint="")  # the param and operating_point.json; in ensemble.json
        parent.log_params({"operating_point.fitted_on": threshold_fitted_on})
    if log_model:
        log_pyfunc(parent, folder)


__all__ = ["collect_members", "log_ensemble"]
