"""``python -m lightning_fusion.sweep ablations/X.yaml [--n-trials N] [--storage URL] [--workers K] ...``

Runs (or resumes) an Optuna study from a study file; see :mod:`lightning_fusion.sweep.study` for the
file and :mod:`lightning_fusion.sweep.runner` for storage, pruning and MLflow. ``--workers K`` starts K
worker processes on this machine against the same storage (each on its own GPUs: G // K of G), with
worker ids W..W+K-1 (``--worker-id W``, default 0: each id samples with its own seed); workers on
other machines join with the same ``--storage`` and ``--study-name`` and ids of their own.

Exit status: 0 when the study holds its total of finished trials (or this worker's part is done and
other workers finish it), 1 when it stopped short (trials failed, a worker failed), 2 for a bad study
file or option, 130 / 143 after Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from lightning_fusion.cli import add_config_help, interrupt_exit_code, log_to_stderr, stop_on_sigterm
from lightning_fusion.errors import ConfigError

STOP_GRACE_S = 60  # after SIGTERM, how long a worker has to end its trial and runs before SIGKILL


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
        "--worker-id",
        type=int,
        default=0,
        metavar="W",
        help="this worker's id, or with --workers K the first of K (W..W+K-1); each id samples with its own seed. "
        "Give workers started by hand on other machines ids of their own (default 0)",
    )
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
    if args.worker_id < 0:
        parser.error(f"--worker-id must be >= 0, got {args.worker_id}")
    log_to_stderr()
    stop_on_sigterm()  # SIGTERM ends the parent run KILLED instead of leaving it RUNNING
    from lightning_fusion.fit import ranks

    if ranks.external_environment() is not None:  # started by torchrun / srun: rank 0 is the only worker
        from lightning_fusion.sweep import trial

        if not ranks.is_global_zero():
            return trial.follow_rank_zero()
        if args.workers > 1:
            parser.error("--workers starts worker processes; under torchrun / srun the ranks are the processes")
        try:
            return _main(args)
        finally:
            trial.release_followers()
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from lightning_fusion.mlflow_ui import run_url, view_url
    from lightning_fusion.sweep.report import log_report
    from lightning_fusion.sweep.runner import optimize, prepare
    from lightning_fusion.sweep.study import load_study
    from lightning_fusion.sweep.workers import LAUNCHER_ENV
    from lightning_fusion.tracking import interrupt_of

    try:
        study = load_study(args.study)
        prepared = prepare(
            study,
            args.storage,
            args.study_name,
            args.n_trials,
            args.tracking_uri,
            tuple(args.heartbeat),
            args.worker_id,
        )
        if args.workers > 1:
            code = _run_workers(args, prepared)
        else:
            result = optimize(study, prepared, own_parent=LAUNCHER_ENV not in os.environ)
            code = 0 if result.reached or result.stopped == "grid" else 1
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except BaseException as err:  # the parent run is already ended (KILLED / FAILED) or left to another worker
        interrupt = interrupt_of(err)
        if interrupt is None:
            raise
        print(f"sweep interrupted ({type(interrupt).__name__})", file=sys.stderr)
        return interrupt_exit_code(interrupt)
    if LAUNCHER_ENV in os.environ:  # a worker of --workers K: its launcher reports once all are done
        return code
    # the study object reads its storage on each query, so the other workers' trials are in the report
    client = MlflowClient(prepared.tracking_uri)
    print(log_report(client, prepared.parent_id, prepared.optuna_study, study), end="")
    print(f"MLflow parent run {prepared.parent_id} in {prepared.tracking_uri}; Optuna storage: {prepared.storage}")
    where = (prepared.tracking_uri, client.get_run(prepared.parent_id).info.experiment_id, prepared.parent_id)
    print(f"  trials: {view_url(*where)}\n  report: {run_url(*where)}")
    return code


def _run_workers(args: argparse.Namespace, prepared) -> int:
    """K worker processes, the same command with --workers 1; with G >= K GPUs, G // K GPUs each.

    Then the parent run: FINISHED if the study reached its total; else FAILED (a worker exited
    non-zero or the workers stopped short) or KILLED (this launcher was interrupted: it sends SIGTERM
    to its workers, gives them ``STOP_GRACE_S`` to end their trials and runs, then kills them).
    """
    import torch

    from lightning_fusion.sweep.runner import forget_workers, settle_parent
    from lightning_fusion.sweep.workers import LAUNCHER_ENV, process_identity
    from lightning_fusion.tracking import end_status

    gpus = torch.cuda.device_count()
    command = [
        sys.executable,
        "-m",
        "lightning_fusion.sweep",
        args.study,
        "--study-name",
        prepared.optuna_study.study_name,
        "--storage",
        prepared.storage_url,
        "--tracking-uri",
        prepared.tracking_uri,
    ]
    if args.n_trials:
        command += ["--n-trials", str(args.n_trials)]
    command += ["--heartbeat", *(str(v) for v in args.heartbeat)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
    per_worker = gpus // args.workers  # a DDP study's workers get several GPUs each
    processes = []
    try:
        for worker in range(args.workers):
            env = dict(os.environ) | {LAUNCHER_ENV: str(os.getpid())}
            if per_worker >= 1:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[worker * per_worker : (worker + 1) * per_worker])
            elif "OMP_NUM_THREADS" not in os.environ:  # CPU workers share the cores instead of each taking all
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))
            processes.append(subprocess.Popen(command + ["--worker-id", str(args.worker_id + worker)], env=env))
        codes = [p.wait() for p in processes]
    except BaseException as err:
        _stop(processes)
        forget_workers(prepared, [process_identity(p.pid) for p in processes])
        settle_parent(prepared, end_status(err))
        raise
    forget_workers(prepared, [process_identity(p.pid) for p in processes])
    for worker, code in enumerate(codes):
        if code != 0:
            print(
                f"worker {args.worker_id + worker} exited with status {code}; see its messages above", file=sys.stderr
            )
    state = settle_parent(prepared, "FAILED")  # FINISHED if the study reached its total
    return max(codes) or (1 if state == "FAILED" else 0)


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to the workers still running, ``STOP_GRACE_S`` to end their trials and runs, then SIGKILL."""
    import time

    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
