"""The pieces of a training job that are not the loop itself.

The loop lives in ``examples/cifar10_igc.py`` and reads top to bottom; this module holds what it
calls: checkpoint files, accuracy metrics, evaluation on a test set, the JSON-lines log, the
curves, and the Ctrl-C handler. ``examples/evaluate.py`` uses the same checkpoint reader.

Checkpoint files
----------------
``<prefix>-<epoch:04d>.npz`` holds the state after ``epoch`` completed epochs (the reference's
MXNet numbering: the file written after ``Epoch[0]`` is ``-0001``). It is a plain ``numpy.savez``
archive, read back with ``allow_pickle=False``, so loading one never runs code. Strings (JSON) are
stored as 0-d unicode arrays:

=================  =========  ===============================================================
key                array      meaning
=================  =========  ===============================================================
``format``         0-d str    ``"igc_np.checkpoint/1"``
``model/<name>``   arrays     ``Module.state_dict()``: parameters and BN statistics, by the
                              reference's names (``g1_b1_p2_two1_conv1_weight``, ...)
``optimizer/<k>``  arrays     ``SGD.state_dict()``: ``lr``, ``velocity_0`` ...
``epoch``          0-d int    epochs completed
``batch``          0-d int    batches completed in epoch ``epoch`` (0 at an epoch boundary;
                              > 0 only in a checkpoint written on Ctrl-C)
``rng_state``      0-d str    JSON of the data rng's ``bit_generator.state`` at the *start* of
                              epoch ``epoch``: the shuffle of that epoch is drawn again on resume
``train_sums``     (4,) f64   running sums of the unfinished epoch (see ``Metrics.sums``)
``history``        0-d str    JSON list of the per-epoch records so far (the log and the curves)
``args``           0-d str    JSON of the resolved command-line options
=================  =========  ===============================================================

Files are written to a temporary name in the same folder and renamed with ``os.replace``, which
is atomic: a crash or Ctrl-C leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import functional as F
from .autograd import Tensor, no_grad
from .data import iterate_batches

FORMAT = "igc_np.checkpoint/1"

__all__ = ["CheckpointError", "Checkpoint", "checkpoint_path", "save_checkpoint", "load_checkpoint",
           "restore", "Metrics", "evaluate", "JsonLinesLog", "plot_curves", "GracefulInterrupt"]


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit the model; the message names the file."""


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def checkpoint_path(prefix, epoch):
    """``<prefix>-<epoch:04d>.npz``: the state after ``epoch`` completed epochs."""
    return Path(f"{prefix}-{int(epoch):04d}.npz")


def _text(value):
    """A 0-d unicode array: how a string travels through an npz without pickling."""
    return np.array(json.dumps(value) if not isinstance(value, str) else value, dtype=np.str_)


def save_checkpoint(path, model, optimizer, *, epoch, batch, rng_state, train_sums, history, args):
    """Write the whole training state to ``path`` atomically (temp file + ``os.replace``)."""
    path = Path(path)
    arrays = {"format": _text(FORMAT),
              "epoch": np.int64(epoch), "batch": np.int64(batch),
              "rng_state": _text(rng_state),
              "train_sums": np.asarray(train_sums, dtype=np.float64),
              "history": _text(history), "args": _text(args)}
    arrays.update({f"model/{k}": v for k, v in model.state_dict().items()})
    arrays.update({f"optimizer/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:  # including KeyboardInterrupt: never leave the temp file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns: every entry of the file, decoded."""
    path: Path
    model_state: dict
    optimizer_state: dict
    epoch: int
    batch: int
    rng_state: dict
    train_sums: np.ndarray
    history: list = field(default_factory=list)
    args: dict = field(default_factory=dict)


def load_checkpoint(path):
    """Read and check a checkpoint file; raise ``CheckpointError`` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file{_available_hint(path)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            # read every array now: a damaged member only shows up (CRC error) when it is read
            entries = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path}: not a readable .npz file, corrupt or truncated "
                              f"({type(e).__name__}: {e})") from None
    fmt = str(entries.get("format", ""))
    if fmt != FORMAT:
        raise CheckpointError(f"checkpoint {path}: format {fmt!r}, expected {FORMAT!r} "
                              "(not written by igc_np's trainer?)")
    missing = [k for k in ("epoch", "batch", "rng_state", "train_sums", "history", "args")
               if k not in entries]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing entries {missing}")
    try:
        return Checkpoint(
            path=path,
            model_state={k[6:]: v for k, v in entries.items() if k.startswith("model/")},
            optimizer_state={k[10:]: v for k, v in entries.items() if k.startswith("optimizer/")},
            epoch=int(entries["epoch"]), batch=int(entries["batch"]),
            rng_state=json.loads(str(entries["rng_state"])),
            train_sums=np.asarray(entries["train_sums"], dtype=np.float64),
            history=json.loads(str(entries["history"])), args=json.loads(str(entries["args"])))
    except (TypeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"checkpoint {path}: a bad entry ({type(e).__name__}: {e})") from None


def _available_hint(path):
    """'; found ...-0005.npz, ...-0010.npz' listing checkpoints beside a missing one."""
    stem = path.name.rsplit("-", 1)[0]
    if not path.parent.is_dir():
        return f" (the folder {path.parent} does not exist)"
    found = sorted(p.name for p in path.parent.glob(f"{stem}-*.npz"))
    return f"; in {path.parent} there are: {', '.join(found)}" if found else ""


def restore(ckpt, model, optimizer=None):
    """Copy a checkpoint's model (and optimizer) state in; errors name the file and the entry."""
    try:
        model.load_state_dict(ckpt.model_state)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit this network: {msg}") from None
    if optimizer is None:
        return
    try:
        optimizer.load_state_dict(ckpt.optimizer_state)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise CheckpointError(f"checkpoint {ckpt.path}: optimizer state does not fit: {msg}") from None


# --------------------------------------------------------------------------------------------
# Metrics and evaluation
# --------------------------------------------------------------------------------------------
class Metrics:
    """Running mean loss, top-1 and top-5 accuracy over the batches seen so far.

    ``sums`` = [sum of loss * batch size, samples, top-1 hits, top-5 hits] (float64), which is
    what a mid-epoch checkpoint stores to continue the epoch's numbers exactly.
    """

    def __init__(self, sums=None):
        self.sums = np.zeros(4) if sums is None else np.array(sums, dtype=np.float64)

    def update(self, loss, logits, labels):
        """loss: the batch's mean loss (float); logits (B, K) and labels (B,) NumPy arrays."""
        # the 5 largest logits of each row, unordered (argpartition is O(K), no full sort)
        k = min(5, logits.shape[1])
        top5 = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        self.sums += (loss * len(labels), len(labels),
                      np.sum(logits.argmax(axis=1) == labels),
                      np.sum(top5 == labels[:, None]))

    @property
    def count(self):
        return int(self.sums[1])

    @property
    def loss(self):
        return self.sums[0] / max(self.sums[1], 1)

    @property
    def top1(self):
        return self.sums[2] / max(self.sums[1], 1)

    @property
    def top5(self):
        return self.sums[3] / max(self.sums[1], 1)


def evaluate(model, x, y, mean, std, batch_size=256, device="cpu", dtype=np.float32):
    """Test-set Metrics of ``model`` in inference mode (BN uses its running statistics).

    x (N, 3, H, W) uint8, y (N,) int64; mean/std per channel on the 0..255 scale.
    Leaves the model in eval mode: the caller switches it back with ``model.train()``.
    """
    model.eval()
    metrics = Metrics()
    with no_grad():  # no graph: half the memory, and faster
        for xb, yb in iterate_batches(x, y, batch_size, mean=mean, std=std, dtype=dtype):
            logits = model(Tensor(xb, device=device))
            loss = F.cross_entropy(logits, Tensor(yb, device=device))
            metrics.update(loss.item(), logits.numpy(), yb)
    return metrics


# --------------------------------------------------------------------------------------------
# The JSON-lines log and the curves
# --------------------------------------------------------------------------------------------
class JsonLinesLog:
    """``log.jsonl``: one JSON object per epoch, appended and flushed as soon as it is known."""

    def __init__(self, path, records=()):
        """Start the file with ``records`` (a resumed run's history), replacing any old content."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(tmp, self.path)

    def append(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


_matplotlib_missing_noted = False


def plot_curves(history, out_dir):
    """``loss.png`` and ``accuracy.png`` (train and test per epoch) in ``out_dir``.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no display needed). Without
    matplotlib, prints a one-line notice once and returns False.
    """
    global _matplotlib_missing_noted
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        if not _matplotlib_missing_noted:
            print("note: matplotlib is not installed, so no curves are drawn "
                  "(pip install matplotlib)")
            _matplotlib_missing_noted = True
        return False
    if not history:
        return False
    epochs = [r["epoch"] for r in history]
    panels = {"loss.png": ("loss", ["train_loss", "test_loss"]),
              "accuracy.png": ("accuracy", ["train_top1", "test_top1", "train_top5", "test_top5"])}
    for name, (ylabel, keys) in panels.items():
        fig = Figure(figsize=(6, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for key in keys:
            if key in history[-1]:
                ax.plot(epochs, [r.get(key, np.nan) for r in history], marker=".",
                        label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        if ylabel == "loss":
            ax.set_yscale("log")  # the loss falls by orders of magnitude
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        # write beside, then rename: an image viewer never sees half a file
        tmp = Path(out_dir) / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, Path(out_dir) / name)
    return True


# --------------------------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------------------------
class GracefulInterrupt:
    """Turn the first Ctrl-C into a flag that the loop checks between batches.

    A KeyboardInterrupt can strike anywhere, e.g. half-way through ``optimizer.step()`` with
    some parameters updated and others not; a state saved then is not a state of any run. So the
    first SIGINT only sets ``requested``; the loop finishes the current batch, saves, and exits.
    A second Ctrl-C raises KeyboardInterrupt at once (the user really wants out).
    Outside the main thread signals cannot be caught: there it does nothing.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this batch and saving a checkpoint "
              "(press Ctrl-C again to quit without saving)", file=sys.stderr, flush=True)

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
