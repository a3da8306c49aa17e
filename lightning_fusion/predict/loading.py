"""A model reference → a model ready to predict: one run's checkpoint or an ensemble of several.

``--model`` of predict and the web page, and the pyfunc model's artifact, name either a checkpoint
written by ``fit`` (:class:`~lightning_fusion.predict.trained_model.TrainedModel`) or the ensemble
folder of a ``fit --seeds`` / ``fit --cv`` parent run
(:class:`~lightning_fusion.predict.ensemble.EnsembleModel`); both predict through the same methods.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lightning_fusion.errors import ModelLoadError
from lightning_fusion.predict.ensemble import MANIFEST, is_ensemble, load_ensemble
from lightning_fusion.predict.trained_model import TrainedModel, load_trained

_SCHEMES = ("runs:/", "models:/")


def resolve_model(reference: str, tracking_uri: str | None = None, download_to: Path | None = None) -> Path:
    """A local checkpoint for a file path, ``runs:/<run id>[/<artifact path>]`` or ``models:/<name>/<version>``.

    ``runs:/<run id>`` alone means the run's ``checkpoints`` folder. A folder (downloaded or given)
    holding one ``ensemble.json`` (at any depth, as in a pyfunc ``model``) holds an ensemble
    (:mod:`lightning_fusion.predict.ensemble`; its folder is returned), else it must hold exactly one
    ``.ckpt`` file. Remote URLs (http, s3, ...) are refused: a checkpoint is
    code-free only when read with ``weights_only``, and we read local files and MLflow artifacts only.
    """
    if reference.startswith(_SCHEMES):
        import mlflow

        from lightning_fusion.tracking import resolve_tracking_uri

        if reference.startswith("runs:/") and "/" not in reference.removeprefix("runs:/").strip("/"):
            reference = reference.rstrip("/") + "/checkpoints"
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=reference,
                    tracking_uri=resolve_tracking_uri(tracking_uri),
                    dst_path=str(download_to) if download_to else None,
                )
            )
        except Exception as err:  # MlflowException, OSError: say which reference failed
            raise ModelLoadError(f"{reference}: could not fetch it from MLflow: {err}") from None
    elif "://" in reference:
        raise ModelLoadError(
            f"{reference}: remote checkpoints are not loaded; download the file first, or log it to MLflow "
            "and use runs:/<run id>/... or models:/<name>/<version>"
        )
    else:
        local = Path(reference).expanduser()
        if not local.exists():
            raise ModelLoadError(f"{reference}: no such checkpoint file or folder")
    if local.is_dir():
        ensembles = sorted(path.parent for path in local.rglob(MANIFEST))  # the parent's checkpoints/, or model/
        if len(ensembles) == 1:
            return ensembles[0]
        found = sorted(local.rglob("*.ckpt"))
        if len(found) != 1:
            listed = ", ".join(str(p.relative_to(local)) for p in found) or "none"
            raise ModelLoadError(f"{reference}: expected one .ckpt file in {local}, found {len(found)} ({listed})")
        local = found[0]
    return local


def load_path(path: str | Path) -> TrainedModel:
    """A local checkpoint file (:func:`load_trained`) or ensemble folder (:func:`load_ensemble`)."""
    return load_ensemble(Path(path)) if is_ensemble(path) else load_trained(path)


def load_model(reference: str, tracking_uri: str | None = None, download_to: Path | None = None) -> TrainedModel:
    """:func:`resolve_model` then :func:`load_path`; an MLflow download is deleted once loaded."""
    if download_to is not None or not reference.startswith(_SCHEMES):
        return load_path(resolve_model(reference, tracking_uri, download_to))
    with tempfile.TemporaryDirectory(prefix="lf-model-") as folder:
        model = load_path(resolve_model(reference, tracking_uri, Path(folder)))
    model.source = reference
    return model


__all__ = ["load_model", "load_path", "resolve_model"]
