"""What the code needs to know about one kind of modality (image, vector, signal), in one object.

A modality *source* (:mod:`lightning_fusion.data.modalities`) says where a dataset's data is; its
``kind`` names a :class:`ModalityKind` in :data:`~lightning_fusion.data.kinds.KINDS`, which says how
that data becomes a model input and back. Three layouts of the same sample appear throughout:

* the *network* layout: one sample as the encoder sees it, the ``shape`` of a ``ModalitySpec``
  (images ``(C, H, W)``, tables ``(F,)``, signals ``(leads, samples)``);
* the *array* layout: one row of what :meth:`ModalityKind.load` returns (images ``(H, W, C)``
  ``uint8``, the rest as in the network), :attr:`ModalityKind.input_dtype`; what the data module
  holds, what prediction and explanation batch (:meth:`ModalityKind.to_tensor`);
* the *transfer* layout: a batch as the ``device`` pipeline's loader gathers it and moves it to the
  training device (:meth:`ModalityKind.batch_rows`; images stay ``uint8``), which
  :meth:`ModalityKind.finish_batch` turns into network samples there;
* the *served* layout: one row of what a REST client sends before any fitted preprocessing
  (:meth:`ModalityKind.served_shape`, :attr:`ModalityKind.served_dtype`).

Kinds are stateless singletons; per-dataset state (a fitted table pipeline, lead statistics) is the
*preprocessor* that :meth:`ModalityKind.fit` returns and the caller keeps. This package imports no
command package (``predict``, ``explain``, ``app``, ``fit``, ``compare``): where those act per kind
(the explanation writers, the upload form) they look up a name or a method of the kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from lightning_fusion.config import DataConfig
    from lightning_fusion.data.kinds.upload import ModalityInput, UploadReading

Preprocessor = Any  # a fitted per-modality preprocessor: .transform, .state(), .summary() (or None)


class ModalityKind(ABC):
    """One kind of modality: loading, fitted preprocessing, tensor layouts, fusion, explanation, uploads.

    Attributes:
        name: the registry name, the ``kind`` of sources and specs (``image``, ``vector``, ``signal``).
        label: how the upload form names it (``clinical table`` for vectors).
        unimodal_model: the ``lf.model_kind`` tag of a one-modality model of this kind (``cnn``, ``ann``).
        input_dtype: dtype of the model-input arrays :meth:`load` returns.
        served_dtype: dtype of the raw input a served model accepts (:mod:`lightning_fusion.predict.serving`).
        batch_ndim: dimensions of a batch of network inputs (images 4, signals 3, tables 2); identifies
            the kind of a batch given without specs.
        fitted: whether :meth:`fit` returns a preprocessor that checkpoints must hold.
        explanation: the attribution method for this kind: ``grad_cam`` or ``integrated_gradients``
            (the function that :mod:`lightning_fusion.explain` runs for it).
        explanation_summary: one line for ``explanations.json`` on how the explanation reads.
        details_separator: joins the upload's ``details`` on the form.
    """

    name: str
    label: str
    unimodal_model: str
    input_dtype: type
    served_dtype: type
    batch_ndim: int
    fitted: bool = False
    explanation: str
    explanation_summary: str
    details_separator: str = "; "

    # ---------------------------------------------------------------------------------------------
    # Data: training and prediction
    # ---------------------------------------------------------------------------------------------
    @abstractmethod
    def fit(
        self, source: Any, patient_ids: Sequence[str], labels: np.ndarray, data: DataConfig
    ) -> tuple[Preprocessor | None, np.ndarray]:
        """Fit the preprocessing on training patients: ``(preprocessor or None, their model inputs (N, ...))``."""

    @abstractmethod
    def load(self, source: Any, patient_ids: Sequence[str], data: DataConfig, preprocessor: Preprocessor) -> np.ndarray:
        """The model inputs ``(N, ...)`` (array layout) of ``patient_ids``, fitted preprocessing applied."""

    def decoding_settings(self, data: DataConfig) -> dict[str, Any] | None:
        """The settings that shape :meth:`load`'s rows when nothing is fitted (part of a memory map's key),
        or ``None`` when the rows need fitted preprocessing: ``data.memory_map`` keeps those in memory."""
        return None

    def restore(self, data: DataConfig, state: dict[str, Any], source: str) -> Preprocessor:
        """The preprocessor :meth:`fit` returned, from its ``state()`` in a checkpoint (kinds with ``fitted``)."""
        raise NotImplementedError(f"{self.name} modalities have no fitted preprocessing")

    # ---------------------------------------------------------------------------------------------
    # Layouts: array rows, network tensors, placeholders
    # ---------------------------------------------------------------------------------------------
    def array_shape(self, sample_shape: Sequence[int]) -> tuple[int, ...]:
        """One array row's shape for a network sample of ``sample_shape`` (the same unless overridden)."""
        return tuple(int(n) for n in sample_shape)

    def to_tensor(self, value: np.ndarray, augmentation: Callable[..., dict[str, Any]] | None = None) -> torch.Tensor:
        """One array row → one ``float32`` network sample (``augmentation`` is for kinds that have one)."""
        return torch.tensor(value, dtype=torch.float32)

    def batch_rows(self, values: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """Array rows ``values[rows]`` → one batch as the ``device`` pipeline's loader hands it over.

        The *transfer* layout: by default the network layout, ``float32``, equal to stacking
        :meth:`to_tensor` of each row without augmentation.
        """
        return torch.from_numpy(np.asarray(values[rows], dtype=np.float32))

    def batch_augmentation(self, data: DataConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """This kind's train-only augmentation of whole network batches on the training device, or ``None``.

        The training step hands it to :meth:`finish_batch` (never validation, test or prediction).
        Kinds whose loader does per-sample work (images in the ``per_sample`` pipeline) augment there
        instead and apply it to ``device`` batches only; for the others (signals, tables) the batch is
        the same tensor in both pipelines and is augmented here in both.
        """
        return None

    def augmentation_policy(self, data: DataConfig) -> str | None:
        """This kind's train-only augmentation in words (``safe``, ``noise 0.1``), ``None`` when it has none."""
        return None

    def finish_batch(
        self, batch: torch.Tensor, augmentation: Callable[[torch.Tensor], torch.Tensor] | None, channels_last: bool
    ) -> torch.Tensor:
        """A batch on the training device (transfer or network layout) → the network batch.

        ``augmentation`` is :meth:`batch_augmentation`'s, given in training only; the default
        (transfer layout = network layout) applies it when given and returns the batch otherwise.
        """
        return augmentation(batch) if augmentation is not None else batch

    def placeholder(self, count: int, sample_shape: Sequence[int]) -> np.ndarray:
        """``(count, *array_shape)`` zeros of :attr:`input_dtype`: the rows of patients who lack the modality."""
        return np.zeros((count, *self.array_shape(sample_shape)), dtype=self.input_dtype)

    # ---------------------------------------------------------------------------------------------
    # Serving: raw values a REST client sends
    # ---------------------------------------------------------------------------------------------
    def served_shape(self, sample_shape: Sequence[int], preprocessor: Preprocessor) -> tuple[int, ...]:
        """One served row's shape (before the fitted preprocessing)."""
        return self.array_shape(sample_shape)

    @abstractmethod
    def from_served(self, value: Any, preprocessor: Preprocessor, modality: str) -> np.ndarray:
        """Raw served values ``(N, ...)`` → model inputs (array layout), fitted preprocessing applied."""

    # ---------------------------------------------------------------------------------------------
    # Input-level (early) fusion of same-kind modalities
    # ---------------------------------------------------------------------------------------------
    def merged_shape(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        """The network sample shape of several same-kind samples merged into one (concatenated on axis 0)."""
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def merge(self, tensors: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        """Batches ``(B, *shape_i)`` of same-kind modalities → one ``(B, *shape)`` batch (concatenated on dim 1)."""
        return torch.cat(tensors, dim=1)

    # ---------------------------------------------------------------------------------------------
    # One patient's upload (the web page, ``predict --patient``)
    # ---------------------------------------------------------------------------------------------
    @abstractmethod
    def describe_upload(self, model: Any, modality: str, shape: tuple[int, ...], options: Any) -> ModalityInput:
        """What one patient's upload of ``modality`` must be, for a trained ``model``.

        ``model`` is a :class:`~lightning_fusion.predict.trained_model.TrainedModel` (only its
        ``preprocessors`` and ``config`` are read), ``shape`` the network sample shape and ``options``
        the typed options of the reader it was trained through (``None`` when unknown).
        """

    @abstractmethod
    def read_upload(
        self, item: ModalityInput, paths: list[Path], names: list[str], folder: Path, preprocessor: Preprocessor
    ) -> UploadReading:
        """The saved upload files (``paths``, shown as ``names``) → a ``(1, ...)`` model input.

        ``folder`` (the upload's temporary folder) is hidden from messages. Raises :class:`UploadError`.
        """

    def public(self, item: ModalityInput) -> dict[str, Any]:
        """What the model's JSON description adds for this kind's upload."""
        return {}

    def count_text(self, item: ModalityInput) -> str:
        """The files expected, in words (``1 .csv or .xlsx file``)."""
        return f"1 {' or '.join(item.suffixes)} file"

    def details_title(self, item: ModalityInput) -> str:
        """The heading of the upload's ``details`` on the form."""
        return "details"

    def __repr__(self) -> str:
        return f"<modality kind {self.name!r}>"
