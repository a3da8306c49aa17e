"""``python -m lightning_fusion.fit [--config experiments/X.yaml] [--section.key value ...] [--print-config]``

With no argument: generate (once, then cached) the built-in synthetic perfusion cohort and train the
image + clinical fusion model on it, recording the run in MLflow.

``--seeds N`` trains N models on one split (seeds seed..seed+N-1) and tests their ensemble once; it
and ``--cv K`` leave an ensemble model on their parent run (:mod:`lightning_fusion.fit.seeds`,
:mod:`lightning_fusion.fit.crossval`), which predict, serving and the web page load like one model.

``--resume <run id | runs:/<run id> | checkpoint>`` continues a run that a signal stopped (SIGTERM,
SIGINT: it ended KILLED; the exit status was 128 + the signal's number) or an error ended, in the
same run; see :mod:`lightning_fusion.fit.resume`. In a requeued SLURM job the same command resumes
by itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from lightning_fusion.cli import (
    add_config_help,
    add_run_arguments,
    log_to_stderr,
    parse_run_args,
    print_run_location,
    run_reporting_input_errors,
)
from lightning_fusion.config import load_config, to_yaml


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_fusion.fit",
        description="Train and test one model from an experiment config; the run is recorded in MLflow.",
        epilog="Any config key can be overridden as --section.key value, e.g. --trainer.max_epochs 5 "
        "--model.modalities [image]",
        add_help=False,
    )
    add_config_help(parser)
    parser.add_argument("--config", help="experiment YAML (default: the built-in demo)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a stopped (KILLED) or failed run from its last completed epoch, in the same MLflow run: a "
        "run id, runs:/<run id> or a checkpoint file; its config is kept (only where it trains and a raised "
        "trainer.max_epochs may differ)",
    )
    add_run_arguments(parser, "patient-grouped stratified K-fold cross-validation instead of one split")
    parser.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="train N models on the same split with seeds seed..seed+N-1 and test their ensemble (the mean of "
        "their probabilities) once",
    )
    args, overrides = parse_run_args(parser, argv)
    if args.resume and (args.cv or args.seeds is not None):
        what = "a cross-validation (--cv)" if args.cv else "an ensemble of seeds (--seeds)"
        parser.error(f"--resume continues one run; {what} is not resumed")
    if args.cv and args.seeds is not None:
        parser.error("--cv and --seeds each make an ensemble; choose one")
    return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    log_to_stderr()
    code, config = run_reporting_input_errors(lambda: load_config(args.config, overrides))
    if config is None:
        return code
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    from lightning_fusion.fit import ranks, signals

    try:
        if args.cv:
            from lightning_fusion.fit.crossval import cross_validate

            code, cv_result = run_reporting_input_errors(lambda: cross_validate(config, args.cv, args.cv_repeats))
            if cv_result is not None and ranks.is_global_zero():
                _print_cv_summary(config, cv_result, args.cv)
            return code
        if args.seeds is not None:
            from lightning_fusion.fit.seeds import fit_seeds

            code, seeds_result = run_reporting_input_errors(lambda: fit_seeds(config, args.seeds))
            if seeds_result is not None and ranks.is_global_zero():
                _print_seeds_summary(config, seeds_result)
            return code
        return _fit(args, overrides, config)
    except signals.RunInterrupted as stopped:
        _print_stopped(stopped, config)
        return stopped.exit_code
    except (KeyboardInterrupt, SystemExit):
        signum = signals.received()
        if signum is None:
            raise
        if ranks.is_global_zero():
            print(f"stopped by {_signal_name(signum)} before a run existed", file=sys.stderr)
        return 128 + signum


def _fit(args: argparse.Namespace, overrides: dict[str, Any], config) -> int:
    from lightning_fusion.fit import ranks, resume
    from lightning_fusion.fit.run import fit  # heavy imports only when training

    reference = args.resume or resume.requeued_run(config)
    if reference and not args.resume and ranks.is_global_zero():
        print(f"requeued SLURM job: resuming run {reference}", file=sys.stderr)

    def train():
        point = resume.prepare(reference, args.config, overrides, config) if reference else None
        return fit(
            point.config if point else config,
            resume=point,
            on_run=lambda run_id: resume.remember_for_requeue(config, run_id),
        )

    from lightning_fusion.fit.signals import RunInterrupted

    try:
        code, result = run_reporting_input_errors(train)
    except RunInterrupted:
        raise  # resumable: a requeued job finds the run
    except BaseException:
        if ranks.is_global_zero():
            resume.forget_for_requeue(config)
        raise
    if ranks.is_global_zero():
        resume.forget_for_requeue(config)  # finished, or bad input: a requeued job starts afresh
        if result is not None and result.run_id:  # the other processes have nothing to report
            _print_summary(result)
    return code


def _signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _print_stopped(stopped, config) -> None:
    """Rank 0: which run was stopped, what it kept, and the command that resumes it."""
    from lightning_fusion.fit import ranks

    if not ranks.is_global_zero():
        return
    name = _signal_name(stopped.signum)
    if not stopped.run_id:
        print(f"stopped by {name} before a run existed", file=sys.stderr)
        return
    print(f"stopped by {name}: MLflow run {stopped.run_id} is KILLED", file=sys.stderr)
    if stopped.checkpoint:
        uri = f" --tracking-uri {config.tracking.tracking_uri}" if config.tracking.tracking_uri else ""
        print(f"  its last completed epoch is kept: {stopped.checkpoint}", file=sys.stderr)
        print(f"  resume: python -m lightning_fusion.fit --resume {stopped.run_id}{uri}", file=sys.stderr)


def _print_cv_summary(config, result, k: int) -> None:
    from lightning_fusion.fit.crossval import summary_lines
    from lightning_fusion.mlflow_ui import run_url, view_url

    repeats = int(result.folds["repeat"].max()) + 1
    print(f"\n{config.name}: {k}-fold cross-validation x {repeats}, {len(result.folds)} fold models, test metrics:")
    print("\n".join(summary_lines(result)))
    where = (result.tracking_uri, result.experiment_id, result.parent_run_id)
    pages = {"folds": view_url(*where), "summary": run_url(*where)}  # the fold models; the parent's description
    print_run_location("MLflow parent run", result.parent_run_id, result.experiment_id, result.tracking_uri, pages)
    if result.ensemble_logged:
        print(f"  it holds the ensemble of the {len(result.folds)} fold models (the mean of their probabilities):")
        _print_model_commands(result.tracking_uri, result.parent_run_id, config.tracking.log_model)


def _print_seeds_summary(config, result) -> None:
    from lightning_fusion.fit.seeds import summary_lines
    from lightning_fusion.mlflow_ui import run_url

    counts = {split: sum(c.values()) for split, c in result.data_summary["counts"].items()}
    print(
        f"\n{config.name}: ensemble of {len(result.seeds)} models (seeds {result.seeds[0]}..{result.seeds[-1]}) on "
        f"{counts['train']} train / {counts['val']} val / {counts['test']} test patients, tested once:"
    )
    print("\n".join(summary_lines(result)))
    if result.operating_point is not None:
        point = result.operating_point
        print(f"  decision threshold {point.threshold:.3f} on P({point.positive_class}), {point.method} on validation")
        _print_thresholded(result.test_metrics, "  ")
    page = {"open": run_url(result.tracking_uri, result.experiment_id, result.parent_run_id)}
    print_run_location("MLflow parent run", result.parent_run_id, result.experiment_id, result.tracking_uri, page)
    _print_model_commands(result.tracking_uri, result.parent_run_id, result.model_logged)


def _print_thresholded(metrics: dict[str, float], indent: str) -> None:
    """A binary model's thresholded test metrics at 0.5 and at its decision threshold, if it has one."""
    if "test/threshold" in metrics:
        thresholded = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1")
        print(
            f"{indent}at 0.5 / at the decision threshold {metrics['test/threshold']:.3f}: "
            + "  ".join(
                f"{n} {metrics[f'test/at_0.5/{n}']:.3f} / {metrics[f'test/at_threshold/{n}']:.3f}" for n in thresholded
            )
        )


def _print_model_commands(uri: str, run: str, served: bool) -> None:
    print(f"  predict: python -m lightning_fusion.predict --model runs:/{run} --tracking-uri {uri}")
    if served:
        print(f"  serve:   MLFLOW_TRACKING_URI={uri} mlflow models serve -m runs:/{run}/model --env-manager local")


def _print_summary(result) -> None:
    from lightning_fusion.fit.results import class_balance_line
    from lightning_fusion.mlflow_ui import run_url

    summary = result.data_summary
    counts = {split: sum(c.values()) for split, c in summary["counts"].items()}
    excluded = sum(summary["excluded"].values())
    print(
        f"\n{result.tags['lf.model_kind']} model ({result.tags['lf.modalities']}, fusion {result.tags['lf.fusion']}) "
        f"on {summary['dataset']}: {counts['train']} train / {counts['val']} val / {counts['test']} test patients"
        + (f", {excluded} excluded" if excluded else "")
    )
    if "lf.class_balancing" in result.tags:
        print(class_balance_line(result.tags, summary["counts"]["train"]))
    names = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "loss")
    metrics = result.test_metrics

    def shown(name: str) -> str:
        low, high = metrics.get(f"test/{name}_ci_low"), metrics.get(f"test/{name}_ci_high")
        interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        return f"{name} {metrics[f'test/{name}']:.3f}{interval}"

    print("test  " + "  ".join(shown(n) for n in names if f"test/{n}" in metrics))
    collapsed = [n for n in names if metrics.get(f"test/{n}_ci_low", 0) == metrics.get(f"test/{n}_ci_high", 1)]
    if collapsed and "test/accuracy_exact_ci_low" in metrics:
        print(
            f"      {', '.join(collapsed)}: every resample scores the same, so the bootstrap interval collapses; "
            f"exact binomial interval for accuracy [{metrics['test/accuracy_exact_ci_low']:.3f}, "
            f"{metrics['test/accuracy_exact_ci_high']:.3f}]"
        )
    if "test/ece" in metrics:
        print(
            f"      calibration: ECE {metrics['test/ece']:.3f}  Brier {metrics['test/brier']:.3f}  (95% bootstrap "
            "intervals in brackets; report.html in the run)"
        )
    _print_thresholded(metrics, "      ")
    page = {"open": run_url(result.tracking_uri, result.experiment_id, result.run_id)}
    print_run_location("MLflow run", result.run_id, result.experiment_id, result.tracking_uri, page)
    if result.model_logged:
        _print_model_commands(result.tracking_uri, result.run_id, True)


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
