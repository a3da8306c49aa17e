"""Demo cohort: fusion vs image-only CNN vs clinical-only ANN, over several split/training seeds.

    python benchmarks/demo_modalities.py [--seeds 3] [--out benchmarks/results/demo_modalities.md]

Each configuration is the built-in demo (``experiments/demo.yaml``) with one override of
``model.modalities``; a seed changes both the patient split and the training seed. Runs go to a
throwaway MLflow store in a temp folder. Prints (and writes) a markdown table of mean ± sd test
balanced accuracy and AUROC, and the wall time of each fit (the whole ``fit`` call, data included).
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

from lightning_fusion.config import load_config  # noqa: E402
from lightning_fusion.fit.run import fit  # noqa: E402

MODELS = {
    "fusion (image + clinical)": ["image", "tabular"],
    "CNN (image only)": ["image"],
    "ANN (clinical only)": ["tabular"],
}
DEMO = Path(__file__).parents[1] / "experiments" / "demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_modalities.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, modalities in MODELS.items():
            scores: dict[str, list[float]] = {"bal": [], "auroc": [], "wall": []}
            for seed in range(args.seeds):
                overrides = {
                    "model.modalities": modalities,
                    "seed": seed,
                    "data.split.seed": seed,
                    "tracking.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
                    "tracking.artifact_root": f"{tmp}/mlruns",
                }
                start = time.perf_counter()
                result = fit(load_config(DEMO, overrides))
                scores["wall"].append(time.perf_counter() - start)
                scores["bal"].append(result.test_metrics["test/balanced_accuracy"])
                scores["auroc"].append(result.test_metrics["test/auroc"])
                print(label, seed, {k: round(v[-1], 3) for k, v in scores.items() if v}, flush=True)
            rows.append((label, scores))
    header = "| model | test balanced accuracy | test AUROC (macro OvR) | wall time per fit (s) |\n|---|---|---|---|\n"
    body = "".join(
        f"| {label} | {_mean_sd(s['bal'])} | {_mean_sd(s['auroc'])} | {_mean_sd(s['wall'], 0)} |\n" for label, s in rows
    )
    table = header + body + f"\n{args.seeds} seeds (split + training); 30 test patients per seed.\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


def _mean_sd(values: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


if __name__ == "__main__":
    main()
