"""Real public data: PTB-XL subset (signal vs metadata vs fusion) and PneumoniaMNIST (image only).

    python benchmarks/real_data.py ptbxl [--seeds 3]
    python benchmarks/real_data.py pneumoniamnist [--seeds 1]

Data from ``$LF_DATA_DIR`` (default ``../shared/data``). PTB-XL: the development subset has folds 1-9,
so train = folds 1-7, val = fold 8, test = fold 9 (grouped by patient, PhysioNet's stratified folds).
PneumoniaMNIST: the file has no test arrays, so its val set is our test set and a stratified 10% of
train is our val (see ``experiments/pneumoniamnist.yaml``). Each model is its experiment YAML with
``model.modalities`` overridden; a seed changes the training seed (the splits are fixed by the data).
Reports validation metrics at the best (lowest val loss) epoch and test metrics of that checkpoint,
mean ± sd over seeds, and the wall time of each in-process ``fit`` call (reading the data included).
Runs go to a throwaway MLflow store.
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

from mlflow.tracking import MlflowClient  # noqa: E402

from lightning_fusion.config import load_config  # noqa: E402
from lightning_fusion.fit.run import fit  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
BENCHMARKS = {
    "ptbxl": {
        "config": PROJECT / "experiments" / "ptbxl_fusion.yaml",
        "folder": "ptbxl",
        "overrides": {
            "data.reader.train_folds": [1, 2, 3, 4, 5, 6, 7],
            "data.reader.val_folds": [8],
            "data.reader.test_folds": [9],
        },
        "models": {
            "signal only (resnet1d)": ["signal"],
            "metadata only (MLP)": ["tabular"],
            "signal + metadata (concat)": ["signal", "tabular"],
        },
    },
    "pneumoniamnist": {
        "config": PROJECT / "experiments" / "pneumoniamnist.yaml",
        "folder": "pneumoniamnist",
        "overrides": {},
        "models": {"image only (timm resnet18, 28 px, from scratch)": ["image"]},
    },
}
METRICS = ("balanced_accuracy", "accuracy", "auroc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(BENCHMARKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("LF_DATA_DIR", PROJECT.parent / "shared" / "data"))
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    bench = BENCHMARKS[args.dataset]
    out = args.out or Path(__file__).parent / "results" / f"{args.dataset}.md"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        for label, modalities in bench["models"].items():
            scores: dict[str, list[float]] = {}
            for seed in range(args.seeds):
                overrides = {
                    **bench["overrides"],
                    "data.root": str(args.data_dir / bench["folder"]),
                    "model.modalities": modalities,
                    "seed": seed,
                    "tracking.tracking_uri": uri,
                    "tracking.artifact_root": f"{tmp}/mlruns",
                }
                start = time.perf_counter()
                result = fit(load_config(bench["config"], overrides))
                wall = time.perf_counter() - start
                val = _val_at_best_epoch(MlflowClient(uri), result.run_id)
                for name in METRICS:
                    scores.setdefault(f"val/{name}", []).append(val[f"val/{name}"])
                    scores.setdefault(f"test/{name}", []).append(result.test_metrics[f"test/{name}"])
                scores.setdefault("wall", []).append(wall)
                scores.setdefault("epochs", []).append(val["epochs"])
                print(label, seed, {k: round(v[-1], 3) for k, v in scores.items()}, flush=True)
            counts = result.data_summary["counts"]
            rows.append((label, scores))
    sizes = ", ".join(
        f"{split} {sum(by_class.values())} ({_fmt_counts(by_class)})" for split, by_class in counts.items()
    )
    header = (
        "| model | val bal. acc | val AUROC | test bal. acc | test accuracy | test AUROC | epochs | s per fit |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {label} | {_mean_sd(s['val/balanced_accuracy'])} | {_mean_sd(s['val/auroc'])} "
        f"| {_mean_sd(s['test/balanced_accuracy'])} | {_mean_sd(s['test/accuracy'])} | {_mean_sd(s['test/auroc'])} "
        f"| {_mean_sd(s['epochs'], 0)} | {_mean_sd(s['wall'], 0)} |\n"
        for label, s in rows
    )
    table = header + body + f"\n{args.seeds} training seed(s); samples per split: {sizes}.\n"
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)


def _val_at_best_epoch(client: MlflowClient, run_id: str) -> dict[str, float]:
    """Validation metrics at the epoch with the lowest val/loss (the checkpoint that was tested)."""
    losses = client.get_metric_history(run_id, "val/loss")
    best = min(losses, key=lambda m: m.value)
    values = {"epochs": float(len(losses))}
    for name in METRICS:
        history = {m.step: m.value for m in client.get_metric_history(run_id, f"val/{name}")}
        values[f"val/{name}"] = history[best.step]
    return values


def _fmt_counts(by_class: dict[str, int]) -> str:
    return " / ".join(f"{n} {c}" for c, n in by_class.items())


def _mean_sd(values: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


if __name__ == "__main__":
    main()
