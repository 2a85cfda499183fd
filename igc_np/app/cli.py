"""Command lines: one line on stderr and an exit status instead of a traceback."""
from __future__ import annotations

import os
import sys

from .checkpoint import CheckpointError
from .data import DatasetError
from .distributed import DistError
from .options import OptionError
from .run_folder import RunFolderError
from .signals import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE


def run_command(body):
    """``body()``'s exit status, with every error as one line on stderr instead of a traceback.

    Option and folder errors exit 2 (usage), data/checkpoint errors 1, a second Ctrl-C 130.
    Anything unexpected is one line too, unless IGC_NP_DEBUG is set (then it is re-raised).
    """
    try:
        return body()
    except (OptionError, RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CheckpointError, DatasetError, ImportError, DistError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the loop started
        print("\ninterrupted: quit without saving (checkpoints already on disk are complete)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("error: out of memory; try a smaller --batch-size or network", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - one line instead of a traceback, unless asked
        if os.environ.get("IGC_NP_DEBUG"):
            raise
        print(f"error: unexpected {type(e).__name__}: {e}\n(run with IGC_NP_DEBUG=1 for the "
              "traceback, and please report it)", file=sys.stderr)
        return EXIT_ERROR

