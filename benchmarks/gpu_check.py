"""The GPU check's steps and its summary table (run by ``benchmarks/gpu_check.sh``; ``--cpu`` for the smallest sizes).

Steps, in order, each timed and checked, a failure recorded and the next step run anyway:

1. ``fit``: the demo fusion (``experiments/demo.yaml``; bf16 mixed precision on a GPU that has it)
   with its test, bootstrap intervals, explanations and the logged pyfunc model; checks the device
   really trained (CUDA memory used) and the run's artifacts;
2. ``pyfunc``: the logged MLflow model loaded back and asked for 4 patients' probabilities, compared
   with the checkpoint's own predictions for them;
3. ``predict``: ``python -m lightning_fusion.predict --model runs:/<run id>`` over the whole cohort;
4. ``fit --cv 2``: two folds, in a fresh process;
5. ``sweep``: 4 trials with ``--workers 2`` on one journal file (both workers share the GPU);
6. ``throughput``: ``benchmarks/throughput.py`` (ResNet-50 at 224 px and the demo fusion), then its
   ``--ablate`` rows for ResNet-50 if enough of the time budget is left.

Everything is written under a fresh work folder (MLflow store, demo cohort cache, Optuna journal);
the summary, the throughput table and every step's log go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Check:
    """Runs the steps, keeps one summary row per step, and watches the time budget."""

    def __init__(self, args: argparse.Namespace, work: Path, out: Path) -> None:
        self.args, self.work, self.out = args, work, out
        self.rows: list[tuple[str, str, float, str]] = []
        self.started = time.perf_counter()
        self.context: dict = {}

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)

    def step(self, name: str, action: Callable[[], str], needs: str | None = None) -> None:
        if needs and needs not in self.context:
            self.rows.append((name, "skipped", 0.0, f"needs the {needs} of an earlier step"))
            return
        print(f"\n=== {name} ({self.left():.0f} s of the budget left)", flush=True)
        start = time.perf_counter()
        try:
            detail, status = action(), "ok"
        except Exception as err:  # a failed step is reported; the others still run
            traceback.print_exc()
            detail, status = (
                f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160] if str(err).strip() else ''}",
                "FAILED",
            )
        self.rows.append((name, status, time.perf_counter() - start, detail))
        print(f"=== {name}: {status} ({time.perf_counter() - start:.0f} s) {detail}", flush=True)

    def run(self, name: str, command: list[str], timeout: float) -> subprocess.CompletedProcess:
        """A command in a fresh process; its output goes to <out>/<name>.log (and the tail to the error)."""
        log = self.out / f"{name}.log"
        with log.open("w") as stream:
            done = subprocess.run(
                command, stdout=stream, stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=self.work
            )
        if done.returncode != 0:
            tail = log.read_text()[-2000:]
            raise RuntimeError(f"exit code {done.returncode}; {log.name} ends with:\n{tail}")
        return done


def overrides(args: argparse.Namespace) -> dict:
    """The demo config, as is on a GPU; the smallest sizes on the CPU (40 patients, 32 px, one epoch: every
    step still trains, tests, explains and predicts; process start-up and imports are most of its time)."""
    if not args.cpu:
        return {"trainer.accelerator": "gpu", "trainer.devices": 1}
    return {
        "data.reader": {"name": "demo_mpi", "patients": 40, "image_size": 32},
        "data.image_size": 32,
        "data.batch_size": 16,
        "model.encoders.image.backbone": "test_resnet",
        "trainer.accelerator": "cpu",
        "trainer.max_epochs": 1,
        "evaluation.bootstrap_resamples": 1000,
        "evaluation.explain_patients": 1,
    }


def cli_overrides(values: dict) -> list[str]:
    flat = []
    for key, value in values.items():
        flat += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return flat


# --------------------------------------------------------------------------------------------------
def step_fit(check: Check) -> str:
    import torch
    from mlflow.tracking import MlflowClient

    from lightning_fusion.config import load_config
    from lightning_fusion.fit.run import fit
    from lightning_fusion.fit.trainer import auto_precision

    config = load_config(ROOT / "experiments" / "demo.yaml", overrides(check.args))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = fit(config)
    check.context["run_id"] = result.run_id
    check.context["config"] = config
    precision = auto_precision(config.trainer)
    metrics = result.test_metrics
    if not math.isfinite(metrics.get("test/balanced_accuracy", math.nan)):
        raise RuntimeError(f"no finite test balanced accuracy: {metrics}")
    client = MlflowClient()
    artifacts = set(_artifacts(client, result.run_id))
    wanted = ["model/MLmodel", "explanations/explanations.json"]
    missing = [a for a in wanted if a not in artifacts]
    if missing or not result.model_logged:
        raise RuntimeError(f"the run lacks {missing or 'its pyfunc model'}; it has {sorted(artifacts)[:20]}")
    device = "cpu"
    if not check.args.cpu:
        peak = torch.cuda.max_memory_allocated() / 2**20
        if peak <= 0:
            raise RuntimeError("no CUDA memory was used: the fit did not train on the GPU")
        if not precision.startswith("bf16"):
            raise RuntimeError(f"precision {precision}, not bf16 mixed precision")
        device = f"{torch.cuda.get_device_name()} (peak {peak:.0f} MiB)"
    return (
        f"{device}, {precision}, {result.epochs} epochs, test bal. acc. {metrics['test/balanced_accuracy']:.3f}, "
        f"AUROC {metrics.get('test/auroc', math.nan):.3f}, explanations + pyfunc model logged"
    )


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def step_pyfunc(check: Check) -> str:
    import mlflow
    import numpy as np

    from lightning_fusion.data.datamodule import modality_arrays
    from lightning_fusion.predict.loading import load_model

    run_id = check.context["run_id"]
    model = load_model(f"runs:/{run_id}", mlflow.get_tracking_uri())
    predictions = model.predict_dataset()
    ids = list(predictions.frame["patient_id"][:4])
    cohort = model.read_cohort()
    raw = {
        "image": modality_arrays(cohort, "image", ids, model.config.data, None),
        "tabular": cohort.modalities["tabular"].rows(ids).to_numpy(np.float64),
    }
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    served = pyfunc.predict(raw)
    columns = [c for c in served.columns if c.startswith("prob_")]
    expected = predictions.frame.set_index("patient_id").loc[ids, columns].to_numpy()
    difference = float(np.abs(served[columns].to_numpy() - expected).max())
    if not difference < 1e-4:
        raise RuntimeError(f"the pyfunc model and the checkpoint disagree by {difference:.2g}")
    return f"4 patients through the logged pyfunc model = the checkpoint's probabilities (max diff {difference:.1e})"


def step_predict(check: Check) -> str:
    import pandas as pd

    output = check.work / "predictions.csv"
    command = [sys.executable, "-m", "lightning_fusion.predict", "--model", f"runs:/{check.context['run_id']}"]
    check.run("predict", [*command, "--output", str(output)], timeout=max(30, check.left()))
    frame = pd.read_csv(output)
    if frame.empty or frame.filter(like="prob_").isna().any().any():
        raise RuntimeError(f"{output.name}: {len(frame)} rows, or missing probabilities")
    return f"{len(frame)} patients predicted from runs:/<run id>"


def step_cv(check: Check) -> str:
    command = [
        sys.executable,
        "-m",
        "lightning_fusion.fit",
        "--config",
        str(ROOT / "experiments" / "demo.yaml"),
        "--cv",
        "2",
    ]
    values = overrides(check.args) | {"evaluation.explain_patients": 0}
    check.run("fit_cv2", [*command, *cli_overrides(values)], timeout=max(30, check.left()))
    if "2-fold cross-validation" not in (check.out / "fit_cv2.log").read_text():
        raise RuntimeError("fit --cv 2 printed no cross-validation summary")
    return "2 folds trained and tested, summary printed"


def step_sweep(check: Check) -> str:
    import yaml

    values = overrides(check.args) | {
        "trainer.max_epochs": 1 if check.args.cpu else 3,
        "evaluation.explain_patients": 0,
    }
    study = {
        "description": "GPU check: 4 trials of the demo's learning rate",
        "base": str(ROOT / "experiments" / "demo.yaml"),
        "overrides": values,
        "metric": "val/balanced_accuracy",
        "direction": "maximize",
        "trials": 4,
        "sampler": {"name": "tpe", "seed": 0},
        "space": {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
    }
    path = check.work / "gpu_check_study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    journal = check.work / "sweep.journal"
    command = [sys.executable, "-m", "lightning_fusion.sweep", str(path), "--workers", "2", "--storage", str(journal)]
    check.run("sweep", command, timeout=max(30, check.left()))
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="gpu_check_study", storage=storage).trials
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(finished) < 4:
        raise RuntimeError(f"{len(finished)} of 4 trials finished")
    return f"{len(finished)} trials finished by 2 workers on one journal file"


def step_throughput(check: Check, ablate: bool) -> str:
    script = str(ROOT / "benchmarks" / "throughput.py")
    name = "throughput_ablation" if ablate else "throughput"
    command = [
        sys.executable,
        script,
        "--json",
        str(check.out / f"{name}.json"),
        "--markdown",
        str(check.out / f"{name}.md"),
    ]
    if check.args.cpu:
        command += [
            "--cpu",
            "--tiny",
            "--backbone",
            "test_resnet",
            "--fusion-backbone",
            "test_resnet",
            "--image-size",
            "32",
        ]
        # one workload, one timed step: the script runs end to end (tests/benchmarks/test_throughput.py
        # covers both workloads and the fields at tiny sizes)
        command += ["--workload", "fusion", "--steps", "1", "--warmup", "1", "--repeats", "1"]
    elif ablate:
        command += ["--workload", "resnet50", "--ablate", "--repeats", "1", "--steps", "30", "--warmup", "10"]
    else:
        command += ["--repeats", "2", "--steps", "40", "--warmup", "15"]
    check.run(name, command, timeout=max(30, check.left() - 5))
    results = json.loads((check.out / f"{name}.json").read_text())["results"]
    parts = [
        f"{r['workload']}: raw {r['raw_img_s']:.0f}, framework {r['framework_img_s']:.0f} img/s, ratio {r['ratio']:.3f}"
        for r in results
    ]
    return "; ".join(parts) + f" (table: {name}.md)"


# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the smallest sizes on the CPU (a test runs this)")
    parser.add_argument(
        "--out", type=Path, default=None, help="summary, tables and logs (default: $OUT or a temp folder)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds for every step together (default 480 on the GPU; 2400 with --cpu, where a busy shared "
        "machine must not time a step out: under load 8 on 2 cores the CPU check took 1200 s); the ablation "
        "runs only if enough is left",
    )
    args = parser.parse_args(argv)
    args.budget = args.budget or (2400.0 if args.cpu else 480.0)
    out = (args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_check_out_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["LF_CACHE_DIR"] = str(work / "cache")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.chdir(work)  # the default artifact root (./mlruns) lands in the work folder too
    import torch

    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device visible to torch; use --cpu for the CPU check")
    check = Check(args, work, out)
    check.step("fit (test, explanations, pyfunc logged)", lambda: step_fit(check))
    check.step("pyfunc model prediction", lambda: step_pyfunc(check), needs="run_id")
    check.step("predict from the run", lambda: step_predict(check), needs="run_id")
    check.step("fit --cv 2", lambda: step_cv(check))
    check.step("sweep: 4 trials, 2 workers", lambda: step_sweep(check))
    check.step("throughput benchmark", lambda: step_throughput(check, ablate=False))
    if args.cpu:  # the ablation's CPU rows are tests/benchmarks' business; keep the CPU check short
        check.rows.append(("throughput ablation (ResNet-50)", "skipped", 0.0, "GPU only"))
    elif check.left() > 200:
        check.step("throughput ablation (ResNet-50)", lambda: step_throughput(check, ablate=True))
    else:
        check.rows.append(("throughput ablation (ResNet-50)", "skipped", 0.0, "under 200 s of the budget left"))
    device = "CPU" if args.cpu else torch.cuda.get_device_name()
    lines = [
        f"GPU check on {device}: torch {torch.__version__}, Python {sys.version.split()[0]}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {time.perf_counter() - check.started:.0f} s in all",
        "",
        "| step | status | seconds | detail |",
        "|---|---|---|---|",
        *(f"| {name} | {status} | {seconds:.0f} | {detail} |" for name, status, seconds, detail in check.rows),
    ]
    summary = "\n".join(lines)
    (out / "gpu_check.md").write_text(summary + "\n")
    print("\n" + summary + f"\n\nlogs and tables: {out}")
    return 0 if all(status != "FAILED" for _, status, _, _ in check.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
