"""Ctrl-C, SIGTERM and SIGHUP: a flag the loop checks between batches; ``Stop`` ends a run with a
status; ``deferred_signals`` keeps a save from being cut half-way by a signal."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class GracefulInterrupt:
    """Turn the first Ctrl-C (SIGINT), SIGTERM or SIGHUP into a flag the loop checks between batches.

    A KeyboardInterrupt can strike anywhere, e.g. half-way through ``optimizer.step()`` with
    some parameters updated and others not; a state saved then is not a state of any run. So the
    first signal only sets ``requested``; the loop finishes the current batch, saves, and exits
    with 130 (SIGINT), 143 (SIGTERM, what batch schedulers send before SIGKILL) or 129 (SIGHUP: the
    terminal or ssh session closed). A SIGHUP already ignored (``nohup``) stays ignored. A second
    signal raises KeyboardInterrupt at once (the user really wants out), except during a save
    (``deferred_signals``), which it follows. Outside the main thread signals cannot be caught:
    there it does nothing.
    """

    # SIGUSR1: what Open MPI's mpirun forwards to the ranks (with SIGTERM; not SIGINT)
    SIGNALS = (signal.SIGINT, signal.SIGTERM) + tuple(
        getattr(signal, name) for name in ("SIGHUP", "SIGUSR1") if hasattr(signal, name))

    def __init__(self, quiet=False):
        self.requested = False
        self.signum = None
        self.quiet = quiet  # the ranks other than 0 of a data-parallel run say nothing
        self._previous = {}

    @property
    def name(self):
        if self.signum in (None, signal.SIGINT):
            return "Ctrl-C"
        return signal.Signals(self.signum).name

    @property
    def exit_status(self):
        if self.signum in (None, signal.SIGINT):
            return EXIT_INTERRUPTED
        return EXIT_TERMINATED if self.signum == signal.SIGTERM else 128 + self.signum

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        if self.quiet:
            return
        try:
            print(f"\n{self.name}: stopping after this batch and saving a checkpoint "
                  f"(send it again to quit without saving)", file=sys.stderr, flush=True)
        except (OSError, ValueError):  # stderr closed: the flag is what matters
            pass

    def __enter__(self):
        for s in self.SIGNALS:
            if s == getattr(signal, "SIGHUP", None) and signal.getsignal(s) == signal.SIG_IGN:
                continue  # nohup: the user asked for the run to outlive the terminal
            try:
                self._previous[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}
        return False


class Stop(Exception):
    """Raised inside the loop to end the run with ``status`` (NaN loss, Ctrl-C, final save failed)."""

    def __init__(self, status, message=None):
        super().__init__(message)
        self.status, self.message = status, message



DEFERRED = GracefulInterrupt.SIGNALS


@contextlib.contextmanager
def deferred_signals():
    """Signals (those of GracefulInterrupt) that arrive inside the block are delivered, in order,
    to their handlers when the block ends: a save in it is never cut half-way (a
    KeyboardInterrupt inside zipfile leaves "Can't close the ZIP file while there is an open
    writing handle" instead of the save's cleanup). So a second Ctrl-C during a checkpoint's save
    quits right after the save (exit 130), the file complete and no temporary left. Blocks nest;
    outside the main thread (no handlers to replace) the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived, previous = [], {}

    def record(signum, frame):
        arrived.append(signum)
    for s in DEFERRED:
        handler = signal.getsignal(s)
        if handler not in (signal.SIG_IGN, None):
            previous[s] = signal.signal(s, record)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in arrived:  # as if each had come right after the block
            handler = previous[s]
            if callable(handler):
                handler(s, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(s)
