"""A training run: everything around the loop's step (folder, resume state, progress, stops).

``examples/cifar10_igc.py`` builds the data, the network and the optimizer and runs the loop::

    with Run(opts, model, optimizer, data, ckpt) as run:
        for epoch in run.epochs():
            lr = schedule.step(epoch)
            for x, y in run.batches(epoch):
                loss, logits = train_step(model, optimizer, x, y)   # the step
                run.after_batch(loss, logits, y)     # metrics on the device, log lines, Ctrl-C
            run.end_epoch(epoch, lr)                 # test, log.jsonl, curves, checkpoint

``Run`` holds the run folder's lock and the resume state and calls the parts that live beside it:
``run_folder`` (lock, refusal of an earlier run), ``signals`` (Ctrl-C/SIGTERM), ``progress`` (log,
curves, bars), ``evaluation`` (the test pass) and ``checkpoint`` (files). ``TrainingData`` is the
data source: batches of an epoch from the epoch's rng state. Data parallel
(``igc_np/app/distributed.py``): ``distributed.dp_step`` replaces ``train_step`` and
``Run.after_step`` replaces ``after_batch``; ``Run(comm=...)`` lets rank 0 alone call the writers
(``Run.save``, ``Run._write_log``, ``plot_curves``, the console), the only places files are
written. A streamed data set (ImageNet) replaces ``TrainingData`` by any object with the same
members (on several ranks, ``batches`` also takes ``part=(rank, size)``).
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ..autograd import Tensor
from . import distributed
from .checkpoint import CheckpointError, checkpoint_path, restore, save_checkpoint
from .data import iterate_batches
from .evaluation import Metrics, test_pass
from .progress import JsonLinesLog, _have_tqdm, _isatty, _progress_bar, plot_curves
from .run_folder import RunFolderError, RunLock, check_run_folder, check_writable
from .signals import EXIT_ERROR, EXIT_OK, GracefulInterrupt, Stop


class TrainingData:
    """The data source of a run: an in-memory ``Dataset`` cut into batches.

    The loop needs only ``batches(rng, start_batch)``, ``len()``, ``test_batches()`` and the
    attributes ``name``, ``num_classes`` and ``train_size``; a streamed source (e.g. JPEG files)
    can provide the same.
    """

    def __init__(self, dataset, batch_size, dtype=np.float32, device="cpu", test_batch_size=256):
        self.dataset, self.batch_size, self.dtype, self.device = dataset, batch_size, dtype, device
        self.test_batch_size = test_batch_size
        self.name, self.num_classes = dataset.name, dataset.num_classes
        self.train_size = len(dataset.train_x)

    def __len__(self):
        """Batches per epoch (the last one may be smaller)."""
        return math.ceil(self.train_size / self.batch_size)

    def _tensors(self, batches):
        for xb, yb in batches:
            yield Tensor(xb, device=self.device), Tensor(yb, device=self.device)

    def batches(self, rng, start_batch=0, part=None):
        """(x, y) Tensors of one shuffled, augmented epoch; ``rng`` is advanced by the epoch.

        Restoring ``rng`` to its state before a call and passing ``start_batch=k`` gives the same
        batches k, k+1, ... again (the resume of a mid-epoch checkpoint). part=(rank, size): only
        this data-parallel rank's rows of each batch (``iterate_batches``), the rng advanced as
        for the whole batch.
        """
        ds = self.dataset
        return self._tensors(iterate_batches(
            ds.train_x, ds.train_y, self.batch_size, shuffle=True, rng=rng, augment=ds.augment,
            mean=ds.mean, std=ds.std, dtype=self.dtype, start_batch=start_batch, part=part))

    def plain_train_batches(self, count):
        """The first ``count`` training batches in file order, not augmented (for precise BN)."""
        ds = self.dataset
        it = iterate_batches(ds.train_x, ds.train_y, self.batch_size, mean=ds.mean, std=ds.std,
                             dtype=self.dtype)
        return self._tensors(b for _, b in zip(range(count), it))

    def test_batches(self):
        ds = self.dataset
        return self._tensors(iterate_batches(ds.test_x, ds.test_y, self.test_batch_size,
                                             mean=ds.mean, std=ds.std, dtype=self.dtype))

    def test_len(self):
        return math.ceil(len(self.dataset.test_x) / self.test_batch_size)


class Run:
    """State and files of one training run (see the module docstring for the loop).

    ``o``: resolved options (``output_dir``, ``model_prefix``, ``num_epochs``, ``log_iters``,
    ``checkpoint_every``, ``lr_steps``, ``eval_bn`` ...); ``ckpt``: the Checkpoint resumed from;
    ``resume_command``: the command line that continues an interrupted run (for the message).
    ``say`` prints a line (the progress bar's ``write`` while one is shown).
    """

    def __init__(self, o, model, optimizer, data, ckpt=None, rng=None, resume_command=None,
                 overwrite=False, comm=None):
        self.o, self.model, self.optimizer, self.data, self.ckpt = o, model, optimizer, data, ckpt
        # data-parallel runs: every rank trains, rank 0 alone writes files and the console
        self.comm = comm if comm is not None else distributed.SingleProcess()
        self.writer = self.comm.is_root
        self.rng = rng if rng is not None else np.random.default_rng()
        self.resume_command = resume_command or (lambda path: f"--resume {path}")
        self.overwrite = overwrite
        self.status = EXIT_OK
        self.out_dir, self.prefix = Path(o["output_dir"]), Path(o["model_prefix"])
        self.start_epoch, self.start_batch, self.history = 0, 0, []
        self.train_sums = None
        self.lock = RunLock(self.out_dir)
        self.last_checkpoint = None
        self.failed_save = None
        self.top5 = data.num_classes >= 100  # reported for 100+ classes, as in the paper
        self.show_bar = self.writer and _isatty(sys.stdout) and _have_tqdm()
        self.bar = None
        self.interrupt = GracefulInterrupt(quiet=not self.writer)

    # ---- opening: folder checks, lock, resume state --------------------------------------------
    def __enter__(self):
        if self.ckpt is not None:  # does it fit? (before touching any folder)
            restore(self.ckpt, self.model, self.optimizer)
            self._check_position(self.ckpt)
        self._open_folder()
        try:
            if self.ckpt is not None:
                self.rng.bit_generator.state = self.ckpt.rng_state
                self.start_epoch, self.start_batch = self.ckpt.epoch, self.ckpt.batch
                self.history = list(self.ckpt.history)
                self.train_sums = self.ckpt.train_sums if self.ckpt.batch else None
                self.last_checkpoint = str(self.ckpt.path)
                where = (f"Epoch[{self.start_epoch}] Batch [{self.start_batch}]" if self.start_batch
                         else f"Epoch[{self.start_epoch}]")
                print(f"Resumed from {self.ckpt.path}: continuing with {where}")
            print(f"Output: {self.out_dir} (log.jsonl, loss.png, accuracy.png, "
                  f"{self.prefix.name}-NNNN.npz)")
            self.log = JsonLinesLog(self.out_dir / "log.jsonl", self.history) if self.writer else None
        except BaseException:
            self.lock.release()
            raise
        self.elapsed_before = self.history[-1].get("elapsed", 0.0) if self.history else 0.0
        self.t_start = time.perf_counter()
        self.interrupt.__enter__()
        # overflow in a diverging run: the NaN check says so in one line, without NumPy warnings
        # (errstate is per thread; the engine's worker threads warn through the filters)
        self._errstate = np.errstate(over="ignore", invalid="ignore", divide="ignore")
        self._errstate.__enter__()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered",
                                RuntimeWarning)
        return self

    def _check_position(self, ckpt):
        """A mid-epoch checkpoint's batch and sample count must fit this data and batch size."""
        if not ckpt.batch:
            return
        n = len(self.data)
        seen = min(ckpt.batch * self.data.batch_size, self.data.train_size)
        if ckpt.batch >= n:
            raise CheckpointError(f"checkpoint {ckpt.path}: field 'batch' is {ckpt.batch}, but an "
                                  f"epoch of this data has {n} batches")
        if ckpt.train_sums[1] != seen:
            raise CheckpointError(f"checkpoint {ckpt.path}: field 'train_sums' counts "
                                  f"{ckpt.train_sums[1]:.0f} samples after {ckpt.batch} batches "
                                  f"of {self.data.batch_size} (expected {seen})")

    def _open_folder(self):
        """Rank 0 checks the folder, takes the lock, refuses an earlier run; every rank learns
        whether that worked (data parallel: the others do not train on alone)."""
        def open_it():
            check_writable(self.out_dir, "--output-dir")  # the lock lives there
            self.lock.acquire(note=lambda m: print(m, file=sys.stderr))
            try:
                self._refuse_earlier_run()
            except BaseException:
                self.lock.release()
                raise
        distributed.root_first(self.comm, open_it, (RunFolderError, OSError))

    def _refuse_earlier_run(self):
        check_run_folder(self.out_dir, self.prefix, self.ckpt, self.overwrite, delete=True)

    def __exit__(self, exc_type, exc, tb):
        self._warnings.__exit__(None, None, None)
        self._errstate.__exit__(None, None, None)
        self.interrupt.__exit__()
        self._close_bar()
        self.lock.release()
        if isinstance(exc, Stop):
            if exc.message and self.writer:
                print(exc.message, file=sys.stderr)
            self.status = exc.status
            return True
        return False

    # ---- the loop's three calls -------------------------------------------------------------------
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
            if self.show_bar:
                self.bar = _progress_bar(len(self.data), self.start_batch, f"Epoch[{epoch}]")
            yield epoch
            self.start_batch, self.train_sums = 0, None

    def batches(self, epoch):
        """(x, y) of the epoch from the resume position on. On several ranks (comm.size > 1) each
        rank gets only its rows of every batch (``data.batches(..., part=(rank, size))``), and
        ``self.batch_rows`` is the global batch's size, for ``dp_step(global_batch=...)``."""
        d = self.data
        if self.comm.size == 1:  # any data source with the four members, whole batches
            source = d.batches(self.rng, self.start_batch)
        else:
            source = d.batches(self.rng, self.start_batch, part=(self.comm.rank, self.comm.size))
        for b, (x, y) in enumerate(source, self.start_batch):
            self.batch_rows = min(d.batch_size, d.train_size - b * d.batch_size)
            yield x, y

    def say(self, line):
        if self.writer:
            (self.bar.write if self.bar else print)(line)

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
        if self.bar:
            self.bar.update(1)
        if self.b % self.o["log_iters"] == 0:
            m = self.metrics  # reading it is the host sync of the interval
            self._check_finite(m.loss, f"Epoch[{self.epoch}] Batch [{self.b}]")
            speed = self.seen / max(time.perf_counter() - self.tic, 1e-9)
            self.say(f"Epoch[{self.epoch}] Batch [{self.b}]\tSpeed: {speed:.2f} samples/sec\t"
                     f"loss: {m.loss:.6f}\ttop1: {m.top1:.6f}")
            if self.bar:
                self.bar.set_postfix(loss=f"{m.loss:.4f}", top1=f"{m.top1:.4f}", refresh=False)
            self.tic, self.seen = time.perf_counter(), 0
        if stop:  # this batch is complete: save and leave
            self._close_bar()
            self._check_finite(self.metrics.loss, f"Epoch[{self.epoch}] Batch [{self.b}]")
            path = self.prefix.with_name(self.prefix.name + "-interrupted.npz")
            saved = self.save(path, self.epoch, self.b, self.epoch_rng_state, self.metrics.sums)
            if not saved:
                raise Stop(EXIT_ERROR, f"{self.interrupt.name}: the state after Epoch[{self.epoch}] "
                                       f"Batch [{self.b}] could not be saved (see above)")
            raise Stop(self.interrupt.exit_status,
                       f"Saved {path} (Epoch[{self.epoch}] after batch {self.b}); continue exactly "
                       f"with:\n  {self.resume_command(path)}")

    def _check_finite(self, loss, where):
        if not math.isfinite(loss):
            self._close_bar()
            raise Stop(EXIT_ERROR,
                       f"{where}: the mean loss is {loss}; stopping. The training diverged: is the "
                       f"learning rate ({self.optimizer.lr:g}) too high? (checked every "
                       f"--log-iters {self.o['log_iters']} batches). Last good checkpoint: "
                       f"{self.last_checkpoint or 'none written yet'} (untouched)")

    def end_epoch(self, epoch, lr):
        """Test (with progress), log.jsonl, curves, the checkpoint; Ctrl-C during the test pass."""
        self._close_bar()
        m = self.metrics
        self._check_finite(m.loss, f"Epoch[{epoch}]")
        test, bn_note = self.test(epoch)
        self.model.train()
        if not math.isfinite(test.loss):
            raise Stop(EXIT_ERROR, f"Epoch[{epoch}]: the test loss is {test.loss}; stopping "
                                   f"(diverged; is the learning rate {lr:g} too high?). Last good "
                                   f"checkpoint: {self.last_checkpoint or 'none written yet'}")
        now = time.perf_counter()
        record = dict(epoch=epoch, lr=lr, train_loss=m.loss, train_top1=m.top1,
                      test_loss=test.loss, test_top1=test.top1)
        if self.top5:
            record.update(train_top5=m.top5, test_top5=test.top5)
        record.update(eval_bn=bn_note, epoch_time=now - self.t_epoch,
                      elapsed=self.elapsed_before + now - self.t_start)
        self.history.append(record)
        self._write_log(record)
        self.say(f"Epoch[{epoch}] lr {lr:g}  train loss {m.loss:.4f} top1 {m.top1:.4f}"
                 + (f" top5 {m.top5:.4f}" if self.top5 else "")
                 + f"  test loss {test.loss:.4f} top1 {test.top1:.4f}"
                 + (f" top5 {test.top5:.4f}" if self.top5 else "")
                 + f"  time {record['epoch_time']:.1f}s (total {record['elapsed']:.1f}s)"
                 + ("" if bn_note == "running" else f"  [test BN: {bn_note}]"))
        self._plot()
        done = epoch + 1
        last = done == self.o["num_epochs"]
        # a signal during the test pass: all ranks decide together (no-op on one process)
        stop = distributed.reduce_flag(self.comm, self.interrupt.requested)
        if done % self.o["checkpoint_every"] == 0 or last or stop \
                or self.failed_save:
            path = checkpoint_path(self.prefix, done)
            if self.save(path, done, 0, self.rng.bit_generator.state, np.zeros(4)):
                self.say(f"Saved {path}")
                self._remove_resumed_interrupt_file()
            elif last:
                raise Stop(EXIT_ERROR, f"the final checkpoint {path} could not be written (see "
                                       "above); the training of this run is lost after "
                                       f"{self.last_checkpoint or 'its start'}")
        if stop:  # during the test pass: the epoch is complete (and saved)
            if self.failed_save:
                raise Stop(EXIT_ERROR, f"{self.interrupt.name}: Epoch[{epoch}] is complete but "
                                       f"could not be saved (see above); last checkpoint on disk: "
                                       f"{self.last_checkpoint or 'none'}")
            raise Stop(self.interrupt.exit_status,
                       f"Stopped after Epoch[{epoch}]; continue with:\n  "
                       f"{self.resume_command(self.last_checkpoint)}")

    # ---- evaluation ------------------------------------------------------------------------------
    def test(self, epoch):
        """Test Metrics and a note of which BN statistics were used (also in log.jsonl)."""
        bar = (_progress_bar(self.data.test_len(), 0, f"Epoch[{epoch}] test")
               if self.show_bar else None)
        try:
            return test_pass(self.model, self.data, self.o.get("eval_bn", "auto"),
                             (epoch + 1) * len(self.data), bar.update if bar else None)
        finally:
            if bar:
                bar.close()

    # ---- files (the only writers: rank 0 alone would call them) ---------------------------------
    def save(self, path, epoch, batch, epoch_rng_state, sums):
        """Write a checkpoint; on failure say what and where the retry goes, keep training state."""
        if not self.writer:  # rank 0 writes; the others hold the same state
            self.last_checkpoint = str(path)
            return True
        try:
            save_checkpoint(path, self.model, self.optimizer, epoch=epoch, batch=batch,
                            rng_state=epoch_rng_state, train_sums=sums, history=self.history,
                            args=self.o)
        except (OSError, CheckpointError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self.failed_save = str(path)
            print(f"error: could not write {path} ({reason}). The training state is kept in "
                  f"memory; the next epoch's end retries with "
                  f"{checkpoint_path(self.prefix, epoch + 1) if batch == 0 else 'no retry'}. "
                  f"Last checkpoint on disk: {self.last_checkpoint or 'none'}", file=sys.stderr)
            return False
        self.failed_save = None
        self.last_checkpoint = str(path)
        return True

    def _remove_resumed_interrupt_file(self):
        """Once resumed and a later checkpoint is safe, our own -interrupted.npz is obsolete."""
        own = self.prefix.with_name(self.prefix.name + "-interrupted.npz")
        if self.writer and self.ckpt is not None and self.ckpt.path.resolve() == own.resolve() and own.is_file():
            own.unlink()
            self.say(f"Removed {own} (resumed, and {self.last_checkpoint} is written)")
            self.ckpt = None

    def _write_log(self, record):
        if not self.writer:
            return
        try:
            self.log.append(record)
        except OSError as e:
            print(f"warning: could not append to {self.log.path} ({e.strerror}); the history is "
                  "also kept in the checkpoints", file=sys.stderr)

    def _plot(self):
        if not self.writer:
            return
        o = self.o
        title = (f"{o.get('network')}-{o.get('depth')} L{o.get('primary_partition')}"
                 f"M{o.get('secondary_partition')} on {o.get('dataset')} ({self.out_dir.name})")
        try:
            plot_curves(self.history, self.out_dir, title=title, lr_steps=o.get("lr_steps", ()))
        except OSError as e:
            print(f"warning: could not draw the curves in {self.out_dir} ({e.strerror})",
                  file=sys.stderr)

    def _close_bar(self):
        if self.bar:
            self.bar.close()
            self.bar = None

