"""SIGINT and SIGTERM as an exception that reaches `main`, even from inside a finaliser."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

# How long a stop signal's exception may take to reach `main` before the process exits
# without it (see `stop_signals_as_interrupt`).
STOP_GRACE_SECONDS = 10.0


@contextlib.contextmanager
def stop_signals_as_interrupt():
    """Within the block SIGINT and SIGTERM raise `Interrupted` (SIGTERM would otherwise
    end the process on the spot, with no files closed and no checkpoint written).

    Python runs a signal handler between two bytecodes of the main thread, which may be
    inside a finaliser (`__del__`, a weakref callback); an exception raised there is
    printed and dropped, and the command would run to its end as if never stopped. So an
    `Interrupted` dropped that way raises the signal again (no traceback), the handler
    records the signal (`main` reports it if the command returns all the same), and it
    arms a watchdog that ends the process with 128 + the signal's number if the exception
    has not reached `main` within STOP_GRACE_SECONDS. The training loop installs its own
    handlers (stop after the step in flight) while it runs. A signal the parent ignores
    (SIGINT for a shell's background job) stays ignored.
    """
    from .._training.interrupt import STOP_SIGNALS, Interrupted, StopRequest

    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    watchdogs: list[threading.Timer] = []

    def give_up(signum: int) -> None:
        print("dprnn-jax: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(128 + signum)

    def handler(signum: int, frame: object) -> None:
        del frame
        if stop.signal is None:
            stop.signal = signal.Signals(signum)
            watchdog = threading.Timer(STOP_GRACE_SECONDS, give_up, args=(int(signum),))
            watchdog.daemon = True
            watchdog.start()
            watchdogs.append(watchdog)
        raise Interrupted(signum)

    unraisable_hook = sys.unraisablehook

    def deliver_again(unraisable) -> None:
        # An `Interrupted` dropped by a finaliser: no traceback, and the signal again, so
        # that its handler raises in the code the finaliser interrupted. (Sent a moment
        # later from another thread: sent now, the handler would run inside this hook.)
        if isinstance(unraisable.exc_value, Interrupted):
            resend = threading.Timer(0.05, os.kill, args=(os.getpid(), unraisable.exc_value.signal))
            resend.daemon = True
            resend.start()
        else:
            unraisable_hook(unraisable)

    previous = {
        signum: signal.signal(signum, handler)
        for signum in STOP_SIGNALS
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    sys.unraisablehook = deliver_again
    try:
        yield stop
    finally:
        sys.unraisablehook = unraisable_hook
        for watchdog in watchdogs:
            watchdog.cancel()
        for signum, old in previous.items():
            # None: the old handler was not installed from Python; the default stands in.
            signal.signal(signum, signal.SIG_DFL if old is None else old)
