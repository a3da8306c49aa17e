"""Using a trained model: find its checkpoint, load it safely, restore its fitted preprocessing, predict.

A checkpoint written by :func:`lightning_fusion.fit.run.fit` holds the resolved experiment config,
the modality specs and class names (hyper-parameters), the weights, and under ``lightning_fusion``
the fitted preprocessing (tabular imputation/scaling/selection as skops bytes, signal normalisation
as plain numbers) and the patient ids of the training run's splits. It is read with
``torch.load(weights_only=True)``: no pickled code runs. New patients go through the reader of the
model's dataset layout, the same join checks and the same fitted preprocessing as its test set.
"""

from __future__ import annotations

import copy
import logging
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from lightning_fusion.config import ExperimentConfig
from lightning_fusion.data.cohort import Cohort, join_modalities
from lightning_fusion.data.datamodule import modality_arrays, restore_preprocessors, with_placeholders
from lightning_fusion.data.dataset import collate_arrays
from lightning_fusion.data.kinds import KINDS
from lightning_fusion.errors import DataError, ModelLoadError
from lightning_fusion.evaluation.threshold import OperatingPoint
from lightning_fusion.lit import CHECKPOINT_FORMAT, CHECKPOINT_KEY, FusionLitModule

if TYPE_CHECKING:
    from lightning_fusion.explain.contributions import ModalityContributions

log = logging.getLogger(__name__)


@dataclass
class PredictionSet:
    """Predictions for the patients of one dataset, and the patients that could not be predicted."""

    frame: pd.DataFrame  # patient_id, predicted, confidence, prob_<class>..., [true], [training_split]
    excluded: dict[str, list[str]]  # reason → patient ids
    dataset: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # the model inputs, row = patient
    present: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # modality → (N,) bool, if any lack it


@dataclass
class TrainedModel:
    """A trained model ready to predict: the network in eval mode and its fitted preprocessing."""

    module: FusionLitModule
    preprocessors: dict[str, Any]
    source: Path | str  # the checkpoint file, or the runs:/ or models:/ reference it was fetched by
    splits: dict[str, list[str]]  # the training run's split (patient ids), empty if unknown
    # a binary model's decision threshold, fitted when it was trained (evaluation.threshold); None: the
    # most probable class
    operating_point: OperatingPoint | None = None

    @property
    def config(self) -> ExperimentConfig:
        return self.module.experiment_config

    @property
    def classes(self) -> list[str]:
        return self.module.classes

    @property
    def modalities(self) -> list[str]:
        return list(self.config.model.modalities)

    @property
    def specs(self) -> dict[str, dict[str, Any]]:
        """Modality → ``{"kind", "shape"}`` of one sample as the network sees it."""
        return dict(self.module.hparams["specs"])

    # ---------------------------------------------------------------------------------------------
    def read_cohort(self, root: str | Path | None = None) -> Cohort:
        """The dataset at ``root`` (default: the training dataset) through the model's reader."""
        data = self.config.data if root is None else replace(self.config.data, root=str(root))
        reader = data.reader.create()
        path = Path(data.root).expanduser() if data.root else None
        if path is not None and not path.exists():
            raise DataError(f"{path}: no such dataset folder")
        reader.prepare(path)
        return reader.read(path)

    def dataset_arrays(
        self, cohort: Cohort
    ) -> tuple[list[str], dict[str, np.ndarray], dict[str, list[str]], dict[str, np.ndarray]]:
        """Kept patient ids, their model inputs per modality, the excluded patients per reason, and presence.

        A model trained with ``data.keep_missing_modalities`` (a fusion that masks absent modalities)
        also predicts patients who lack some of its modalities, as in training: the absent rows are
        zero placeholders and ``present`` (modality → ``(N,)`` bool) marks them for the fusion. Any
        other model needs every modality.
        """
        keep = self.config.data.keep_missing_modalities and len(self.modalities) > 1
        join = join_modalities(cohort, self.modalities, self.config.data.exclude_labels, keep)
        ids = list(join.kept)
        if not ids:
            raise DataError(f"{cohort.name}: no patient has every modality the model needs ({self.modalities})")
        present = {m: join.present(m, ids) for m in self.modalities if m in join.missing}
        arrays = {}
        for modality in self.modalities:
            have = present.get(modality, np.ones(len(ids), dtype=bool))
            subset = [pid for pid, h in zip(ids, have) if h]
            values = (
                modality_arrays(cohort, modality, subset, self.config.data, self.preprocessors.get(modality))
                if subset
                else None
            )
            # zero placeholders for absent rows (never read: the fusion masks them), as in training
            arrays[modality] = with_placeholders(values, have, self.input_shape(modality), self.input_dtype(modality))
        return ids, arrays, join.excluded, present

    def input_shape(self, modality: str) -> tuple[int, ...]:
        """One sample of ``modality`` as :func:`modality_arrays` gives it (images ``(H, W, C)``)."""
        spec = self.specs[modality]
        return KINDS.get(spec["kind"]).array_shape(spec["shape"])

    def input_dtype(self, modality: str) -> type:
        """The dtype of ``modality`` as :func:`modality_arrays` gives it."""
        return KINDS.get(self.specs[modality]["kind"]).input_dtype

    def predict_arrays(
        self, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray] | None = None, batch_size: int = 64
    ) -> np.ndarray:
        """Class probabilities ``(N, K)`` for model inputs as :func:`modality_arrays` gives them.

        ``present`` (modality → ``(N,)`` bool) marks absent modalities for a model that masks them.
        """
        self.check_arrays(arrays)
        count = len(next(iter(arrays.values())))
        kinds = {m: s["kind"] for m, s in self.specs.items()}
        probs = []
        with torch.inference_mode():
            for start in range(0, count, batch_size):
                rows = slice(start, start + batch_size)
                chunk = {m: a[rows] for m, a in arrays.items()}
                flags = {m: f[rows] for m, f in present.items()} if present else None
                probs.append(self.module.probabilities(collate_arrays(chunk, kinds, flags)))
        return torch.cat(probs).numpy().astype(np.float64)

    def check_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Every modality the model needs, with the per-sample shape it was trained on."""
        missing = [m for m in self.modalities if m not in arrays]
        if missing:
            raise DataError(f"the model needs modalities {self.modalities}; missing {missing}")
        counts = {m: len(arrays[m]) for m in self.modalities}
        if len(set(counts.values())) != 1:
            raise DataError(f"every modality needs one row per patient; got {counts}")
        for modality in self.modalities:
            shape = tuple(arrays[modality].shape[1:])
            expected = self.input_shape(modality)  # images: arrays are (H, W, C), the network sees (C, H, W)
            if shape != expected:
                raise DataError(
                    f"modality {modality!r}: the model was trained on samples of shape {expected}, got {shape}"
                )

    def inputs_from_raw(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        """Model inputs from raw per-modality values (what a REST client or the web page sends).

        Images: ``(N, H, W, C)`` ``uint8`` at the model's image size, views stacked on the channel axis as
        in training. Tables: ``(N, F)`` raw values in the order of the training table's columns
        (``NaN`` for a missing value: the fitted imputation fills it), or a DataFrame with those columns.
        Signals: ``(N, leads, samples)`` raw. The fitted preprocessing is applied here.
        """
        missing = [m for m in self.modalities if m not in raw]
        if missing:
            raise DataError(f"the model needs modalities {self.modalities}; missing {missing}")
        arrays: dict[str, np.ndarray] = {}
        for modality in self.modalities:
            kind = KINDS.get(self.specs[modality]["kind"])
            arrays[modality] = kind.from_served(raw[modality], self.preprocessors.get(modality), modality)
        self.check_arrays(arrays)
        return arrays

    def predict_dataset(self, root: str | Path | None = None) -> PredictionSet:
        """Predictions for every patient of the dataset at ``root`` that has the model's modalities."""
        cohort = self.read_cohort(root)
        ids, arrays, excluded, present = self.dataset_arrays(cohort)
        probs = self.predict_arrays(arrays, present or None)
        frame = self.prediction_frame(ids, probs)
        if present:  # which modalities each patient lacked (the fusion masked them)
            frame["missing"] = ["+".join(m for m, flags in present.items() if not flags[i]) for i in range(len(ids))]
        labels = cohort.labels.reindex(ids)
        if labels.notna().any():
            frame["true"] = labels.to_numpy()
        if self.splits and root is None:  # the training dataset: say which patients the model has seen
            where = {pid: name for name, members in self.splits.items() for pid in members}
            frame["training_split"] = [where.get(pid, "") for pid in ids]
        return PredictionSet(frame, excluded, cohort.name, arrays, present)

    def feature_names(self) -> dict[str, list[str]]:
        """Tabular modality → its columns after the fitted preprocessing; signal modality → its leads."""
        return feature_names(self.preprocessors)

    def unexplained(self) -> str | None:
        """Why :meth:`explain` cannot explain this model (checked before predicting), or ``None``."""
        return None

    def explain(
        self,
        patient_ids: list[str],
        arrays: dict[str, np.ndarray],
        folder: Path,
        present: dict[str, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Explanations of these patients into ``folder`` (see :mod:`lightning_fusion.explain.files`)."""
        from lightning_fusion.explain.files import explain_patients

        self.check_arrays(arrays)
        return explain_patients(self.module, patient_ids, arrays, self.feature_names(), folder, present or None)

    def class_activation_maps(
        self, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray] | None, modality: str, target: int
    ) -> np.ndarray:
        """``(B, H, W)`` Grad-CAM maps in [0, 1] of image ``modality`` for class ``target``
        (:func:`~lightning_fusion.explain.cam.grad_cam`; its ``ValueError`` where Grad-CAM is undefined)."""
        from lightning_fusion.explain.cam import grad_cam

        kinds = {m: spec["kind"] for m, spec in self.specs.items()}
        return grad_cam(self.module, collate_arrays(arrays, kinds, present), modality, target=target)

    def modality_contributions(
        self, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray] | None, target: int
    ) -> ModalityContributions:
        """What each modality adds to class ``target``'s probability for these patients: drop-one deltas, the
        fusion's weights, Shapley values (:func:`~lightning_fusion.explain.contributions.modality_contributions`)."""
        from lightning_fusion.explain.contributions import modality_contributions

        kinds = {m: spec["kind"] for m, spec in self.specs.items()}
        batch = collate_arrays(arrays, kinds, present)
        return modality_contributions(self.module, batch, target=[target] * len(next(iter(arrays.values()))))

    def predicted_indices(self, probs: np.ndarray) -> np.ndarray:
        """Class indices ``(N,)`` for probabilities ``(N, K)``: at the operating point, else the most probable class."""
        if self.operating_point is not None:
            return self.operating_point.predict(probs)
        return np.asarray(probs).argmax(axis=1)

    def prediction_frame(self, patient_ids: list[str], probs: np.ndarray) -> pd.DataFrame:
        """``predicted`` (at the operating point), ``confidence`` (that class's probability), ``prob_<class>``."""
        predicted = self.predicted_indices(probs)
        frame = pd.DataFrame(
            {
                "patient_id": patient_ids,
                "predicted": np.asarray(self.classes)[predicted],
                "confidence": probs[np.arange(len(probs)), predicted],
            }
        )
        for i, name in enumerate(self.classes):
            frame[f"prob_{name}"] = probs[:, i]
        return frame


def feature_names(preprocessors: dict[str, Any]) -> dict[str, list[str]]:
    """Column names of fitted tabular preprocessors (after selection) and lead names of signal ones."""
    names = {}
    for modality, preprocessor in preprocessors.items():
        if hasattr(preprocessor, "output_columns"):
            names[modality] = list(preprocessor.output_columns)
        elif getattr(preprocessor, "leads", None):
            names[modality] = list(preprocessor.leads)
    return names


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by ``fit``, read with ``weights_only=True``, its config, specs, classes and
    fitted preprocessing present; a damaged or foreign file is a :class:`ModelLoadError` naming it."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"{path}: not a checkpoint that loads safely (weights_only=True), damaged or not a checkpoint: {reason}"
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or not {"config", "specs", "classes"} <= set(hparams):
        raise ModelLoadError(
            f"{path}: not a lightning_fusion checkpoint (no experiment config, modality specs and classes in it); "
            "was it saved by another model?"
        )
    ours = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(ours, dict):
        raise ModelLoadError(f"{path}: the checkpoint has no fitted preprocessing; re-train it with this version")
    if ours.get("format", 0) > CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{path}: checkpoint format {ours['format']} is newer than this lightning_fusion reads")
    return checkpoint


def without_hub_weights(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with pretrained weights off: the weights come from the checkpoint, not a hub."""
    config = copy.deepcopy(config)
    for encoder in config["model"]["encoders"].values():
        if "pretrained" in encoder:
            encoder["pretrained"] = False
        if "weights_path" in encoder:
            encoder["weights_path"] = None
    return config


def load_trained(path: str | Path) -> TrainedModel:
    """Load a checkpoint written by ``fit`` with ``weights_only=True``; errors say what is wrong with it."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    hparams, ours = checkpoint["hyper_parameters"], checkpoint[CHECKPOINT_KEY]
    config = without_hub_weights(hparams["config"])
    module = FusionLitModule(config, hparams["specs"], hparams["classes"], hparams.get("class_weights"))
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as err:  # missing, unexpected or differently shaped weights
        detail = str(err).split(":", 1)[-1].strip().splitlines()
        raise ModelLoadError(
            f"{path}: the weights do not fit the model its config describes: {' '.join(detail[:3])}"
        ) from None
    module.preprocessing = ours.get("preprocessing", {})
    module.eval()
    preprocessors = restore_preprocessors(module.experiment_config.data, module.preprocessing, str(path))
    needs = [m for m, s in hparams["specs"].items() if KINDS.get(s["kind"]).fitted and m not in preprocessors]
    if needs:
        raise ModelLoadError(f"{path}: no fitted preprocessing for modalities {needs}")
    point = ours.get("operating_point")
    point = OperatingPoint.from_dict(point) if point else None
    return TrainedModel(module, preprocessors, path, dict(ours.get("splits", {})), point)


__all__ = ["ModelLoadError", "PredictionSet", "TrainedModel", "load_trained", "read_checkpoint"]
