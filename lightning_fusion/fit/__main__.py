"""``python -m lightning_fusion.fit [--config experiments/X.yaml] [--section.key value ...] [--print-config]``

With no argument: generate (once, then cached) the built-in synthetic perfusion cohort and train the
image + clinical fusion model on it, recording the run in MLflow.
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
    add_run_arguments(parser, "patient-grouped stratified K-fold cross-validation instead of one split")
    return parse_run_args(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    log_to_stderr()
    code, config = run_reporting_input_errors(lambda: load_config(args.config, overrides))
    if config is None:
        return code
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    if args.cv:
        from lightning_fusion.cli import stop_on_sigterm
        from lightning_fusion.fit.crossval import cross_validate

        stop_on_sigterm()  # SIGTERM ends the cross-validation's parent run KILLED instead of leaving it RUNNING

        code, cv_result = run_reporting_input_errors(lambda: cross_validate(config, args.cv, args.cv_repeats))
        if cv_result is not None:
            _print_cv_summary(config, cv_result, args.cv)
        return code
    from lightning_fusion.fit.run import fit  # heavy imports only when training

    code, result = run_reporting_input_errors(lambda: fit(config))
    if result is not None and result.run_id:  # rank 0 only: the other DDP processes have no run to report
        _print_summary(result)
    return code


def _print_cv_summary(config, result, k: int) -> None:
    from lightning_fusion.fit.crossval import summary_lines
    from lightning_fusion.mlflow_ui import run_url, view_url

    repeats = int(result.folds["repeat"].max()) + 1
    print(f"\n{config.name}: {k}-fold cross-validation x {repeats}, {len(result.folds)} fold models, test metrics:")
    print("\n".join(summary_lines(result)))
    where = (result.tracking_uri, result.experiment_id, result.parent_run_id)
    pages = {"folds": view_url(*where), "summary": run_url(*where)}  # the fold models; the parent's description
    print_run_location("MLflow parent run", result.parent_run_id, result.experiment_id, result.tracking_uri, pages)


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
    page = {"open": run_url(result.tracking_uri, result.experiment_id, result.run_id)}
    print_run_location("MLflow run", result.run_id, result.experiment_id, result.tracking_uri, page)
    if result.model_logged:
        uri, run = result.tracking_uri, result.run_id
        print(f"  predict: python -m lightning_fusion.predict --model runs:/{run} --tracking-uri {uri}")
        print(f"  serve:   MLFLOW_TRACKING_URI={uri} mlflow models serve -m runs:/{run}/model --env-manager local")


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
