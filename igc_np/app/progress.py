"""What a run shows and keeps: ``log.jsonl``, the curves, progress bars (tqdm, optional) and
when a progress line is due (``ProgressLines``)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..serialization import atomic_write


class JsonLinesLog:
    """``log.jsonl``: one JSON object per epoch, appended and flushed as soon as it is known."""

    def __init__(self, path, records=()):
        """Start the file with ``records`` (a resumed run's history), replacing any old content.

        The run folder rules (``Run``) decide whether replacing is allowed; this only writes.
        """
        self.path = Path(path)
        with atomic_write(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    def append(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


_matplotlib_missing_noted = False


CURVE_FILES = ("loss.png", "accuracy.png")  # what plot_curves writes in a run folder


def plot_curves(history, out_dir, title=None, lr_steps=()):
    """``loss.png`` and ``accuracy.png`` (train and test per epoch) in ``out_dir``.

    ``title`` names the run; dotted vertical lines mark the epochs of ``lr_steps``. Uses
    matplotlib's object API with the Agg canvas (no pyplot, no display needed). Without
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
        for i, step in enumerate(s for s in lr_steps if epochs[0] <= s <= epochs[-1] + 1):
            ax.axvline(step - 0.5, color="0.5", linestyle=":", linewidth=1,
                       label="lr step" if i == 0 else None)  # between epochs step-1 and step
        ax.set_xlabel("epoch (counted from 0, as the console)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:  # one point: a tick at it, not a range of fractional ones
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.set_ylabel(ylabel)
        if ylabel == "loss":
            ax.set_yscale("log")  # the loss falls by orders of magnitude
        if title:
            ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        # a unique temporary name beside the target, then rename: a viewer never sees half a file
        with atomic_write(Path(out_dir) / name) as f:
            fig.savefig(f, format="png", dpi=100)
    return True


# ---- when to print a progress line ----------------------------------------------------------------
PROGRESS_SECONDS = 10.0  # a log file, CI or a batch job hears from the run at least this often


def _clock():
    """Seconds on a monotonic clock (a module function, so a test can replace it)."""
    return time.monotonic()


class ProgressLines:
    """When the loop prints an ``Epoch[e] Batch [b] Speed ...`` line.

    Every ``log_iters`` batches (the authors' ``Speedometer``), and, when ``timed`` (the console is
    not a terminal showing a progress bar: a log file, CI, a batch job), also as soon as
    ``every_s`` seconds have passed since the last line, so that a slow run is never silent for
    long. ``due(b)`` after batch b says 'interval', 'clock' or None; ``start()`` at an epoch's start.
    """

    def __init__(self, log_iters, timed, every_s=PROGRESS_SECONDS, clock=None):
        if not (isinstance(log_iters, int) and log_iters >= 1):
            raise ValueError(f"log_iters must be a positive integer, got {log_iters!r}")
        self.log_iters, self.timed, self.every_s = log_iters, bool(timed), float(every_s)
        self.clock = clock if clock is not None else (lambda: _clock())
        self.last = self.clock()

    def start(self):
        """The epoch starts: its first timed line comes ``every_s`` seconds from now."""
        self.last = self.clock()

    def due(self, batch):
        """'interval' every log_iters batches, 'clock' when timed and every_s have passed, else None."""
        kind = None
        if batch % self.log_iters == 0:
            kind = "interval"
        elif self.timed and self.clock() - self.last >= self.every_s:
            kind = "clock"
        if kind:
            self.last = self.clock()
        return kind


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _have_tqdm():
    try:
        import tqdm  # noqa: F401
        return True
    except ImportError:
        return False


def _progress_bar(total, initial, desc):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                file=sys.stdout)
