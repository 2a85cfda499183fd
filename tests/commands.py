"""Run the example scripts as commands: ``status = run_script(path, argv)``.

The script runs as ``python path argv...`` would run it (``__name__ == "__main__"``, ``sys.argv``),
in this process: fast, and ``monkeypatch`` reaches the library it calls. Its exit status comes
back (argparse's usage errors are 2, ``--help`` 0). The tests never import a script as a module:
what a script offers is its command line; the functions behind it are tested in igc_np.app.
"""
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = ROOT / "examples" / "cifar10_igc.py"
EVAL_SCRIPT = ROOT / "examples" / "evaluate.py"
ANATOMY_SCRIPT = ROOT / "examples" / "igc_anatomy.py"


def run_script(path, argv):
    """The exit status of ``python path *argv``, run in this process."""
    saved = sys.argv[:], sys.path[:]
    sys.argv = [str(path)] + [str(a) for a in argv]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # sys.exit("message") prints it and exits 1
        return 1
    finally:
        sys.argv, sys.path[:] = saved
    return 0


def train(argv):
    return run_script(TRAIN_SCRIPT, argv)


def evaluate(argv):
    return run_script(EVAL_SCRIPT, argv)


def anatomy(argv):
    return run_script(ANATOMY_SCRIPT, argv)
