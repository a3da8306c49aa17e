"""Stopping a real command while it trains, for the tests of how runs end (KILLED, nothing left RUNNING)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from tests.conftest import all_runs


def interrupt_while_training(
    args: list[str], uri: str, sig: int, ready: Callable[[list], bool], cwd: str | None = None, timeout: float = 180
) -> int:
    """Run ``python -m <args>``, send ``sig`` once ``ready(runs)`` holds for the MLflow runs, return the exit status."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + timeout
        while not ready(all_runs(uri)):
            if process.poll() is not None or time.time() > deadline:
                raise AssertionError(f"the command never got ready (exit status {process.poll()}): {args}")
            time.sleep(0.5)
        time.sleep(1)
        process.send_signal(sig)
        return process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def lightning_style_interrupt() -> None:
    """What Lightning's ``Trainer`` does with Ctrl-C inside ``fit``: ``SystemExit(1)`` while handling it."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        sys.exit(1)


def raise_or_call(stop) -> None:
    """Raise ``stop`` (an exception class) or call it (a function that raises)."""
    if isinstance(stop, type):
        raise stop("stopped by the test")
    stop()
