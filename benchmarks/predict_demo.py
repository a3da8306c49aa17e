"""Using a trained demo model: how long loading, predicting, explaining and one served prediction take.

    python benchmarks/predict_demo.py [--repeats 3] [--out benchmarks/results/predict_demo.md]

Trains the built-in demo fusion model once (``experiments/demo.yaml``, into a throwaway MLflow store),
then times, ``--repeats`` times each: loading it from ``runs:/<id>`` (download + ``weights_only`` load
+ restored preprocessing), predicting all 300 demo patients (reading the images and the clinical table
through the reader included), explaining 4 patients (Grad-CAM of the three views, Integrated
Gradients, modality drops), and one patient through the logged MLflow pyfunc model in process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from lightning_fusion.config import load_config  # noqa: E402
from lightning_fusion.data.datamodule import modality_arrays  # noqa: E402
from lightning_fusion.fit.run import fit  # noqa: E402
from lightning_fusion.predict.loading import load_model  # noqa: E402

DEMO = Path(__file__).parents[1] / "experiments" / "demo.yaml"


def timed(call, repeats: int) -> tuple[float, float, object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - start)
    return statistics.mean(seconds), (statistics.stdev(seconds) if repeats > 1 else 0.0), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/predict_demo.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        config = load_config(DEMO, {"tracking.tracking_uri": uri, "tracking.artifact_root": f"{tmp}/mlruns"})
        started = time.perf_counter()
        run_id = fit(config).run_id
        fit_seconds = time.perf_counter() - started
        rows = []
        mean, sd, model = timed(lambda: load_model(f"runs:/{run_id}", uri), args.repeats)
        rows.append(("load from runs:/ (download, weights_only, preprocessing)", mean, sd, 1))
        mean, sd, predictions = timed(model.predict_dataset, args.repeats)
        count = len(predictions.frame)
        rows.append((f"predict the whole demo dataset (read + predict, {count} patients)", mean, sd, count))
        ids = list(predictions.frame["patient_id"][:4])
        arrays = {m: a[:4] for m, a in predictions.arrays.items()}
        mean, sd, _ = timed(lambda: model.explain(ids, arrays, Path(tmp) / "explained"), args.repeats)
        rows.append(("explain 4 patients (Grad-CAM x 3 views, IG, modality drops)", mean, sd, 4))
        mlflow.set_tracking_uri(uri)
        pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
        cohort = model.read_cohort()
        one = ids[:1]
        raw = {
            "image": modality_arrays(cohort, "image", one, model.config.data, None),
            "tabular": cohort.modalities["tabular"].rows(one).to_numpy(np.float64),
        }
        mean, sd, _ = timed(lambda: pyfunc.predict(raw), max(args.repeats, 10))
        rows.append(("one patient through the pyfunc model (in process)", mean, sd, 1))
    lines = [
        f"Demo fusion model (fit took {fit_seconds:.0f} s); mean ± sd over {args.repeats} repeats "
        "(10 for the pyfunc call), 2-core CPU.",
        "",
        "| step | seconds | ms per patient |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {m:.2f} ± {s:.2f} | {1000 * m / n:.1f} |" for name, m, s, n in rows]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
