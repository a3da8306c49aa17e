"""Sweeps on the demo cohort: what pruning saves, and what a second worker buys.

    python benchmarks/sweep_demo.py [--trials 8] [--epochs 12] [--rows 0,1,2] [--note "machine shared"] [--out FILE]

1. ``ablations/hparams.yaml`` (TPE, seed 0) for ``--trials`` trials with its median pruner and again
   with ``pruner: none``: epochs trained in all, best validation value, wall time.
2. The same study without pruning with 1 and with 2 worker processes on one journal file: finished
   trials per hour, and distinct configurations per hour (a trial that repeats another's parameters
   adds no information).

Each run uses a fresh MLflow store and Optuna journal in a temp folder. Timings are whole-command wall
times on this machine (2 CPU cores here, so two workers share them). The table records the date, the
commit and ``--note`` (e.g. whether other work shared the machine).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).parents[1]


def _run(study_file: Path, tmp: Path, workers: int) -> tuple[float, optuna.Study]:
    journal = tmp / "optuna.journal"
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_fusion.sweep",
            str(study_file),
            "--storage",
            str(journal),
            "--workers",
            str(workers),
            "--tracking-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
        ],
        check=True,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return wall, optuna.load_study(study_name=study_file.stem, storage=storage)


def _variant(trials: int, pruner: dict, tmp: Path, epochs: int | None = None) -> Path:
    spec = yaml.safe_load((ROOT / "ablations" / "hparams.yaml").read_text())
    spec.update(base=str(ROOT / "experiments" / "demo.yaml"), trials=trials, pruner=pruner)
    if epochs:
        spec["overrides"]["trainer.max_epochs"] = epochs
    path = tmp / "hparams.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, help="trainer.max_epochs of every trial (default: the study's 12)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sweep_demo.md")
    parser.add_argument("--rows", default="0,1,2", help="which settings to run (0: pruned, 1: unpruned, 2: 2 workers)")
    parser.add_argument("--note", default="", help="conditions to record, e.g. 'machine shared with other work'")
    args = parser.parse_args()
    spec = yaml.safe_load((ROOT / "ablations" / "hparams.yaml").read_text())
    settings = (
        ("median pruner, 1 worker", spec["pruner"], 1),
        ("no pruner, 1 worker", {"name": "none"}, 1),
        ("no pruner, 2 workers", {"name": "none"}, 2),
    )
    rows = []
    for label, pruner, workers in (settings[int(i)] for i in args.rows.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            wall, study = _run(_variant(args.trials, pruner, Path(tmp), args.epochs), Path(tmp), workers)
            finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
            epochs = sum(t.user_attrs.get("epochs", 0) or 0 for t in study.trials)
            pruned = sum(t.state.name == "PRUNED" for t in study.trials)
            best = study.best_value if any(t.state.name == "COMPLETE" for t in study.trials) else float("nan")
            distinct = len({tuple(sorted(t.params.items())) for t in finished})
            per_hour = 3600 / wall
            rows.append((label, len(finished), distinct, pruned, epochs, best, wall, per_hour))
            print(rows[-1], flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    text = (
        f"`ablations/hparams.yaml` on the demo cohort, {args.trials} trials per row "
        f"(TPE seed 0, max {args.epochs or 12} epochs), "
        f"whole-command wall time on {os.cpu_count()} CPU cores; {datetime.date.today()}, commit {commit or '?'}"
        + (f", {args.note}" if args.note else "")
        + ".\n\n"
        "| setting | finished | distinct configs | pruned | epochs trained | best val bal. acc. | wall (s) "
        "| trials / hour | distinct configs / hour |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.3f} | {r[6]:.0f} | {r[1] * r[7]:.1f} "
            f"| {r[2] * r[7]:.1f} |\n"
            for r in rows
        )
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
