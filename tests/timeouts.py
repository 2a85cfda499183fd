"""A guard for tests of reads that could block (a FIFO where a file is expected)."""
import contextlib
import signal


@contextlib.contextmanager
def fails_after(seconds, what):
    """A TimeoutError naming `what` if the block takes longer than `seconds`: a read that blocks
    must fail the test, not hang the suite."""
    def expired(*_):
        raise TimeoutError(f"blocked on {what} for more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
