"""What the command-line entry points share: dotted overrides, the run options, the generated config
help, and how input errors end a run.

``fit``, ``compare``, ``sweep`` and ``predict`` print a bad config, bad data, missing weights, an
unusable model or an MLflow store that cannot be used at the start as one line (``config error: ...``,
``data error: ...``, ``weights error: ...``, ``model error: ...``, ``tracking error: ...``) and exit
with status 2; nothing else is caught. ``fit``, ``compare`` and ``sweep`` list every config key in
``--help`` (generated from the schema, see :mod:`lightning_fusion.config.help`) and the registered
components in ``--help-components KIND``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from lightning_fusion.config import parse_override_value
from lightning_fusion.config.components import KINDS
from lightning_fusion.errors import ConfigError, DataError, UnknownNameError

T = TypeVar("T")


class _ConfigHelp(argparse.Action):
    """``-h/--help`` (argparse's help, then every config key) or ``--help-components KIND``.

    The text is generated only when asked for.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, dash: str = "--", how: str = "", **kwargs: Any):
        self.dash, self.how = dash, how
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        from lightning_fusion.config.help import components_help, config_help

        if values:  # --help-components KIND
            print(components_help(values, self.dash))
        else:
            print(parser.format_help())
            print(config_help(self.dash, self.how))
        parser.exit()


def add_config_help(parser: argparse.ArgumentParser, keys_as_overrides: bool = True) -> None:
    """``-h/--help`` that also lists every config key, and ``--help-components KIND``.

    The parser must be made with ``add_help=False``. ``keys_as_overrides``: the command takes
    ``--section.key value`` overrides (``fit``, ``compare``); otherwise the keys are listed as written
    in a file (``sweep``: a study's ``overrides`` and ``space``).
    """
    dash, how = (
        ("--", "set them in the experiment file, or override one as --section.key VALUE")
        if keys_as_overrides
        else ("", "dotted keys of the base experiment, for the study file's overrides and space")
    )
    parser.add_argument(
        "-h", "--help", action=_ConfigHelp, nargs=0, dash=dash, how=how, help="show this help and every config key"
    )
    parser.add_argument(
        "--help-components",
        action=_ConfigHelp,
        dash=dash,
        choices=KINDS,
        metavar="KIND",
        help=f"list the registered components of KIND ({', '.join(KINDS)}) with their options",
    )


def add_run_arguments(parser: argparse.ArgumentParser, cv_help: str) -> None:
    """``--cv K``, ``--cv-repeats R`` and ``--tracking-uri``."""
    parser.add_argument("--cv", type=int, metavar="K", help=cv_help)
    parser.add_argument("--cv-repeats", type=int, default=1, metavar="R", help="repeat the K folds R times (seeds)")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )


def parse_run_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Known options, checked, and the remaining ``--section.key value`` pairs as overrides."""
    args, rest = parser.parse_known_args(argv)
    if args.cv is not None and args.cv < 2:
        parser.error(f"--cv needs at least 2 folds, got {args.cv}")
    if args.cv_repeats < 1:
        parser.error(f"--cv-repeats must be >= 1, got {args.cv_repeats}")
    overrides = parse_overrides(parser, rest)
    if args.tracking_uri:
        overrides["tracking.tracking_uri"] = args.tracking_uri
    return args, overrides


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


def run_reporting_input_errors(call: Callable[[], T]) -> tuple[int, T | None]:
    """``(0, result)``, or ``(2, None)`` after printing a config, data or weights error on one line."""
    from lightning_fusion.errors import ModelLoadError, PretrainedWeightsError, TrackingError

    try:
        return 0, call()
    except ModelLoadError as err:
        print(f"model error: {err}", file=sys.stderr)
    except (ConfigError, UnknownNameError) as err:
        print(f"config error: {err}", file=sys.stderr)
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
    except PretrainedWeightsError as err:  # raised while building a model, before any run exists
        print(f"weights error: {err}", file=sys.stderr)
    except TrackingError as err:  # the store could not be used to start a run: none exists
        print(f"tracking error: {err}", file=sys.stderr)
    return 2, None


def print_run_location(
    what: str, run_id: str, experiment_id: str, uri: str, pages: Mapping[str, str] | None = None
) -> None:
    """Where the run landed, how to browse it, and the MLflow UI pages that open on it (label → URL)."""
    print(f"{what} {run_id} (experiment {experiment_id}) in {uri}")
    print(f"  browse: mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"  tracking server: {uri}")
    for label, url in (pages or {}).items():
        print(f"  {label}: {url}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that a command ends its runs (KILLED) instead of dying with them RUNNING."""

    exit_code = 128 + signal.SIGTERM


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises :class:`Terminated` in the main thread, once: a SIGTERM during the
    clean-up after an interrupt (Ctrl-C, or an earlier SIGTERM) is ignored so the clean-up finishes
    (SIGKILL still stops everything)."""
    if threading.current_thread() is not threading.main_thread():
        return
    received: list[int] = []

    def handler(signum: int, frame) -> None:
        handled = sys.exc_info()[1]  # the exception the interrupted code is handling, if any
        while handled is not None:
            if isinstance(handled, KeyboardInterrupt):
                return
            handled = handled.__cause__ or handled.__context__
        if not received:
            received.append(signum)
            raise Terminated(f"received signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def interrupt_exit_code(interrupt: BaseException) -> int:
    """The conventional exit status of a command stopped by ``interrupt``: 143 for SIGTERM, 130 for Ctrl-C."""
    if isinstance(getattr(interrupt, "exit_code", None), int):  # it knows its signal (Terminated, a stopped fit)
        return interrupt.exit_code
    ctrl_c = isinstance(interrupt, KeyboardInterrupt) and not isinstance(interrupt, Terminated)
    return 128 + signal.SIGINT if ctrl_c else Terminated.exit_code  # else SIGTERM, ours or Lightning's


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests and notebooks swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def log_to_stderr() -> None:
    """Our own INFO messages (counts, exclusions) on stderr; Lightning configures its own logger.

    Also quiets other libraries' output that a reader of a run does not need (:func:`quiet_other_libraries`).
    """
    logger = logging.getLogger("lightning_fusion")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    quiet_other_libraries()


# Other libraries' lines that a command's reader does not need: each is one message of one named logger
# or one warning of one module, never a whole library (their other warnings and Lightning's run status,
# e.g. "GPU available", and progress bar stay).
_FOREIGN_LOG_MESSAGES = {
    "lightning.pytorch.utilities.rank_zero": (
        r"💡 Tip: .*litlogger",  # an advert for Lightning's cloud logger, on every Trainer (we track with MLflow)
        # testing / predicting with the best checkpoint: these name its staging copy, deleted when the run ends
        r"Restoring states from the checkpoint path at ",
        r"Loaded model weights from the checkpoint at ",
        # the cosine / one-cycle schedules ask the trainer for the number of optimiser steps (schedules.py)
        r"Loading `train_dataloader` to estimate number of stepping batches\.$",
    ),
    # our runs log into an experiment that the first run creates: a normal event, not a warning
    "lightning.pytorch.loggers.mlflow": (r"Experiment with name .* not found\. Creating it\.$",),
    # the pyfunc model's input example is checked against its signature (a failure still raises)
    "mlflow.pyfunc": (r"Validating input example against model signature$",),
    # a sweep's new Optuna study (journal, database or in memory): our own INFO line says where and how far
    **{
        f"optuna.storages.{storage}": (r"A new study created in ",)
        for storage in ("journal._storage", "_rdb.storage", "_in_memory")
    },
}
_FOREIGN_LOGGER_LEVELS = {
    # a new SQLite store: "Creating initial MLflow database tables...", "Updating database tables"
    "mlflow.store.db.utils": logging.WARNING,
}
_FOREIGN_WARNINGS = (
    # torch deprecates LeafSpec, which Lightning's own _pytree helper still builds (not our code)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # a class absent from a (small) validation or test split: its one-vs-rest AUROC is undefined; the
    # data module's INFO line already shows the per-split class counts
    (r"No (positive|negative) samples in targets", UserWarning, r"torchmetrics\.utilities\.prints"),
    # a resumed run keeps checkpointing into its own staging folder, which holds its last checkpoint on purpose
    (
        r"Checkpoint directory .* exists and is not empty\.$",
        UserWarning,
        r"lightning\.pytorch\.callbacks\.model_checkpoint",
    ),
)


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message matches one of ``patterns``."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_other_libraries() -> None:
    """Silence, precisely, the other libraries' lines listed above (idempotent).

    MLflow's artifact progress bars (its local copy of the checkpoint into the pyfunc model, a model
    download in ``predict``) are off unless ``$MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` says otherwise.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name, patterns in _FOREIGN_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(patterns))
    for name, level in _FOREIGN_LOGGER_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    for message, category, module in _FOREIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
