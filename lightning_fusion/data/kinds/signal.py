"""The ``signal`` kind: a ``(leads, samples)`` ``float32`` time series per patient (e.g. a 12-lead ECG).

The normalisation (:class:`~lightning_fusion.data.signal.SignalPreprocessor`, z-score per lead by
default) is fitted on the training signals. A served model takes raw ``(N, leads, samples)``
``float32`` signals; an upload is a ``.npy`` array or a CSV with one row per lead. Explained with
Integrated Gradients per lead and sample. Training batches are augmented by the ``data.signal.augment``
policy (:mod:`lightning_fusion.data.signal_augment`). Same-kind signals of an early fusion are resampled to the
longest and stacked as leads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lightning_fusion.data.kinds.base import ModalityKind
from lightning_fusion.data.kinds.registry import KINDS
from lightning_fusion.data.kinds.upload import ModalityInput, UploadReading, number
from lightning_fusion.data.signal import SignalPreprocessor
from lightning_fusion.errors import UploadError

SIGNAL_SUFFIXES = (".npy", ".csv")


class SignalKind(ModalityKind):
    """Time series: network samples and arrays ``(leads, samples)`` ``float32`` after the fitted normalisation."""

    name = "signal"
    label = "signal"
    unimodal_model = "signal"
    input_dtype = np.float32
    served_dtype = np.float32
    batch_ndim = 3
    fitted = True
    explanation = "integrated_gradients"
    explanation_summary = (
        "Integrated Gradients of the predicted class's logit from a zero signal (the training mean "
        "of each lead after normalisation); per lead summed over time in signal_attributions.csv"
    )

    def fit(self, source: Any, patient_ids: Sequence[str], labels: np.ndarray, data: Any) -> tuple[Any, np.ndarray]:
        """The normalisation fitted on the training signals (read once), and those signals normalised."""
        train = source.load_many(patient_ids)
        preprocessor = SignalPreprocessor(data.signal).fit(train, leads=source.leads)
        return preprocessor, preprocessor.transform(train)

    def load(self, source: Any, patient_ids: Sequence[str], data: Any, preprocessor: Any) -> np.ndarray:
        """``(N, leads, samples)`` ``float32``, normalised."""
        return preprocessor.transform(source.load_many(patient_ids))

    def restore(self, data: Any, state: dict[str, Any], source: str) -> Any:
        return SignalPreprocessor.from_state(data.signal, state)

    def batch_augmentation(self, data: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The ``data.signal.augment`` policy on ``(B, leads, samples)`` batches; ``None`` for ``none``."""
        from lightning_fusion.data.signal_augment import SignalAugment

        return SignalAugment(data.signal.augment) if data.signal.augment != "none" else None

    def augmentation_policy(self, data: Any) -> str | None:
        return data.signal.augment if data.signal.augment != "none" else None

    def from_served(self, value: Any, preprocessor: Any, modality: str) -> np.ndarray:
        """Raw ``(N, leads, samples)`` → normalised ``float32``."""
        return preprocessor.transform(np.asarray(value, dtype=np.float32))

    def merged_shape(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        """Leads summed; the longest length."""
        return (sum(s[0] for s in shapes), max(s[1] for s in shapes))

    def merge(self, tensors: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        """``(B, leads_i, T_i)`` resampled (linear) to the longest ``T`` and stacked as leads."""
        length = shape[1]
        tensors = [t if t.shape[-1] == length else F.interpolate(t, size=length, mode="linear") for t in tensors]
        return torch.cat(tensors, dim=1)

    # ---------------------------------------------------------------------------------------------
    def describe_upload(self, model: Any, modality: str, shape: tuple[int, ...], options: Any) -> ModalityInput:
        """One ``.npy`` array or CSV of exactly ``(leads, samples)``; lead names from the fitted state."""
        leads, samples = shape
        names = tuple(getattr(model.preprocessors.get(modality), "leads", None) or ())
        summary = (
            f"{leads} lead(s) × {samples} samples: a .npy array of shape ({leads}, {samples}), "
            f"or a CSV with one row per lead ({leads} row(s) of {samples} numbers; a header row and a lead-name "
            "column are allowed)"
        )
        return ModalityInput(
            name=modality,
            kind=self.name,
            suffixes=SIGNAL_SUFFIXES,
            count=1,
            summary=summary,
            details=(f"leads, in row order: {', '.join(names)}",) if names else (),
            shape=shape,
            leads=names,
        )

    def read_upload(
        self, item: ModalityInput, paths: list[Path], names: list[str], folder: Path, preprocessor: Any
    ) -> UploadReading:
        """The file → ``(1, leads, samples)``, normalised as in training."""
        try:
            signal = read_signal(paths[0], names[0], item.shape)
        except UploadError as err:
            raise UploadError(f"{item.name}: {err}") from None
        return UploadReading(preprocessor.transform(signal[None]))

    def public(self, item: ModalityInput) -> dict[str, Any]:
        described: dict[str, Any] = {"leads": len(item.leads) or item.shape[0], "samples": item.shape[1]}
        if item.leads:
            described["lead_names"] = list(item.leads)
        return described


def read_signal(path: Path, name: str, shape: Sequence[int]) -> np.ndarray:
    """A ``(leads, samples)`` ``float32`` signal of exactly ``shape`` from a ``.npy`` or ``.csv`` file."""
    shape = tuple(int(n) for n in shape)
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise UploadError(f"{name!r}: not a readable .npy array: {err}") from None
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
            raise UploadError(f"{name!r}: expected a numeric array, got {getattr(array, 'dtype', type(array))}")
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2:
            raise UploadError(
                f"{name!r}: expected a (leads, samples) array of shape {shape}, got {array.ndim} dimensions "
                f"{array.shape}"
            )
    else:
        array = _csv_signal(path, name, shape)
    if array.shape != shape:
        hint = "; it looks transposed: one row per lead" if array.shape == shape[::-1] else ""
        raise UploadError(
            f"{name!r}: {array.shape[0]} lead(s) × {array.shape[1]} samples; the model needs {shape[0]} lead(s) × "
            f"{shape[1]} samples{hint}"
        )
    bad = ~np.isfinite(array.astype(np.float64))
    if bad.any():
        lead, sample = (int(i) for i in np.argwhere(bad)[0])
        raise UploadError(
            f"{name!r}: {int(bad.sum())} missing or non-finite value(s), first at lead {lead}, sample {sample}"
        )
    return array.astype(np.float32)


def _csv_signal(path: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """One row per lead; a header row and a first column of lead names or indices are dropped when they hold text.

    Of the readings with and without them, the first whose numbers have the expected shape is used.
    """
    try:
        cells = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, skip_blank_lines=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UploadError(f"{name!r}: cannot read it as a CSV of one row per lead: {first}") from None
    text = [[str(cell).strip() for cell in row] for row in cells.fillna("").to_numpy(dtype=object)]
    parsed = [[number(cell) for cell in row] for row in text]
    numbers = np.array([[np.nan if v is None else v for v in row] for row in parsed], dtype=np.float64)
    words = np.array([[v is None and cell != "" for v, cell in zip(*pair)] for pair in zip(parsed, text)], dtype=bool)
    numbers, words = numbers.reshape(cells.shape), words.reshape(cells.shape)
    if not words.size:
        raise UploadError(f"{name!r}: the CSV holds no values")
    has_header, has_labels = bool(words[0].any()), bool(words[:, 0].any())
    for header, labels in ((0, 0), (0, 1), (1, 0), (1, 1)):
        if (header and not has_header) or (labels and not has_labels):
            continue
        block = numbers[header:, labels:]
        if block.shape == shape and np.isfinite(block).all():
            return block
    header = int(has_header and (words[0, 1:].any() or not words[1:, 0].any()))
    labels = int(bool(words[header:, 0].any()) or bool(header and words[0, 0]))
    block = numbers[header:, labels:]
    if block.shape == shape:  # the right size, but a cell that is not a number
        row, column = (int(i) for i in np.argwhere(~np.isfinite(block))[0])
        value = text[row + header][column + labels]
        raise UploadError(
            f"{name!r}: lead {row}, sample {column}: {value!r} is not a number"
            if value
            else f"{name!r}: lead {row}, sample {column} is empty"
        )
    return block


SIGNAL = KINDS.register(SignalKind.name)(SignalKind())
