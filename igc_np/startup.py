"""A bad ``IGC_NP_*`` environment variable found by ``import igc_np``: one line for a command.

The engine reads $IGC_NP_THREADS (ops/parallel.py) and $IGC_NP_KERNELS (kernels/versions.py) when it
is imported and raises ValueError naming the variable. From Python that error is right (the caller
sees it); a command-line tool (examples/*.py, ``python -m igc_np ...``, the ``igc_np`` console
command) must print one line and exit 2 instead, and it cannot catch an error raised before its own
code runs (``python -m igc_np.X`` imports the package first). So igc_np/__init__.py imports the
engine inside ``guard()``, the one check every entry point shares. Stdlib only: it runs before the
rest of the package exists.
"""
import contextlib
import os
import sys

VARIABLES = ("IGC_NP_THREADS", "IGC_NP_KERNELS")  # read (and checked) when the engine is imported
EXIT_USAGE = 2
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def started_as_command():
    """True when this process is one of igc_np's commands (not Python importing the library).

    ``python -m igc_np.X``: runpy imports the package while ``sys.argv[0]`` is "-m"; the console
    command ``igc_np``; a script of examples/ or one that sets ``IGC_NP_COMMAND = True`` before its
    ``import igc_np``."""
    argv0 = (getattr(sys, "argv", None) or [""])[0]
    if argv0 == "-m" or os.path.basename(argv0) in ("igc_np", "igc_np.exe"):
        return True
    main = sys.modules.get("__main__")
    if getattr(main, "IGC_NP_COMMAND", False):
        return True
    path = getattr(main, "__file__", None)
    return bool(path) and os.path.dirname(os.path.realpath(path)) == os.path.realpath(EXAMPLES)


@contextlib.contextmanager
def guard():
    """Run the engine's imports: a ValueError naming an IGC_NP_* variable ends a command with one
    line on stderr and exit 2 (a bad usage); Python code importing igc_np gets the ValueError."""
    try:
        yield
    except ValueError as e:
        if not any(v in str(e) for v in VARIABLES) or not started_as_command():
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
