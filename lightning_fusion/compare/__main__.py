"""``python -m lightning_fusion.compare [--config experiments/X.yaml] [--fusions concat,late_weighted,... | --subsets]``

Did fusion beat the CNN and the ANN, and which fusion? Trains the unimodal models and the chosen
fusions on one split (see :mod:`lightning_fusion.compare.run`), records them as child runs of one
MLflow parent run, and prints the comparison table. With no ``--config``: the built-in demo cohort.
``--subsets`` trains one model per non-empty subset of the modalities instead and adds each
modality's Shapley value (:mod:`lightning_fusion.compare.subsets`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lightning_fusion.cli import (
    add_config_help,
    add_run_arguments,
    interrupt_exit_code,
    log_to_stderr,
    parse_run_args,
    print_run_location,
    run_reporting_input_errors,
    stop_on_sigterm,
)
from lightning_fusion.config import load_config


def main(argv: Sequence[str] | None = None) -> int:
    from lightning_fusion.compare.run import DEFAULT_FUSIONS

    parser = argparse.ArgumentParser(
        prog="python -m lightning_fusion.compare",
        description="CNN vs ANN vs fusion on the same split: the unimodal models and the chosen fusions, "
        "as child runs of one MLflow parent run, and a comparison table.",
        epilog="Trained fusions: concat, early, gated, attention, lmf, film, daft, channel_attention. Procedures "
        "on the unimodal models (not trained again): late_weighted (weights tuned on validation), stacking "
        "(meta-learner on held-out predictions), ensemble_mean. Any config key can be overridden as --section.key "
        "value.",
        add_help=False,
    )
    add_config_help(parser)
    parser.add_argument("--config", help="experiment YAML with two or more modalities (default: the built-in demo)")
    parser.add_argument("--fusions", help=f"comma-separated fusions (default: {','.join(DEFAULT_FUSIONS)})")
    parser.add_argument(
        "--subsets",
        action="store_true",
        help="instead of --fusions: one model per non-empty subset of the modalities (at most 5 modalities; the "
        "experiment's model.fusion on two or more) and each modality's Shapley value of test AUROC and balanced "
        "accuracy, with bootstrap intervals",
    )
    add_run_arguments(parser, "patient-grouped stratified K-fold cross-validation of every model")
    args, overrides = parse_run_args(parser, argv)
    log_to_stderr()
    stop_on_sigterm()  # SIGTERM ends the parent run KILLED instead of leaving it RUNNING
    from lightning_fusion.compare.run import parse_fusions, run_comparison  # heavy imports only when running
    from lightning_fusion.tracking import interrupt_of

    try:
        code, result = run_reporting_input_errors(
            lambda: run_comparison(
                load_config(args.config, overrides),
                None if args.fusions is None else parse_fusions(args.fusions),
                cv=args.cv,
                cv_repeats=args.cv_repeats,
                subsets=args.subsets,
            )
        )
    except BaseException as err:  # the parent run is already ended: KILLED by an interrupt, FAILED otherwise
        interrupt = interrupt_of(err)
        if interrupt is None:
            raise
        print(f"compare interrupted ({type(interrupt).__name__})", file=sys.stderr)
        return interrupt_exit_code(interrupt)
    if result is None:
        return code
    _print_result(result)
    return 0


def _print_result(result) -> None:
    from lightning_fusion.compare.report import display_paired, display_table, verdict
    from lightning_fusion.evaluation.report import markdown_table
    from lightning_fusion.mlflow_ui import run_url, view_url

    print()
    print(markdown_table(display_table(result.table)), end="")
    if len(result.paired):
        print()
        print(markdown_table(display_paired(result.paired)), end="")
    print()
    print(verdict(result))
    if result.shapley is not None:
        from lightning_fusion.compare.subsets import shapley_markdown

        print()
        print(shapley_markdown(result.shapley, result.subset_scores), end="")
    where = (result.tracking_uri, result.experiment_id, result.parent_run_id)
    pages = {"models": view_url(*where), "verdict": run_url(*where)}  # the children by balanced accuracy; the parent
    print_run_location("MLflow parent run", result.parent_run_id, result.experiment_id, result.tracking_uri, pages)


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
