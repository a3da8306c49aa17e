"""The ``vector`` kind: one row of numeric features per patient (a clinical table), ``(F,)`` ``float32``.

The tabular pipeline (:class:`~lightning_fusion.data.tabular.TabularPreprocessor`: impute, indicators,
z-score, selection) is fitted on the training patients and applied to every row. A served model
takes the raw ``(N, F_in)`` ``float64`` values in the training table's column order (``NaN`` where
missing); an upload is a one-row CSV or .xlsx table. Explained with Integrated Gradients per feature.
Not augmented by default; ``data.tabular.noise`` adds train-only Gaussian feature noise.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lightning_fusion.data.kinds.base import ModalityKind
from lightning_fusion.data.kinds.registry import KINDS
from lightning_fusion.data.kinds.upload import ModalityInput, UploadReading, number
from lightning_fusion.errors import DataError, UploadError

TABLE_SUFFIXES = (".csv", ".xlsx")


class VectorKind(ModalityKind):
    """Feature rows: network samples and arrays ``(F,)`` ``float32`` after the fitted tabular pipeline."""

    name = "vector"
    label = "clinical table"
    unimodal_model = "ann"
    input_dtype = np.float32
    served_dtype = np.float64
    batch_ndim = 2
    fitted = True
    explanation = "integrated_gradients"
    explanation_summary = (
        "Integrated Gradients of the predicted class's logit from a zero baseline "
        "(the training mean after z-scoring); values are the preprocessed inputs"
    )
    details_separator = ", "

    def fit(self, source: Any, patient_ids: Sequence[str], labels: np.ndarray, data: Any) -> tuple[Any, np.ndarray]:
        """The tabular pipeline fitted on the training rows, and those rows transformed ``(N, F)``."""
        from lightning_fusion.data.tabular import TabularPreprocessor  # scikit-learn: imported when needed

        preprocessor = TabularPreprocessor(data.tabular)
        preprocessor.fit(source.rows(patient_ids), labels, source=source.source)
        return preprocessor, self.load(source, patient_ids, data, preprocessor)

    def load(self, source: Any, patient_ids: Sequence[str], data: Any, preprocessor: Any) -> np.ndarray:
        """``(N, F)`` ``float32``: the patients' rows through the fitted pipeline."""
        return preprocessor.transform(source.rows(patient_ids), source=source.source)

    def restore(self, data: Any, state: dict[str, Any], source: str) -> Any:
        from lightning_fusion.data.tabular import TabularPreprocessor

        return TabularPreprocessor.from_state(data.tabular, state, source=source)

    def batch_augmentation(self, data: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Gaussian noise of ``data.tabular.noise`` on every preprocessed feature; ``None`` at 0."""
        return FeatureNoise(data.tabular.noise) if data.tabular.noise > 0 else None

    def augmentation_policy(self, data: Any) -> str | None:
        return f"feature noise {data.tabular.noise:g}" if data.tabular.noise > 0 else None

    def served_shape(self, sample_shape: Sequence[int], preprocessor: Any) -> tuple[int, ...]:
        """The raw columns, before selection: ``(F_in,)``."""
        return (len(preprocessor.input_columns),)

    def from_served(self, value: Any, preprocessor: Any, modality: str) -> np.ndarray:
        """``(N, F_in)`` raw values in column order (or a DataFrame with those columns) → ``(N, F)``."""
        columns = preprocessor.input_columns
        if isinstance(value, pd.DataFrame):
            frame = value
        else:
            array = np.asarray(value, dtype=np.float64)
            if array.ndim != 2 or array.shape[1] != len(columns):
                raise DataError(
                    f"modality {modality!r}: expected (N, {len(columns)}) values in the column order "
                    f"{columns}, got shape {array.shape}"
                )
            frame = pd.DataFrame(array, columns=columns)
        return preprocessor.transform(frame, source=modality)

    # ---------------------------------------------------------------------------------------------
    def describe_upload(self, model: Any, modality: str, shape: tuple[int, ...], options: Any) -> ModalityInput:
        """A one-row table with the fitted pipeline's input columns (text codes of the reader allowed)."""
        preprocessor = model.preprocessors[modality]
        columns = tuple(str(c) for c in preprocessor.input_columns)
        codes = getattr(options, "text_codes", None)
        id_column = getattr(options, "id_column", None) or getattr(options, "clinical_id_column", None)
        summary = (
            f"a CSV (or .xlsx) table with one row (this patient) and the model's {len(columns)} columns; other "
            "columns are ignored, an empty cell is imputed as in training"
        )
        if codes:
            summary += "; text values allowed for " + ", ".join(f"{c} ({'/'.join(m)})" for c, m in codes.items())
        return ModalityInput(
            name=modality,
            kind=self.name,
            suffixes=TABLE_SUFFIXES,
            count=1,
            summary=summary,
            details=columns,
            columns=columns,
            text_codes={str(c): {str(k): float(v) for k, v in m.items()} for c, m in codes.items()} if codes else None,
            id_column=id_column,
        )

    def read_upload(
        self, item: ModalityInput, paths: list[Path], names: list[str], folder: Path, preprocessor: Any
    ) -> UploadReading:
        """The table's one row → ``(1, F)`` through the fitted pipeline; empty cells noted (imputed)."""
        row, empty, patient_id = read_table_row(paths[0], names[0], item)
        notes = [f"{item.name}: empty, imputed as in training: {', '.join(empty)}"] if empty else []
        try:
            return UploadReading(preprocessor.transform(row, source=names[0]), notes, patient_id)
        except DataError as err:
            raise UploadError(f"{item.name}: {err}") from None

    def public(self, item: ModalityInput) -> dict[str, Any]:
        return {"columns": list(item.columns)}

    def details_title(self, item: ModalityInput) -> str:
        return f"the {len(item.details)} columns"


class FeatureNoise:
    """Train-only Gaussian noise of standard deviation ``std`` on every feature of a ``(B, F)`` batch.

    The features are z-scored on train, so ``std`` is in training standard deviations (a 0/1 missing
    indicator moves too). Noise injection as a regulariser: Bishop, "Training with noise is equivalent
    to Tikhonov regularization", Neural Computation 7(1), 1995.
    """

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return rows + torch.randn_like(rows) * self.std


def read_table_row(path: Path, name: str, item: ModalityInput) -> tuple[pd.DataFrame, list[str], str | None]:
    """The one row of the model's columns as numbers, the columns left empty, and the patient id if given."""
    try:
        frame = pd.read_excel(path) if path.suffix == ".xlsx" else pd.read_csv(path)
    except Exception as err:  # pandas has many parser errors; all mean "not a table we can read"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UploadError(f"{item.name}: cannot read {name!r} as a table: {first}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    repeated = sorted({c for c in item.columns if list(frame.columns).count(c) > 1})
    if repeated:
        raise UploadError(f"{item.name}: {name!r} has the column(s) {repeated} more than once")
    if len(frame) != 1:
        raise UploadError(f"{item.name}: {name!r} must hold exactly one row (this patient), found {len(frame)}")
    missing = [c for c in item.columns if c not in frame.columns]
    if missing:
        hints = []
        for column in missing[:5]:
            close = difflib.get_close_matches(column, list(frame.columns), n=1, cutoff=0.6)
            if close:
                hints.append(f"{close[0]!r} for {column!r}?")
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise UploadError(
            f"{item.name}: {name!r} has no column {shown} (the model needs {len(item.columns)} columns)"
            + (f"; did you mean {' '.join(hints)}" if hints else "")
        )
    codes = {c.casefold(): m for c, m in (item.text_codes or {}).items()}
    values: dict[str, float] = {}
    empty = []
    for column in item.columns:
        raw = frame.at[frame.index[0], column]
        if pd.isna(raw) or (isinstance(raw, str) and not raw.strip()):
            values[column] = np.nan
            empty.append(column)
            continue
        mapping = codes.get(column.casefold())
        if isinstance(raw, str) and mapping is not None:
            key = raw.strip().casefold()
            if key not in {k.casefold() for k in mapping}:
                raise UploadError(
                    f"{item.name}: column {column!r} has the value {raw!r}; expected a number or one of {list(mapping)}"
                )
            values[column] = float({k.casefold(): v for k, v in mapping.items()}[key])
            continue
        value = number(raw)
        if value is None:
            raise UploadError(f"{item.name}: column {column!r} has the non-numeric value {raw!r}; expected a number")
        if not np.isfinite(value):
            shown = repr(raw) if isinstance(raw, str) else str(raw)
            raise UploadError(f"{item.name}: column {column!r} has the value {shown}; expected a finite number")
        values[column] = float(value)
    patient_id = None
    if item.id_column and item.id_column in frame.columns and pd.notna(frame.at[frame.index[0], item.id_column]):
        patient_id = str(frame.at[frame.index[0], item.id_column]).strip() or None
    return pd.DataFrame([values], columns=list(item.columns), dtype="float64"), empty, patient_id


VECTOR = KINDS.register(VectorKind.name)(VectorKind())
