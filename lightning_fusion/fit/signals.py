"""Stop signals of a run: SIGTERM (preemption, ``scancel``, ``torchrun`` stopping its workers) and SIGINT (Ctrl+C).

A signal is not a failure: the run ends KILLED, with its last checkpoint logged, and
``fit --resume`` continues it. While :class:`StopSignals` is active (a whole ``fit`` or ``fit --cv``):

* inside ``trainer.fit`` / ``trainer.test`` the stop waits for the end of the current batch (one
  process: Lightning's own SIGTERM handler, which calls ours too, and :class:`StopTogether` for
  SIGINT), so an epoch's metrics are never logged without its checkpoint;
* several processes (DDP): :class:`StopTogether` replaces Lightning's handler, which broadcasts
  from inside the signal handler (a collective at whatever point each rank was: ranks that were one
  collective apart deadlock) and stops each rank on its own in validation. A signal is recorded;
  after each training batch the ranks agree (one all-reduce) whether any of them got one, and all
  stop at that batch; a signal in validation or testing stops them at the next such point, or
  after ``trainer.fit`` / ``trainer.test``;
* anywhere else (reading data, logging artifacts) the first signal raises :class:`StopRequested`
  where the program is;
* while the run is being closed (:func:`closing`) a signal is recorded and otherwise ignored, so a
  checkpoint upload is not cut short (SIGKILL still ends the process); a second Ctrl+C inside the
  Trainer stops at once.

:func:`received` says which signal arrived; the run's code turns whatever exception the stop took
(Lightning's ``SIGTERMException``, the ``SystemExit`` it makes of a ``KeyboardInterrupt``, ours) into
:class:`RunInterrupted`.
"""

from __future__ import annotations

import signal
import threading
from contextlib import ContextDecorator
from types import FrameType
from typing import Any

import lightning as L

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_state: dict[str, int | None] = {"depth": 0, "received": None, "raised": None}  # raised: 0 while closing


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


def stop_signal(error: BaseException | None) -> int | None:
    """The stop signal that ended the code ``error`` came out of: the one received, else the interrupt
    behind ``error`` (a ``KeyboardInterrupt`` raised without a signal is Ctrl+C; Lightning's
    ``SIGTERMException`` and :class:`~lightning_fusion.cli.Terminated` are SIGTERM); ``None`` for an error."""
    from lightning_fusion.cli import interrupt_exit_code
    from lightning_fusion.tracking import interrupt_of

    if received() is not None:
        return received()
    interrupt = interrupt_of(error)
    return None if interrupt is None else interrupt_exit_code(interrupt) - 128


def closing() -> None:
    """The run is being closed (after an error or a stop): from now on a signal is recorded, never raised,
    so that keeping the checkpoint and marking the run are not cut short."""
    if _state["raised"] is None:
        _state["raised"] = 0


def raise_if_received() -> None:
    """Raise :class:`StopRequested` for a signal that arrived while Lightning's handler had it and did not stop."""
    signum = received()
    if signum is not None and _state["raised"] is None:  # (0: closing)
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


class StopTogether(L.Callback):
    """Inside the Trainer: SIGINT stops like SIGTERM; DDP: every rank stops at the same batch (see above)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(received() is not None, all=False):
            # every rank at once: Lightning's own check at the end of this batch stops them all here
            trainer._signal_connector.received_sigterm = True

    @staticmethod
    def _take_over(trainer: L.Trainer) -> None:
        """After Lightning registered its handlers (it restores the previous ones at teardown).

        One process: SIGINT too stops at the next batch, as Lightning stops SIGTERM (a KeyboardInterrupt
        raised between an epoch's logged metrics and its checkpoint would lose that epoch on resume).
        Several: both signals are only recorded here; the ranks agree after each batch.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        several = trainer.world_size > 1

        def handle(signum: int, frame: FrameType | None) -> None:
            if _state["received"] is None:
                _state["received"] = signum
                if not several:
                    trainer._signal_connector.received_sigterm = True  # Lightning's stop at the next batch
                elif trainer.strategy.launcher is not None:  # Lightning's launcher: pass it on to its ranks
                    trainer.strategy.launcher.kill(signum)
            elif signum == signal.SIGINT:  # Ctrl+C twice: stop now
                raise StopRequested(signum)

        for signum in SIGNALS if several else (signal.SIGINT,):
            signal.signal(signum, handle)


__all__ = [
    "RunInterrupted",
    "StopRequested",
    "StopSignals",
    "StopTogether",
    "raise_if_received",
    "received",
    "stop_signal",
]
