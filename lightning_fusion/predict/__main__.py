"""``python -m lightning_fusion.predict --model <checkpoint | runs:/<run id>[/path] | models:/<name>/<version>>``

Predictions of a trained model for every patient of a dataset in the model's layout (``--data.root``;
default: the dataset it was trained on), or for one patient's folder of files (``--patient DIR``: the
files the web page takes, e.g. the image views and a one-row clinical CSV), with class probabilities
and the predicted class, written to ``--output`` (CSV). The model's reader, join checks and fitted
preprocessing (restored from the checkpoint) are the ones of its training run. ``--explain N`` also
writes explanations of the first N patients into ``<output stem>_explanations/`` (see
:mod:`lightning_fusion.explain.files`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_fusion.cli import log_to_stderr, run_reporting_input_errors
from lightning_fusion.errors import DataError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_fusion.predict", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="checkpoint file, runs:/<run id>[/<artifact path>] or models:/<name>/<version>"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data.root", dest="root", help="dataset folder in the model's layout (default: its own)")
    where.add_argument("--patient", help="one patient's folder: a file per modality (image views: one per view)")
    parser.add_argument("--output", default="predictions.csv", help="CSV to write (default: %(default)s)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for runs:/ and models:/ references")
    parser.add_argument("--explain", type=int, default=0, metavar="N", help="explain the first N patients")
    args = parser.parse_args(argv)
    if args.explain < 0:
        parser.error(f"--explain needs N >= 0, got {args.explain}")
    log_to_stderr()
    code, _ = run_reporting_input_errors(lambda: _predict(args))
    return code


def _predict(args: argparse.Namespace) -> None:
    from lightning_fusion.predict.loading import load_model

    model = load_model(args.model, args.tracking_uri)
    if args.explain and model.unexplained():
        raise DataError(f"--explain: {model.unexplained()}")
    predictions = _predict_patient(model, Path(args.patient)) if args.patient else model.predict_dataset(args.root)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    predictions.frame.to_csv(partial, index=False)
    partial.replace(output)  # a finished file or none: never half a table
    frame = predictions.frame
    print(f"model: {model.source} ({', '.join(model.modalities)} → {', '.join(model.classes)})")
    print(f"{predictions.dataset}: {len(frame)} patients predicted → {output}")
    for reason, ids in predictions.excluded.items():
        print(f"  not predicted, {reason}: {len(ids)} ({', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''})")
    print("  predicted: " + ", ".join(f"{c} {n}" for c, n in frame["predicted"].value_counts().items()))
    if "training_split" in frame:
        seen = frame["training_split"].isin(["train", "val"])
        print(
            f"  {int(seen.sum())} of them trained or selected this model (column training_split): their "
            "predictions are not an evaluation; the run's test metrics are"
        )
    if args.explain:
        folder = output.with_name(output.stem + "_explanations")
        ids = list(frame["patient_id"][: args.explain])
        arrays = {m: a[: len(ids)] for m, a in predictions.arrays.items()}
        present = {m: flags[: len(ids)] for m, flags in predictions.present.items()}
        summary = model.explain(ids, arrays, folder, present)
        print(f"  explanations of {len(ids)} patients → {folder}")
        for line in _shapley_lines(folder / "modality_contributions.csv"):
            print(line)
        for part, reason in summary["skipped"].items():
            print(f"  not explained, {part}: {reason}")


SHOWN_PATIENTS = 10  # at most this many patients' Shapley lines are printed; the file has every one


def _shapley_lines(table: Path) -> list[str]:
    """One line per explained patient: the class's probability as its training prior plus each modality's share."""
    import pandas as pd

    if not table.is_file():
        return []
    frame = pd.read_csv(table, dtype={"patient_id": str})
    columns = [c for c in frame.columns if c.startswith("shapley_") and c != "shapley_baseline"]
    if not columns:
        return []
    lines = ["  modality Shapley values (P(class) = its training prior + one share per modality):"]
    for _, row in frame.head(SHOWN_PATIENTS).iterrows():
        shares = " ".join(f"{c.removeprefix('shapley_')} {row[c]:+.3f}" for c in columns)
        start = f"P({row['class']}) {row['probability']:.3f} = {row['shapley_baseline']:.3f}"
        lines.append(f"    {row['patient_id']}: {start} {shares}")
    if len(frame) > SHOWN_PATIENTS:
        lines.append(f"    ... {len(frame) - SHOWN_PATIENTS} more in {table.name}")
    return lines


def _predict_patient(model, folder: Path):
    """The one patient in ``folder``, read as the web page reads an upload."""
    from lightning_fusion.data.cohort import normalise_patient_id
    from lightning_fusion.predict.expectations import model_inputs
    from lightning_fusion.predict.patient_files import read_patient_folder
    from lightning_fusion.predict.trained_model import PredictionSet

    patient = read_patient_folder(model, model_inputs(model), folder)
    for note in patient.notes:
        print(f"  {note}")
    patient_id = normalise_patient_id(patient.patient_id) if patient.patient_id else folder.name
    frame = model.prediction_frame([patient_id], model.predict_arrays(patient.arrays, patient.present or None))
    return PredictionSet(frame, {}, f"patient folder {folder}", patient.arrays, patient.present)


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
