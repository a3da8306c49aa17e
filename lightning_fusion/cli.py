"""What the command-line entry points share: dotted overrides, the run options, and how input errors end a run.

``fit``, ``compare``, ``sweep`` and ``predict`` print a bad config, bad data, missing weights or an
unusable model as one line (``config error: ...``, ``data error: ...``, ``weights error: ...``,
``model error: ...``) and exit with status 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lightning_fusion.config import parse_override_value
from lightning_fusion.errors import ConfigError, DataError, UnknownNameError

T = TypeVar("T")


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
    from lightning_fusion.errors import ModelLoadError, PretrainedWeightsError

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
    return 2, None


def print_run_location(what: str, run_id: str, experiment_id: str, uri: str) -> None:
    """Where the run landed, and how to browse it."""
    print(f"{what} {run_id} (experiment {experiment_id}) in {uri}")
    print(f"  browse: mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"  tracking server: {uri}")


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
    """Our own INFO messages (counts, exclusions) on stderr; Lightning configures its own logger."""
    logger = logging.getLogger("lightning_fusion")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
