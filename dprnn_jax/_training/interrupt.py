"""Stopping cleanly on SIGINT (Ctrl-C) and SIGTERM.

While the training loop runs, the first of these signals only asks it to stop: the step
in flight finishes, a checkpoint of it is written (atomically), and `train` raises
`TrainingInterrupted`, whose message says exactly what is on disk. A second signal
stops at once (`Interrupted`); the checkpoint on disk is then the last complete one,
since every write is atomic.

Both exceptions are `KeyboardInterrupt`s, so code that catches Ctrl-C keeps working, and
both remember the signal, so the command line exits with 128 + its number (130 for
SIGINT, 143 for SIGTERM), as a shell reports a process killed by it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A `KeyboardInterrupt` that remembers the signal that caused it."""

    def __init__(self, signum: int, message: str = "interrupted"):
        super().__init__(message)
        self.signal = signal.Signals(signum)


class TrainingInterrupted(Interrupted):
    """`train` stopped by SIGINT or SIGTERM; `str(error)` says what is on disk.

    Attributes:
        signal: the signal (`signal.SIGINT` or `signal.SIGTERM`).
        step: the steps completed when the run stopped.
        checkpoint_step: the step of the checkpoint in the output folder after the stop
            (None: there is none), read back from the file itself.

    Example:
        >>> issubclass(TrainingInterrupted, KeyboardInterrupt)  # Ctrl-C handlers catch it
        True
    """

    def __init__(self, signum: int, message: str, *, step: int, checkpoint_step: int | None):
        super().__init__(signum, message)
        self.step = step
        self.checkpoint_step = checkpoint_step


class StopRequest:
    """Set by the first stop signal: `signal` is None until one arrives."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None


def raise_interrupted(signum: int, frame: object) -> None:
    """A signal handler that raises `Interrupted` (what SIGINT does, for any signal)."""
    del frame
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, the first SIGINT/SIGTERM sets the returned `StopRequest` and
    the second raises `Interrupted`; the previous handlers come back afterwards.

    Outside the main thread no handler can be installed, and a signal that the process
    ignores (as a shell's background job ignores SIGINT) stays ignored: the request is
    then never set by it.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: object) -> None:
        if request.signal is None:
            request.signal = signal.Signals(signum)
        else:
            raise_interrupted(signum, frame)

    # A signal ignored by the parent (SIGINT for a background job of a shell) stays ignored.
    previous = {
        signum: signal.signal(signum, handler)
        for signum in STOP_SIGNALS
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield request
    finally:
        for signum, old in previous.items():
            # None: the old handler was not installed from Python; the default stands in.
            signal.signal(signum, signal.SIG_DFL if old is None else old)
