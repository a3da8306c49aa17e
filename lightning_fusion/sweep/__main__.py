"""``python -m lightning_fusion.sweep ablations/X.yaml [--n-trials N] [--storage URL] [--workers K] ...``

Runs (or resumes) an Optuna study from a study file; see :mod:`lightning_fusion.sweep.study` for the
file and :mod:`lightning_fusion.sweep.runner` for storage, pruning and MLflow. ``--workers K`` starts K
worker processes on this machine against the same storage (each on its own GPUs: G // K of G);
workers on other machines join with the same ``--storage`` and ``--study-name``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from lightning_fusion.cli import add_config_help, log_to_stderr
from lightning_fusion.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_fusion.sweep", description=__doc__.splitlines()[0], add_help=False
    )
    add_config_help(parser, keys_as_overrides=False)
    parser.add_argument("study", help="study file, e.g. ablations/hparams.yaml")
    parser.add_argument("--n-trials", type=int, help="total finished trials wanted (default: the file's trials)")
    parser.add_argument("--storage", help="Optuna storage: a .journal file or an SQLAlchemy URL (postgresql://...)")
    parser.add_argument("--study-name", help="default: the study file's name")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: the experiment's, else sqlite:///mlflow.db)"
    )
    parser.add_argument(
        "--heartbeat",
        type=int,
        nargs=2,
        default=(30, 90),
        metavar=("INTERVAL", "GRACE"),
        help="database storage: heartbeat interval and grace period in seconds; a trial without a heartbeat for "
        "GRACE seconds (a killed worker) is failed and retried (default: 30 90)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.n_trials is not None and args.n_trials < 1:
        parser.error(f"--n-trials must be >= 1, got {args.n_trials}")
    log_to_stderr()
    from mlflow.tracking import MlflowClient

    from lightning_fusion.mlflow_ui import run_url, view_url
    from lightning_fusion.sweep.report import log_report
    from lightning_fusion.sweep.runner import optimize, prepare
    from lightning_fusion.sweep.study import load_study

    try:
        study = load_study(args.study)
        prepared = prepare(
            study, args.storage, args.study_name, args.n_trials, args.tracking_uri, tuple(args.heartbeat)
        )
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    name = prepared.optuna_study.study_name
    if args.workers > 1:
        code = _run_workers(args, name, prepared.tracking_uri, prepared.storage_url)
    else:
        optimize(study, prepared)
        code = 0
    # the study object reads its storage on each query, so the other workers' trials are in the report
    client = MlflowClient(prepared.tracking_uri)
    print(log_report(client, prepared.parent_id, prepared.optuna_study, study), end="")
    print(f"MLflow parent run {prepared.parent_id} in {prepared.tracking_uri}; Optuna storage: {prepared.storage}")
    where = (prepared.tracking_uri, client.get_run(prepared.parent_id).info.experiment_id, prepared.parent_id)
    print(f"  trials: {view_url(*where)}\n  report: {run_url(*where)}")
    return code


def _run_workers(args: argparse.Namespace, name: str, tracking_uri: str, storage_url: str) -> int:
    """K worker processes, the same command with --workers 1; with G >= K GPUs, G // K GPUs each."""
    import torch

    gpus = torch.cuda.device_count()
    command = [
        sys.executable,
        "-m",
        "lightning_fusion.sweep",
        args.study,
        "--study-name",
        name,
        "--storage",
        storage_url,
        "--tracking-uri",
        tracking_uri,
    ]
    if args.n_trials:
        command += ["--n-trials", str(args.n_trials)]
    command += ["--heartbeat", *(str(v) for v in args.heartbeat)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
    per_worker = gpus // args.workers  # a DDP study's workers get several GPUs each
    processes = []
    for worker in range(args.workers):
        env = dict(os.environ)
        if per_worker >= 1:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[worker * per_worker : (worker + 1) * per_worker])
        elif "OMP_NUM_THREADS" not in os.environ:  # CPU workers share the cores instead of each taking all
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))
        processes.append(subprocess.Popen(command, env=env))
    codes = [p.wait() for p in processes]
    return max(codes)


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
