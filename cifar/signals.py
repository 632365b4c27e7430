"""Ctrl-C (SIGINT) and SIGTERM (`kill`, a SLURM time limit, torchrun stopping its processes): the one place that says what
they do, and when.

    stop_with_line        an entry point's first lines: one line and exit 130, never a traceback (train.py, evaluate.py)
    signals_as_ctrl_c     inside a run: they raise KeyboardInterrupt, so the run can say where it stopped (training.py)
    held_until_written    a file being written: they wait until it is whole, then stop as Ctrl-C does (cifar/files.py)
    on_stop               a sweep's launching process: they stop the sweep (cifar/run/hydra_callbacks.py)

A signal the process was started ignoring (a background job's SIGINT) stays ignored, but while a file is written. Each
handler is set from the main thread only (Python allows no other). Imports nothing but the standard library: train.py installs its handler
before its heavy imports, and that must cost nothing.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED = 130  # the shell's exit status for Ctrl-C


def on_stop(handler: Callable) -> None:
    """`handler(signum, frame)` for Ctrl-C and SIGTERM from now on, but where the process was started ignoring one."""
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, handler)


def stop_with_line(line: str) -> Callable[..., None]:
    """From now on Ctrl-C or SIGTERM prints `line` and exits 130. Also given back, for the entry point to call where a
    KeyboardInterrupt reaches it between hand-overs."""

    def stopped(signum=None, frame=None) -> None:
        print(line, flush=True)
        sys.exit(INTERRUPTED)

    on_stop(stopped)
    return stopped


def second_ctrl_c_exits() -> None:
    """A further Ctrl-C exits 130 at once: for a handler that waits (a cut sweep waiting for its jobs)."""
    signal.signal(signal.SIGINT, lambda *_: sys.exit(INTERRUPTED))


@contextlib.contextmanager
def signals_as_ctrl_c():
    """Inside, Ctrl-C and SIGTERM raise KeyboardInterrupt, so that the code they interrupt can say where it stopped;
    outside, the handlers set before (train.py's first lines) apply again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    taken = []

    def ctrl_c(signum, frame):  # the first stops the run; one more (a second Ctrl-C, a sweep passing it on) must not cut
        if not taken:  # short the record of where it stopped
            taken.append(signum)
            raise KeyboardInterrupt

    with _restored():
        on_stop(ctrl_c)
        yield


@contextlib.contextmanager
def held_until_written():
    """Hold a Ctrl-C or SIGTERM that arrives inside until its end, then stop as Ctrl-C does (KeyboardInterrupt).

    A KeyboardInterrupt inside torch.save leaves its zip writer half-closed and turns into a confusing RuntimeError; this
    way the interrupt still stops training, one write later. A signal ignored before is held too (and then raised).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    with _restored():
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda signum, frame: caught.append(signum))
        yield
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _restored():
    """Ctrl-C's and SIGTERM's handlers as they were on entry, set again on the way out however it is left."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
