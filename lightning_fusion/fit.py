"""``python -m lightning_fusion.fit [--config experiments/X.yaml] [--section.key value ...] [--print-config]``

With no argument: generate (once, then cached) the built-in synthetic perfusion cohort and train the
image + clinical fusion model on it, recording the run in MLflow.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from lightning_fusion.config import ConfigError, load_config, parse_override_value, to_yaml
from lightning_fusion.data.cohort import DataError


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_fusion.fit",
        description="Train and test one model from an experiment config; the run is recorded in MLflow.",
        epilog="Any config key can be overridden as --section.key value, e.g. --trainer.max_epochs 5 "
        "--model.modalities [image]",
    )
    parser.add_argument("--config", help="experiment YAML (default: the built-in demo)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--cv", type=int, metavar="K", help="patient-grouped stratified K-fold cross-validation instead of one split"
    )
    parser.add_argument("--cv-repeats", type=int, default=1, metavar="R", help="repeat the K folds R times (seeds)")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    args, rest = parser.parse_known_args(argv)
    if args.cv is not None and args.cv < 2:
        parser.error(f"--cv needs at least 2 folds, got {args.cv}")
    if args.cv_repeats < 1:
        parser.error(f"--cv-repeats must be >= 1, got {args.cv_repeats}")
    return args, parse_overrides(parser, rest)


def parse_overrides(parser: argparse.ArgumentParser, rest: list[str]) -> dict[str, Any]:
    """``--a.b value`` / ``--a.b=value`` pairs → ``{"a.b": parsed value}`` (YAML scalars and lists)."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--") or len(token) == 2:
            parser.error(f"expected --section.key value, got {token!r}")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(rest):
                parser.error(f"--{key} needs a value")
            value, i = rest[i + 1], i + 1
        overrides[key] = parse_override_value(value)
        i += 1
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    if args.tracking_uri:
        overrides["tracking.tracking_uri"] = args.tracking_uri
    log_to_stderr()
    try:
        config = load_config(args.config, overrides)
    except (ConfigError, KeyError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    from lightning_fusion.encoders.image import PretrainedWeightsError
    from lightning_fusion.training import fit  # heavy imports only when training

    try:
        if args.cv:
            from lightning_fusion.crossval import cross_validate

            cv_result = cross_validate(config, args.cv, args.cv_repeats)
            _print_cv_summary(config, cv_result, args.cv)
            return 0
        result = fit(config)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 2
    except PretrainedWeightsError as err:  # raised while building the model, before any run exists
        print(f"weights error: {err}", file=sys.stderr)
        return 2
    if result.run_id:  # rank 0 only: the other DDP processes have no run to report
        _print_summary(result)
    return 0


def log_to_stderr() -> None:
    """Our own INFO messages (counts, exclusions) on stderr; Lightning configures its own logger."""
    logger = logging.getLogger("lightning_fusion")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _print_cv_summary(config, result, k: int) -> None:
    from lightning_fusion.crossval import summary_lines

    repeats = int(result.folds["repeat"].max()) + 1
    print(f"\n{config.name}: {k}-fold cross-validation x {repeats}, {len(result.folds)} fold models, test metrics:")
    print("\n".join(summary_lines(result)))
    uri = result.tracking_uri
    print(f"MLflow parent run {result.parent_run_id} (experiment {result.experiment_id}) in {uri}")


def _print_summary(result) -> None:
    summary = result.data_summary
    counts = {split: sum(c.values()) for split, c in summary["counts"].items()}
    excluded = sum(summary["excluded"].values())
    print(
        f"\n{result.tags['lf.model_kind']} model ({result.tags['lf.modalities']}, fusion {result.tags['lf.fusion']}) "
        f"on {summary['dataset']}: {counts['train']} train / {counts['val']} val / {counts['test']} test patients"
        + (f", {excluded} excluded" if excluded else "")
    )
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
    uri = result.tracking_uri
    print(f"MLflow run {result.run_id} (experiment {result.experiment_id}) in {uri}")
    print(f"  browse: mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"  tracking server: {uri}")


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
