"""The best model of a run as an MLflow pyfunc model, so ``mlflow models serve`` answers REST predictions.

``fit`` logs it as the run's ``model`` artifact (``tracking.log_model``): the best checkpoint's
weights and fitted state (:func:`inference_checkpoint`) as the model's only artifact, a tensor input
signature with one named input per modality, and the class names and table columns as model
metadata. Serve it with::

    mlflow models serve -m runs:/<run id>/model --env-manager local -h 127.0.0.1 -p 5001

and post ``{"inputs": {"image": [...], "tabular": [[...]]}}`` to ``/invocations``: images as
``(N, H, W, C)`` ``uint8`` at the model's image size (views stacked on the channel axis), tables as
raw values ``(N, F)`` in the training table's column order (``NaN`` where missing: the fitted
imputation fills it), signals as raw ``(N, leads, samples)``. The fitted preprocessing is applied by
the model. The answer has one row per patient: ``predicted`` (for a binary model at its decision
threshold, ``evaluation.threshold``, kept in the checkpoint), ``confidence`` and ``prob_<class>``.
The logged model's input example (``input_example.json``, ``serving_input_example.json``: a request
body to start from) is a zero placeholder patient of the right shapes and dtypes, never a real one.
``--env-manager local`` serves from the environment lightning_fusion is installed in (it is not on
PyPI, so MLflow cannot build another one).
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

from lightning_fusion.data.kinds import KINDS

_REQUIREMENTS = ("torch", "torchvision", "lightning", "timm", "mlflow", "scikit-learn", "skops", "pandas", "numpy")


class FusionPyfunc(mlflow.pyfunc.PythonModel):
    """Loads its ``checkpoint`` artifact, a checkpoint file or an ensemble folder, with
    :func:`~lightning_fusion.predict.loading.load_path` (``weights_only``)."""

    # MLflow warns, when this class is defined, that ``predict`` has no type hints. Its type hints
    # describe list[...] or pydantic inputs; ours is a dict of per-modality arrays, which it does not
    # support as a hint (``dict[str, np.ndarray]`` warns "not supported"), and the tensor signature
    # checks the input instead. This is MLflow's opt-out for such models (its own ChatModel uses it):
    # without hints it would only wrap ``predict`` unchanged, so nothing else changes.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from lightning_fusion.predict.loading import load_path

        self.model = load_path(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):  # no type hints: see _skip_type_hint_validation
        if not isinstance(model_input, dict):
            raise ValueError(
                f"expected one named input per modality ({', '.join(self.model.modalities)}), e.g. "
                '{"inputs": {"image": [...], "tabular": [[...]]}}'
            )
        probs = self.model.predict_arrays(self.model.inputs_from_raw(model_input))
        frame = self.model.prediction_frame([str(i) for i in range(len(probs))], probs)
        return frame.drop(columns="patient_id")


def signature(model: Any) -> ModelSignature:
    """One tensor input per modality (shape and dtype as sent, the kind's ``served_shape`` and ``served_dtype``:
    images ``(N, H, W, C)`` ``uint8``, tables their raw columns before selection), one column per output."""
    inputs = []
    for modality in model.modalities:
        spec = model.specs[modality]
        kind = KINDS.get(spec["kind"])
        shape = kind.served_shape(spec["shape"], model.preprocessors.get(modality))
        inputs.append(TensorSpec(np.dtype(kind.served_dtype), (-1, *shape), modality))
    outputs = [ColSpec("string", "predicted"), ColSpec("double", "confidence")]
    outputs += [ColSpec("double", f"prob_{c}") for c in model.classes]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def input_example(model: Any) -> dict[str, np.ndarray]:
    """One placeholder patient as a client sends it (shapes and dtypes of :func:`signature`), all zeros.

    Deliberately no real patient: the example is stored inside the model, and a registered or served
    model may leave the place where its training data may be kept. A real request is built like this
    one, with the patient's raw values (see the module docstring).
    """
    example = {}
    for modality in model.modalities:
        spec = model.specs[modality]
        kind = KINDS.get(spec["kind"])
        shape = kind.served_shape(spec["shape"], model.preprocessors.get(modality))
        example[modality] = np.zeros((1, *shape), dtype=kind.served_dtype)
    return example


def save_pyfunc(checkpoint: str | Path, path: Path) -> Path:
    """Write the pyfunc model of ``checkpoint`` (a checkpoint file or an ensemble folder) into the new folder ``path``.

    Its input example is a zero placeholder patient (:func:`input_example`); MLflow stores it and checks
    it against the signature, and runs no prediction.
    """
    from lightning_fusion.predict.loading import load_path

    model = load_path(checkpoint)
    metadata = {
        "lightning_fusion": {
            "modalities": {m: model.specs[m]["kind"] for m in model.modalities},
            "classes": model.classes,
            # a binary model's decision threshold (evaluation.threshold); ``predicted`` uses it
            "operating_point": model.operating_point.to_dict() if model.operating_point else None,
            "table_columns": {
                m: p.input_columns for m, p in model.preprocessors.items() if hasattr(p, "input_columns")
            },
        }
    }
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # model from code: nothing pickled
        artifacts={"checkpoint": str(checkpoint)},
        signature=signature(model),
        input_example=input_example(model),
        pip_requirements=[f"{name}=={version(name)}" for name in _REQUIREMENTS],
        metadata=metadata,
    )
    return path


_INFERENCE_KEYS = ("hyper_parameters", "state_dict", "epoch", "global_step", "pytorch-lightning_version")


def inference_checkpoint(checkpoint: str | Path, path: Path) -> Path:
    """``checkpoint`` without what only resuming training needs (optimiser and scheduler state, loops,
    callbacks): about a third of the size for Adam. Loads like the full one (:func:`load_trained`)."""
    from lightning_fusion.lit import CHECKPOINT_KEY

    full = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({k: full[k] for k in (*_INFERENCE_KEYS, CHECKPOINT_KEY) if k in full}, path)
    return path


def log_pyfunc(logger: Any, checkpoint: str | Path) -> None:
    """Log the pyfunc model of ``checkpoint`` (weights and fitted state only) as the run's ``model`` artifact;
    an ensemble folder (whose members are slim already) as it is."""
    with tempfile.TemporaryDirectory() as folder:
        whole = Path(checkpoint).is_dir()
        slim = checkpoint if whole else inference_checkpoint(checkpoint, Path(folder) / Path(checkpoint).name)
        logger.log_folder(save_pyfunc(slim, Path(folder) / "model"), "model")


__all__ = ["FusionPyfunc", "input_example", "log_pyfunc", "save_pyfunc", "signature"]
