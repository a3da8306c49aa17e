"""Stop signals of a run: SIGTERM (preemption, ``scancel``, ``torchrun`` stopping its workers) and SIGINT (Ctrl+C).

A signal is not a failure: the run ends KILLED, with its last checkpoint logged, and
``fit --resume`` continues it. While :class:`StopSignals` is active (a whole ``fit`` or ``fit --cv``):

* inside ``trainer.fit`` / ``trainer.test`` Lightning's own SIGTERM handler is in place (it calls
  ours too): it stops every rank together at the next batch, so ours only records the signal;
* anywhere else (reading data, testing, logging artifacts) the first signal raises
  :class:`StopRequested` where the program is;
* a second signal while the run is being closed is recorded and otherwise ignored, so a
  checkpoint upload is not cut short (SIGKILL still ends the process).

:func:`received` says which signal arrived; the run's code turns whatever exception the stop took
(Lightning's ``SIGTERMException``, the ``SystemExit`` it makes of a ``KeyboardInterrupt``, ours) into
:class:`RunInterrupted`.
"""

from __future__ import annotations

import signal
import threading
from contextlib import ContextDecorator
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_state: dict[str, int | None] = {"depth": 0, "received": None, "raised": None}


class StopRequested(KeyboardInterrupt):
    """Raised by the handler where the program was when a stop signal arrived (outside Lightning's loops)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal: KILLED in MLflow, resumable from ``checkpoint`` (when one was kept)."""

    def __init__(self, signum: int, run_id: str | None = None, checkpoint: str | None = None) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.run_id, self.checkpoint = signum, run_id, checkpoint

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by this signal: 128 + its number (143 SIGTERM, 130 SIGINT)."""
        return 128 + self.signum


def received() -> int | None:
    """The first stop signal since the outermost :class:`StopSignals` began, else ``None``."""
    return _state["received"]


def raise_if_received() -> None:
    """Raise :class:`StopRequested` for a signal that arrived while Lightning's handler had it and did not stop."""
    signum = received()
    if signum is not None and _state["raised"] is None:
        _state["raised"] = signum
        raise StopRequested(signum)


class StopSignals(ContextDecorator):
    """Context manager or decorator: SIGTERM and SIGINT stop the run (see the module docstring); re-entrant."""

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}

    def _recreate_cm(self) -> StopSignals:  # a decorated function's calls each get their own
        return type(self)()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            return self
        if _state["depth"] == 0:
            _state["received"] = _state["raised"] = None
        _state["depth"] = int(_state["depth"] or 0) + 1
        self._previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
        for signum in SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._previous:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous = {}
        _state["depth"] = int(_state["depth"] or 1) - 1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if _state["received"] is None:
            _state["received"] = signum
        if signal.getsignal(signum) != self._handle:
            return  # Lightning's handler called ours: it stops every rank at the next batch
        if _state["raised"] is None:
            _state["raised"] = signum
            raise StopRequested(signum)


__all__ = ["RunInterrupted", "StopRequested", "StopSignals", "raise_if_received", "received"]
