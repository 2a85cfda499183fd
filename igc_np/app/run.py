"""A training run: everything around the loop's step, as a few named calls.

``examples/cifar10_igc.py`` writes the loop; ``Run`` gives it the rest::

    with Run(o, model, optimizer, data, ckpt, rng=...) as run:   # folder, lock, resume, signals
        for epoch in run.epochs():
            lr = schedule.step(epoch)
            for x, y in run.batches(epoch):                      # from the resume position on
                ...forward, loss.backward(), optimizer.step()...
                run.after_batch(loss, logits, y)                 # metrics, log line, Ctrl-C
            test, statistics = run.test(epoch)                   # the test pass
            run.report(epoch, lr, test, statistics)              # console, log.jsonl
            run.save(epoch)                                      # checkpoint, curves; stop after Ctrl-C

One object per concern, each small: ``RunFolder`` (checks, the lock: ``run_folder.py``),
``Report`` (console, progress bar, ``log.jsonl``, curves: ``progress.py``), ``Saver`` (checkpoint
files and what happens when one cannot be written: ``checkpoint.py``), ``GracefulInterrupt``
(Ctrl-C / SIGTERM: ``signals.py``); ``Run`` holds the resume position and the epoch's metrics.
Data parallel (``distributed.py``): ``dp_step`` replaces the step and ``Run.after_step`` replaces
``after_batch``; with ``comm`` rank 0 alone writes files and the console.
"""
from __future__ import annotations

import errno
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .. import backend
from ..ops import parallel
from . import distributed
from .checkpoint import CheckpointError, checkpoint_path, restore, save_checkpoint
from .data import DatasetError
from .evaluation import Metrics, test_pass
from .options import OptionError
from .progress import (CURVE_FILES, JsonLinesLog, ProgressLines, _have_tqdm, _isatty, _progress_bar,
                       plot_curves)
from .run_folder import RunFolderError, RunLock, check_run_folder, check_writable
from .signals import EXIT_ERROR, EXIT_OK, GracefulInterrupt, Stop

__all__ = ["Run", "RunFolder", "Report", "Saver", "start_ranks", "check_folder_first"]


# --------------------------------------------------------------------------------------------
# Before the run: the ranks and a first look at the folder
# --------------------------------------------------------------------------------------------
def start_ranks(o):
    """(comm, data_parallel): this process's ranks (MPI, NCCL or itself alone), its GPU, and
    whether the loop runs ``dp_step``. Ranks other than 0 print nothing."""
    device = o["device"]
    try:
        backend.get_array_module(device)  # fails here, clearly, without CuPy or a GPU
        comm = distributed.init(o["dist"], gpus=o["gpus"] if device == "cuda" else None)
        if comm.size == 1 and device == "cuda" and o["gpus"]:
            backend.cupy_module().cuda.Device(int(o["gpus"].split(",")[0])).use()
    except (RuntimeError, ValueError) as e:
        raise OptionError(f"--device {device} --gpus {o['gpus']} --dist {o['dist']}: {e}") from None
    if not comm.is_root:  # rank 0 alone writes the console lines (errors still reach stderr)
        sys.stdout = open(os.devnull, "w")
    data_parallel = comm.size > 1 or o["micro_batches"] > 1
    if data_parallel:
        print(f"Data parallel: {comm.size} {comm.kind} rank(s) x {o['micro_batches']} "
              f"micro-batch(es) of the global batch {o['batch_size']}, "
              f"{parallel.THREADS} thread(s) per rank")
    return comm, data_parallel


def check_folder_first(o, ckpt, overwrite, comm):
    """A quick answer before loading data: is the output folder usable (writable, no other run)?
    Rank 0's folder: the others write nothing. Creates and removes nothing."""
    distributed.root_first(comm, lambda: check_run_folder(
        o["output_dir"], o["model_prefix"], ckpt, overwrite), (RunFolderError, OSError))


# --------------------------------------------------------------------------------------------
# The folder, the report, the checkpoints
# --------------------------------------------------------------------------------------------
class RunFolder:
    """The output folder under its lock: rank 0 checks it, takes the lock and refuses an earlier
    run; every rank learns whether that worked (the others do not train on alone)."""

    def __init__(self, out_dir, prefix, ckpt, overwrite, comm):
        self.out_dir, self.prefix, self.ckpt, self.overwrite = out_dir, prefix, ckpt, overwrite
        self.comm, self.lock = comm, RunLock(out_dir)

    def open(self):
        def open_it():
            check_writable(self.out_dir, "--output-dir")  # the lock lives there
            self.lock.acquire(note=lambda m: print(m, file=sys.stderr))
            try:
                check_run_folder(self.out_dir, self.prefix, self.ckpt, self.overwrite, delete=True)
            except BaseException:
                self.lock.release()
                raise
        distributed.root_first(self.comm, open_it, (RunFolderError, OSError))

    def close(self):
        self.lock.release()


class Report:
    """What the run shows and keeps: console lines (through the progress bar while one is
    shown), ``log.jsonl`` and the curves. Only the writer (rank 0) writes anything."""

    def __init__(self, o, out_dir, writer):
        self.o, self.out_dir, self.writer = o, out_dir, writer
        self.show_bar = writer and _isatty(sys.stdout) and _have_tqdm()
        self.bar, self.log = None, None
        # a line every --log-iters batches, and at least every ~10 s where no bar shows progress
        self.lines = ProgressLines(o["log_iters"], timed=not self.show_bar)

    def start_log(self, history):
        if self.writer:
            self.log = JsonLinesLog(self.out_dir / "log.jsonl", history)

    def say(self, line):
        if self.writer:
            (self.bar.write if self.bar else print)(line)

    def open_bar(self, total, initial, desc):
        if self.show_bar:
            self.bar = _progress_bar(total, initial, desc)
        return self.bar

    def close_bar(self):
        if self.bar:
            self.bar.close()
            self.bar = None

    def interval(self, epoch, batch, speed, m):
        """The line of a --log-iters interval: speed (samples/s) and the epoch's metrics ``m``."""
        self.say(f"Epoch[{epoch}] Batch [{batch}]\tSpeed: {speed:.2f} samples/sec\t"
                 f"loss: {m.loss:.6f}\ttop1: {m.top1:.6f}")
        if self.bar:
            self.bar.set_postfix(loss=f"{m.loss:.4f}", top1=f"{m.top1:.4f}", refresh=False)

    def epoch(self, record, history):
        """An epoch's record: its line on the console and log.jsonl (the curves come after the
        checkpoint: ``plot``)."""
        r, top5 = record, "test_top5" in record
        self.say(f"Epoch[{r['epoch']}] lr {r['lr']:g}  train loss {r['train_loss']:.4f} top1 "
                 f"{r['train_top1']:.4f}" + (f" top5 {r['train_top5']:.4f}" if top5 else "")
                 + f"  test loss {r['test_loss']:.4f} top1 {r['test_top1']:.4f}"
                 + (f" top5 {r['test_top5']:.4f}" if top5 else "")
                 + f"  time {r['epoch_time']:.1f}s (total {r['elapsed']:.1f}s)"
                 + f"  [test BN: {r['eval_bn']}]")  # which statistics the test used, always
        self.write_log(record)

    def write_log(self, record):
        if not self.writer:
            return
        try:
            self.log.append(record)
        except OSError as e:
            print(f"warning: could not append to {self.log.path} ({e.strerror}); the history is "
                  "also kept in the checkpoints", file=sys.stderr)

    def plot(self, history):
        if not self.writer:
            return
        o = self.o
        title = (f"{o.get('network')}-{o.get('depth')} L{o.get('primary_partition')}"
                 f"M{o.get('secondary_partition')} on {o.get('dataset')} ({self.out_dir.name})")
        try:
            plot_curves(history, self.out_dir, title=title, lr_steps=o.get("lr_steps", ()))
        except OSError as e:
            print(f"warning: could not draw the curves in {self.out_dir} ({e.strerror})",
                  file=sys.stderr)

    def remove_curves(self):
        """Delete our curves (drawn again from the history at the next epoch) to make room for a
        checkpoint on a full disk; the names removed."""
        removed = []
        for name in CURVE_FILES if self.writer else ():
            try:
                (self.out_dir / name).unlink()
                removed.append(name)
            except OSError:
                pass
        return removed


class Saver:
    """Checkpoint files: write one, and on failure say what and where the retry goes while the
    training state stays in memory. ``last`` is the newest checkpoint on disk (or resumed)."""

    def __init__(self, prefix, model, optimizer, writer, make_room=None):
        self.prefix, self.model, self.optimizer, self.writer = prefix, model, optimizer, writer
        self.make_room = make_room  # () -> [names removed]: frees space when the disk is full
        self.last, self.failed = None, None

    def save(self, path, epoch, batch, epoch_rng_state, sums, history, args):
        if not self.writer:  # rank 0 writes; the others hold the same state
            self.last = str(path)
            return True
        try:
            try:
                save_checkpoint(path, self.model, self.optimizer, epoch=epoch, batch=batch,
                                rng_state=epoch_rng_state, train_sums=sums, history=history,
                                args=args)
            except OSError as e:  # a full disk: what can be redrawn gives way to the checkpoint
                freed = e.errno == errno.ENOSPC and self.make_room and self.make_room()
                if not freed:
                    raise
                print(f"warning: the disk is full; removed {', '.join(freed)} (drawn again later) "
                      f"to make room for {path}", file=sys.stderr)
                save_checkpoint(path, self.model, self.optimizer, epoch=epoch, batch=batch,
                                rng_state=epoch_rng_state, train_sums=sums, history=history,
                                args=args)
        except (OSError, CheckpointError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self.failed = str(path)
            print(f"error: could not write {path} ({reason}). The training state is kept in "
                  f"memory; the next epoch's end retries with "
                  f"{checkpoint_path(self.prefix, epoch + 1) if batch == 0 else 'no retry'}. "
                  f"Last checkpoint on disk: {self.last or 'none'}", file=sys.stderr)
            return False
        self.failed = None
        self.last = str(path)
        return True

    @property
    def interrupted_path(self):
        return self.prefix.with_name(self.prefix.name + "-interrupted.npz")

    def remove_resumed_interrupt_file(self, ckpt, say):
        """Once resumed and a later checkpoint is safe, our own -interrupted.npz is obsolete:
        remove it; True if it was removed."""
        own = self.interrupted_path
        if self.writer and ckpt is not None and ckpt.path.resolve() == own.resolve() \
                and own.is_file():
            own.unlink()
            say(f"Removed {own} (resumed, and {self.last} is written)")
            return True
        return False


class QuietOverflow:
    """Overflow in a diverging run: the NaN check says so in one line, without NumPy warnings
    (errstate is per thread; the engine's worker threads warn through the filters)."""

    def __enter__(self):
        self._errstate = np.errstate(over="ignore", invalid="ignore", divide="ignore")
        self._errstate.__enter__()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered",
                                RuntimeWarning)
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(None, None, None)
        self._errstate.__exit__(None, None, None)
        return False


def check_position(ckpt, data):
    """A mid-epoch checkpoint's batch and sample count must fit this data and batch size."""
    if not ckpt.batch:
        return
    n = len(data)
    seen = min(ckpt.batch * data.batch_size, data.train_size)
    if ckpt.batch >= n:
        raise CheckpointError(f"checkpoint {ckpt.path}: field 'batch' is {ckpt.batch}, but an "
                              f"epoch of this data has {n} batches")
    if ckpt.train_sums[1] != seen:
        raise CheckpointError(f"checkpoint {ckpt.path}: field 'train_sums' counts "
                              f"{ckpt.train_sums[1]:.0f} samples after {ckpt.batch} batches "
                              f"of {data.batch_size} (expected {seen})")


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
# Over ~200 lines: the loop's hooks in the order a run calls them (enter, epochs, batches, steps,
# test, report, save, exit), which share the resume position and the stop flags kept here.
class Run:
    """One training run around the loop (the module docstring shows the loop): the resume
    position, the epoch's metrics, the stops (NaN, Ctrl-C, a failed last save). ``o``: resolved
    options; ``ckpt``: the Checkpoint resumed from; ``resume_command(path)``: the command that
    continues an interrupted run. The files are RunFolder's, Report's and Saver's."""

    def __init__(self, o, model, optimizer, data, ckpt=None, rng=None, resume_command=None,
                 overwrite=False, comm=None):
        self.o, self.model, self.optimizer, self.data, self.ckpt = o, model, optimizer, data, ckpt
        # data-parallel runs: every rank trains, rank 0 alone writes files and the console
        self.comm = comm if comm is not None else distributed.SingleProcess()
        self.writer = self.comm.is_root
        self.rng = rng if rng is not None else np.random.default_rng()
        self.resume_command = resume_command or (lambda path: f"--resume {path}")
        self.status = EXIT_OK
        self.out_dir, self.prefix = Path(o["output_dir"]), Path(o["model_prefix"])
        self.start_epoch, self.start_batch, self.history, self.train_sums = 0, 0, [], None
        self.top5 = data.num_classes >= 100  # reported for 100+ classes, as in the paper
        self.folder = RunFolder(self.out_dir, self.prefix, ckpt, overwrite, self.comm)
        self.report_to = Report(o, self.out_dir, self.writer)
        self.saver = Saver(self.prefix, model, optimizer, self.writer, self.report_to.remove_curves)
        self.interrupt = GracefulInterrupt(quiet=not self.writer)

    # ---- opening and closing ---------------------------------------------------------------
    def __enter__(self):
        if self.ckpt is not None:  # does it fit? (before touching any folder)
            restore(self.ckpt, self.model, self.optimizer)
            check_position(self.ckpt, self.data)
        self.folder.open()
        try:
            if self.ckpt is not None:
                self._resume(self.ckpt)
            print(f"Output: {self.out_dir} (log.jsonl, loss.png, accuracy.png, "
                  f"{self.prefix.name}-NNNN.npz)")
            self.report_to.start_log(self.history)
        except BaseException:
            self.folder.close()
            raise
        self.elapsed_before = self.history[-1].get("elapsed", 0.0) if self.history else 0.0
        self.t_start = time.perf_counter()
        self.interrupt.__enter__()
        self._quiet = QuietOverflow().__enter__()
        return self

    def _resume(self, ckpt):
        self.rng.bit_generator.state = ckpt.rng_state
        self.start_epoch, self.start_batch = ckpt.epoch, ckpt.batch
        self.history = list(ckpt.history)
        self.train_sums = ckpt.train_sums if ckpt.batch else None
        self.saver.last = str(ckpt.path)
        where = (f"Epoch[{self.start_epoch}] Batch [{self.start_batch}]" if self.start_batch
                 else f"Epoch[{self.start_epoch}]")
        print(f"Resumed from {ckpt.path}: continuing with {where}")

    def __exit__(self, exc_type, exc, tb):
        self._quiet.__exit__()
        self.interrupt.__exit__()
        self.report_to.close_bar()
        self.folder.close()
        if isinstance(exc, Stop):
            if exc.message and self.writer:
                print(exc.message, file=sys.stderr)
            self.status = exc.status
            return True
        return False

    # ---- the loop's calls ----------------------------------------------------------------------
    def epochs(self):
        """Epoch numbers still to train (0-based); sets up the metrics of each."""
        if self.start_epoch >= self.o["num_epochs"]:
            print(f"Nothing to train: the checkpoint is at epoch {self.start_epoch} >= "
                  f"--num-epochs {self.o['num_epochs']}")
        for epoch in range(self.start_epoch, self.o["num_epochs"]):
            self.epoch = epoch
            self.model.train()
            # the rng state *before* this epoch's shuffle: a mid-epoch checkpoint stores it, and
            # resuming draws the same shuffle again and skips the batches already done
            self.epoch_rng_state = self.rng.bit_generator.state
            self.metrics = Metrics(self.train_sums)
            self.t_epoch = self.tic = time.perf_counter()
            self.seen, self.b = 0, self.start_batch
            self.report_to.open_bar(len(self.data), self.start_batch, f"Epoch[{epoch}]")
            self.report_to.lines.start()
            yield epoch
            self.start_batch, self.train_sums = 0, None

    def batches(self, epoch):
        """(x, y) of the epoch from the resume position on; on several ranks this rank's rows of
        each batch, and ``self.batch_rows`` the global batch's size (``dp_step(global_batch=)``)."""
        d = self.data
        if self.comm.size == 1:  # any data source with the four members, whole batches
            source = d.batches(self.rng, self.start_batch)
        else:
            source = d.batches(self.rng, self.start_batch, part=(self.comm.rank, self.comm.size))
        try:
            for b, (x, y) in enumerate(source, self.start_batch):
                self.batch_rows = min(d.batch_size, d.train_size - b * d.batch_size)
                yield x, y
        except DatasetError as e:  # a file of the data set: save the work done first, name it
            self._stop_on_data_error(e)

    def _stop_on_data_error(self, e):
        """Save the state after the last complete batch (-interrupted.npz), then stop naming
        the file (the error's message) and how to go on."""
        self.report_to.close_bar()
        path = self.saver.interrupted_path
        if self.b > self.start_batch and self._save(path, self.epoch, self.b, self.epoch_rng_state,
                                                    self.metrics.sums):
            raise Stop(EXIT_ERROR, f"error: {e}\nSaved {path} (Epoch[{self.epoch}] after batch "
                                   f"{self.b}); fix or remove that file, then continue with:\n  "
                                   f"{self.resume_command(path)}")
        raise Stop(EXIT_ERROR, f"error: {e}\nLast checkpoint: {self.saver.last or 'none'}")

    def after_batch(self, loss, logits, y):
        """Metrics (on the device), the log line and the NaN check every --log-iters, Ctrl-C."""
        self.metrics.update(loss, logits, y)
        self._after(y.shape[0], self.interrupt.requested)

    def after_step(self, result):
        """``after_batch`` for ``distributed.dp_step``: its sums and flags are the same on every
        rank (reduced), so every rank stops after the same batch, on a NaN loss at once."""
        self.metrics.add(result.sums)
        if not result.finite:  # dp_step did not apply the update
            self._check_finite(result.loss, f"Epoch[{self.epoch}] Batch [{self.b + 1}]")
        # stop on the reduced flag only: a signal that struck this rank during the step counts
        # from the next step on, for every rank together
        self._after(int(result.sums[1]), result.stop)

    def _after(self, rows, stop):
        self.b += 1
        self.seen += rows
        if self.report_to.bar:
            self.report_to.bar.update(1)
        due = self.report_to.lines.due(self.b)
        if due:
            m = self.metrics  # reading it is the host sync of the interval
            if due == "interval":  # the same batches on every rank (the clock is per rank)
                self._check_finite(m.loss, f"Epoch[{self.epoch}] Batch [{self.b}]")
            speed = self.seen / max(time.perf_counter() - self.tic, 1e-9)
            self.report_to.interval(self.epoch, self.b, speed, m)
            self.tic, self.seen = time.perf_counter(), 0
        if stop:  # this batch is complete: save and leave
            self._stop_mid_epoch()

    def _stop_mid_epoch(self):
        self.report_to.close_bar()
        self._check_finite(self.metrics.loss, f"Epoch[{self.epoch}] Batch [{self.b}]")
        path = self.saver.interrupted_path
        if not self._save(path, self.epoch, self.b, self.epoch_rng_state, self.metrics.sums):
            raise Stop(EXIT_ERROR, f"{self.interrupt.name}: the state after Epoch[{self.epoch}] "
                                   f"Batch [{self.b}] could not be saved (see above)")
        raise Stop(self.interrupt.exit_status,
                   f"Saved {path} (Epoch[{self.epoch}] after batch {self.b}); continue exactly "
                   f"with:\n  {self.resume_command(path)}")

    def _check_finite(self, loss, where):
        if not math.isfinite(loss):
            self.report_to.close_bar()
            raise Stop(EXIT_ERROR,
                       f"{where}: the mean loss is {loss}; stopping. The training diverged: is the "
                       f"learning rate ({self.optimizer.lr:g}) too high? (checked every "
                       f"--log-iters {self.o['log_iters']} batches). Last good checkpoint: "
                       f"{self.saver.last or 'none written yet'} (untouched)")

    def test(self, epoch):
        """(test Metrics, which BN statistics were used) after the epoch's training batches."""
        self.report_to.close_bar()
        self._check_finite(self.metrics.loss, f"Epoch[{epoch}]")
        bar = self.report_to.open_bar(self.data.test_len(), 0, f"Epoch[{epoch}] test")
        try:
            return test_pass(self.model, self.data, self.o.get("eval_bn", "auto"),
                             (epoch + 1) * len(self.data), bar.update if bar else None)
        finally:
            self.report_to.close_bar()
            self.model.train()

    def report(self, epoch, lr, test, statistics):
        """The epoch's line on the console and its record in log.jsonl."""
        m = self.metrics
        if not math.isfinite(test.loss):
            raise Stop(EXIT_ERROR, f"Epoch[{epoch}]: the test loss is {test.loss}; stopping "
                                   f"(diverged; is the learning rate {lr:g} too high?). Last good "
                                   f"checkpoint: {self.saver.last or 'none written yet'}")
        now = time.perf_counter()
        record = dict(epoch=epoch, lr=lr, train_loss=m.loss, train_top1=m.top1,
                      test_loss=test.loss, test_top1=test.top1)
        if self.top5:
            record.update(train_top5=m.top5, test_top5=test.top5)
        record.update(eval_bn=statistics, epoch_time=now - self.t_epoch,
                      elapsed=self.elapsed_before + now - self.t_start)
        self.history.append(record)
        self.report_to.epoch(record, self.history)

    def save(self, epoch):
        """The checkpoint after ``epoch`` every --checkpoint-every epochs (and after the last, and
        to retry a failed one); after a Ctrl-C during the epoch's test pass, stop here."""
        done = epoch + 1
        last = done == self.o["num_epochs"]
        # a signal during the test pass: all ranks decide together (no-op on one process)
        stop = distributed.reduce_flag(self.comm, self.interrupt.requested)
        if done % self.o["checkpoint_every"] == 0 or last or stop or self.saver.failed:
            path = checkpoint_path(self.prefix, done)
            if self._save(path, done, 0, self.rng.bit_generator.state, np.zeros(4)):
                self.report_to.say(f"Saved {path}")
                if self.saver.remove_resumed_interrupt_file(self.ckpt, self.report_to.say):
                    self.ckpt = None
            elif last:
                self.report_to.plot(self.history)
                raise Stop(EXIT_ERROR, f"the final checkpoint {path} could not be written (see "
                                       "above); the training of this run is lost after "
                                       f"{self.saver.last or 'its start'}")
        # the curves after the checkpoint: on a nearly full disk they never take its space (they
        # are drawn again from the history at the next epoch; a checkpoint is not)
        self.report_to.plot(self.history)
        if stop:  # during the test pass: the epoch is complete (and saved)
            if self.saver.failed:
                raise Stop(EXIT_ERROR, f"{self.interrupt.name}: Epoch[{epoch}] is complete but "
                                       f"could not be saved (see above); last checkpoint on disk: "
                                       f"{self.saver.last or 'none'}")
            raise Stop(self.interrupt.exit_status,
                       f"Stopped after Epoch[{epoch}]; continue with:\n  "
                       f"{self.resume_command(self.saver.last)}")

    def _save(self, path, epoch, batch, epoch_rng_state, sums):
        return self.saver.save(path, epoch, batch, epoch_rng_state, sums, self.history, self.o)
