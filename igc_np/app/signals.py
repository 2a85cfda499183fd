"""Ctrl-C and SIGTERM: a flag the loop checks between batches; ``Stop`` ends a run with a status."""
from __future__ import annotations

import signal
import sys

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class GracefulInterrupt:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM into a flag that the loop checks between batches.

    A KeyboardInterrupt can strike anywhere, e.g. half-way through ``optimizer.step()`` with
    some parameters updated and others not; a state saved then is not a state of any run. So the
    first signal only sets ``requested``; the loop finishes the current batch, saves, and exits
    with 130 (SIGINT) or 143 (SIGTERM, what batch schedulers send before SIGKILL). A second
    signal raises KeyboardInterrupt at once (the user really wants out). Outside the main
    thread signals cannot be caught: there it does nothing.
    """

    # SIGUSR1: what Open MPI's mpirun forwards to the ranks (with SIGTERM; not SIGINT)
    SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ())

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

