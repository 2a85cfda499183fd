"""Command lines: options in, one line and an exit status out (never a traceback).

``main(train, argv, script)`` is the trainer's whole command line: parse (``options.parse_args``),
start one process per GPU when asked (``distributed.spawn``), resolve what was not given (the
resumed checkpoint's options, else the defaults: ``resolve_options``), then ``train(o, ckpt,
download, overwrite)`` inside ``run_command``, which turns every error into one line on stderr.
"""
from __future__ import annotations

import os
import sys

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, resume_options, shell_join
from .data import DatasetError
from .distributed import DistError
from .options import FROM_CHECKPOINT, OPTIONS, STORED, OptionError, complete, guess_output_dir, \
    parse_args, prefix_of
from .run_folder import RunFolderError
from .signals import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE

__all__ = ["main", "resolve_options", "resume_command", "run_command"]


def main(train, argv=None, script=None):
    """Parse the command line and call ``train(o, ckpt, download=, overwrite=)``; returns the exit
    status (0, 1, 2, 130 or 143). ``script``: the trainer's file (to start the ranks with)."""
    args = parse_args(argv)  # usage errors: argparse prints one line and exits with 2
    try:  # --gpus 0,1,..: this process only starts the ranks
        if distributed.should_spawn(args.dist or "auto", args.gpus):
            return distributed.spawn(args.gpus, [os.path.abspath(script)]
                                     + list(sys.argv[1:] if argv is None else argv))
    except DistError as e:  # e.g. --gpus x
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    saved = sys.stdout, sys.stderr
    # a closed stdout or stderr (>&-, 2>&-): Python sets it to None; write those lines nowhere
    sys.stdout, sys.stderr = (_QuietPipe(s if s is not None else open(os.devnull, "w"))
                              for s in (sys.stdout, sys.stderr))

    def body():
        o, ckpt = resolve_options(args)
        return train(o, ckpt, download=bool(args.download), overwrite=bool(args.overwrite))
    try:
        return run_command(body)  # errors: one line, exit 1 or 2 (see --help)
    finally:
        sys.stdout, sys.stderr = saved


def resolve_options(args):
    """Options not given on the command line: the resumed checkpoint's, else the defaults.

    Paths and devices are never taken from the checkpoint (``options.OPTIONS``' resume column).
    Returns (options as a dict, the Checkpoint to resume from or None); raises OptionError /
    CheckpointError with a message.
    """
    o = {k: v for k, v in vars(args).items() if v is not None and k in STORED}
    ckpt = None
    if args.resume or args.load_epoch is not None:
        path = args.resume
        if path is None:  # --load-epoch: the prefix is given, or derived from the output folder
            prefix = o.get("model_prefix") or os.path.join(guess_output_dir(o), "model")
            path = f"{prefix}-{int(args.load_epoch):04d}.npz"
        # rank 0 alone reads the file (a cluster need not share a file system); the others get
        # its contents, or its error
        ckpt = distributed.root_reads(distributed.launcher_comm(), lambda: load_checkpoint(path),
                                      (CheckpointError,))
        _take_from_checkpoint(o, ckpt, path)
        if args.resume and "model_prefix" not in o and "output_dir" not in o:
            o["model_prefix"] = prefix_of(args.resume)  # go on beside the file given
    return complete(o), ckpt


def _take_from_checkpoint(o, ckpt, path):
    """Refuse a checkpoint with NaN/inf or of another network/data; take its stored options."""
    if ckpt.nonfinite:
        raise CheckpointError(
            f"checkpoint {path} holds NaN/inf values ({', '.join(ckpt.nonfinite[:3])}"
            f"{' ...' if len(ckpt.nonfinite) > 3 else ''}): not a state to resume from; "
            "resume an earlier checkpoint")
    for option in OPTIONS:
        key = option.name
        fixed = option.resume == "fixed" or (option.resume == "fixed mid-epoch" and ckpt.batch)
        if fixed and key in o and key in ckpt.args and o[key] != ckpt.args[key]:
            raise CheckpointError(
                f"checkpoint {path} was trained with {option.flag} {ckpt.args[key]}, this run "
                f"asks for {o[key]}: leave the option out to resume")
    fill, notes = resume_options(ckpt.args, o, known=FROM_CHECKPOINT)
    o.update(fill)  # the checkpoint's options, unless the command line said otherwise
    for line in notes:  # one line per stored option kept or changed that matters
        print(line)


def resume_command(o, path, comm=None, script=None):
    """The command line that continues exactly from ``path`` (printed after Ctrl-C)."""
    cmd = ["python", os.path.relpath(os.path.abspath(script)), "--resume", str(path)]
    if comm is not None and comm.kind == "mpi":  # any world size resumes exactly; this one:
        cmd = ["mpiexec", "-n", str(comm.size)] + cmd
    if o.get("micro_batches", 1) > 1:
        cmd += ["--micro-batches", str(o["micro_batches"])]
    if os.path.normpath(prefix_of(path)) != os.path.normpath(o["model_prefix"]):
        cmd += ["--model-prefix", o["model_prefix"]]
    if os.path.normpath(os.path.dirname(o["model_prefix"]) or ".") != os.path.normpath(o["output_dir"]):
        cmd += ["--output-dir", o["output_dir"]]
    for key in ("data_dir", "device", "gpus"):  # not stored for reuse: give them again
        if o.get(key) is not None and not (key == "device" and o[key] == "cpu"):
            cmd += [f"--{key.replace('_', '-')}", str(o[key])]
    return shell_join(cmd)  # undecodable bytes of a path as $'\xNN': pasted, the same file


def run_command(body):
    """``body()``'s exit status, with every error as one line on stderr instead of a traceback.

    Option and folder errors exit 2 (usage), data/checkpoint errors 1, a second Ctrl-C 130.
    Anything unexpected is one line too, unless IGC_NP_DEBUG is set (then it is re-raised).
    """
    try:
        return body()
    except (OptionError, RunFolderError) as e:
        return _fail(EXIT_USAGE, e)
    except DistError as e:
        # a FollowerError: rank 0 failed at something every rank needed, and says why itself
        return _fail(EXIT_ERROR, e, quiet=isinstance(e, distributed.FollowerError))
    except (CheckpointError, DatasetError, ImportError) as e:
        return _fail(EXIT_ERROR, e)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the loop started
        print("\ninterrupted: quit without saving (checkpoints already on disk are complete)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError as e:
        return _fail(EXIT_ERROR, e, "out of memory; try a smaller --batch-size or network")
    except Exception as e:  # noqa: BLE001 - one line instead of a traceback, unless asked
        if os.environ.get("IGC_NP_DEBUG"):
            raise
        return _fail(EXIT_ERROR, e, f"unexpected {type(e).__name__}: {e}\n(run with IGC_NP_DEBUG=1 "
                     "for the traceback, and please report it)")


def _fail(status, error, text=None, quiet=False):
    """Print ``error: <text or error>`` (unless quiet); with several ranks, end them all (a rank
    that stops alone would leave the others waiting forever in the next reduction)."""
    if not quiet:
        print(f"error: {error if text is None else text}", file=sys.stderr)
    distributed.abort_if_distributed(status, error)
    return status


class _QuietPipe:
    """A stream that stops writing once its reader is gone (``... | head -1``): the training
    goes on and its checkpoints are written; only the console output is dropped."""

    def __init__(self, stream):
        self.stream, self.broken = stream, False

    def _broke(self):
        self.broken = True
        try:  # the interpreter flushes the real stream at exit: point it at /dev/null
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text):
        if not self.broken:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._broke()
        return len(text)

    def flush(self):
        if not self.broken:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._broke()

    def __getattr__(self, name):
        return getattr(self.stream, name)
