"""The parts of a training job around the step: files, metrics, evaluation, resume, Ctrl-C.

``examples/cifar10_igc.py`` builds the data, the network and the optimizer and runs the loop::

    with training.Run(opts, model, optimizer, data, ckpt) as run:
        for epoch in run.epochs():
            lr = schedule.step(epoch)
            for x, y in run.batches(epoch):
                loss, logits = training.train_step(model, optimizer, x, y)   # the step
                run.after_batch(loss, logits, y)     # metrics on the device, log lines, Ctrl-C
            run.end_epoch(epoch, lr)                 # test, log.jsonl, curves, checkpoint

Everything else lives here: ``Run`` (the run folder, its lock, resume state, progress, stops),
``TrainingData`` (the data source: batches of an epoch from the epoch's rng state), ``Metrics``,
``evaluate`` and ``precise_bn_statistics``, checkpoint files, ``JsonLinesLog`` and ``plot_curves``.
Data parallel (``igc_np/distributed.py``): ``distributed.dp_step`` replaces ``train_step`` (slice,
forward/backward per slice, rank-ordered reduction, step) and ``Run.after_step`` replaces
``after_batch``; ``Run(comm=...)`` lets rank 0 alone call the writers (``Run.save``,
``Run._write_log``, ``plot_curves``, the console), which are the only places files are written. A
streamed data set (ImageNet) replaces ``TrainingData`` by any object with the same four members
(on several ranks, ``batches`` also takes ``part=(rank, size)``: each rank builds only its rows).

Checkpoint files
----------------
``<prefix>-<epoch:04d>.npz`` holds the state after ``epoch`` completed epochs (the reference's
MXNet numbering: the file written after ``Epoch[0]`` is ``-0001``). It is a plain ``.npz`` written
atomically and read back with the bounded reader of ``igc_np.serialization`` (no pickles, sizes
checked before reading). Strings (JSON) are stored as 0-d unicode arrays:

=================  =========  ===============================================================
key                array      meaning
=================  =========  ===============================================================
``format``         0-d str    ``"igc_np.checkpoint/1"``
``model/<name>``   arrays     ``Module.state_dict()``: parameters and BN statistics, by the
                              reference's names (``g1_b1_p2_two1_conv1_weight``, ...)
``optimizer/<k>``  arrays     ``SGD.state_dict()``: ``lr``, ``velocity_0`` ...
``epoch``          0-d int    epochs completed
``batch``          0-d int    batches completed in epoch ``epoch`` (0 at an epoch boundary;
                              > 0 only in a checkpoint written on Ctrl-C / SIGTERM)
``rng_state``      0-d str    JSON of the data rng's ``bit_generator.state`` at the *start* of
                              epoch ``epoch``: the shuffle of that epoch is drawn again on resume
``train_sums``     (4,) f64   running sums of the unfinished epoch (see ``Metrics.sums``)
``history``        0-d str    JSON list of the per-epoch records so far (the log and the curves)
``args``           0-d str    JSON of the resolved options (paths among them are informative
                              only: a resumed run writes where its command line says)
=================  =========  ===============================================================

Every field is checked on loading (``CheckpointError`` names the field); a model with NaN or inf
values is never written, and one read from a file is refused for resume.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import backend, distributed
from . import functional as F
from .autograd import Tensor, no_grad
from .data import DATASETS, DatasetError, iterate_batches
from .nets import IMAGENET_CONFIGS
from .serialization import SerializationError, atomic_write, read_npz, write_npz

FORMAT = "igc_np.checkpoint/1"
NETWORKS = ("plain", "resnet", "plain_igc", "resnet_igc") + tuple(IMAGENET_CONFIGS)  # + ImageNet's five
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

__all__ = ["CheckpointError", "OptionError", "Checkpoint", "checkpoint_path", "save_checkpoint",
           "load_checkpoint", "restore", "check_options", "train_step", "TrainingData", "Metrics",
           "evaluate", "precise_bn_statistics", "JsonLinesLog", "plot_curves",
           "GracefulInterrupt", "RunFolderError", "RunLock", "check_run_folder", "Run", "Stop",
           "run_command"]


class CheckpointError(SerializationError):
    """A checkpoint is missing, corrupt or does not fit the model; the message names the file."""


class OptionError(ValueError):
    """An option that cannot work; the message names the option and the valid range."""


# --------------------------------------------------------------------------------------------
# Options: one table of valid values, used for the command line and for a checkpoint's copy
# --------------------------------------------------------------------------------------------
_INT_LIMITS = {  # option: (smallest, largest)
    "depth": (1, 2000), "primary_partition": (1, 4096), "secondary_partition": (1, 4096),
    "batch_size": (1, 1 << 16), "num_epochs": (1, 100_000), "log_iters": (1, 1 << 30),
    "checkpoint_every": (1, 100_000), "subset": (1, 1 << 40), "rand_seed": (0, 2 ** 63 - 1),
    "micro_batches": (1, 1 << 16)}
_FLOAT_LIMITS = {  # option: (lower, upper, lower included)
    "lr": (0.0, 1e6, False), "lr_factor": (0.0, 1.0, False), "momentum": (0.0, 1.0, True),
    "wd": (0.0, 1.0, True)}
MAX_WIDTH = 4096  # C = L*M channels in the first stage (4C in the last)


def _flag(key):
    return "--" + key.replace("_", "-")


def check_options(o, where=""):
    """Raise OptionError (naming the option and its valid range) unless every option is sane.

    ``o`` is the resolved option dict of the trainer; ``where`` prefixes messages (a checkpoint).
    """
    def bad(key, what):
        raise OptionError(f"{where}{_flag(key)} {what}")

    for key, (lo, hi) in _INT_LIMITS.items():
        v = o.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            bad(key, f"must be an integer, got {v!r}")
        if not lo <= v <= hi:
            bad(key, f"must be in {lo}..{hi}, got {v}")
    for key, (lo, hi, closed) in _FLOAT_LIMITS.items():
        v = o.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            bad(key, f"must be a finite number, got {v!r}")
        if not ((lo <= v) if closed else (lo < v)) or v > hi or (key == "momentum" and v >= 1):
            rng = f"{'[' if closed else '('}{lo:g}, {hi:g}{')' if key == 'momentum' else ']'}"
            hint = {"lr_factor": " (it multiplies the learning rate at each step: 0.1 divides "
                                 "it by 10; a negative factor would climb the loss)"}.get(key, "")
            bad(key, f"must be in {rng}, got {v:g}{hint}")
    choices = {"network": NETWORKS, "dataset": DATASETS, "dtype": ("float32", "float64"),
               "eval_bn": ("auto", "running", "precise"), "dist": ("auto", "none", "mpi", "nccl")}
    for key, valid in choices.items():
        if key in o and o[key] not in valid:
            bad(key, f"must be one of {', '.join(valid)}, got {o[key]!r}")
    steps = o.get("lr_steps")
    if steps is not None:
        if not isinstance(steps, list) or not all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in steps):
            bad("lr_steps", f"must be a list of epochs, got {steps!r}")
        if any(s < 1 for s in steps):
            bad("lr_steps", f"must be epochs >= 1 (the step happens before that epoch), got "
                            f"{','.join(map(str, steps))}")
    K, B = o.get("micro_batches"), o.get("batch_size")
    if isinstance(K, int) and isinstance(B, int) and K > B:
        bad("micro_batches", f"{K} is more than --batch-size {B}: every micro-batch needs at least "
                             "one image (and BatchNorm more than one)")
    L, M = o.get("primary_partition"), o.get("secondary_partition")
    if isinstance(L, int) and isinstance(M, int) and L * M > MAX_WIDTH:
        bad("primary_partition", f"x --secondary-partition = C = {L * M} channels in the first "
                                 f"stage ({4 * L * M} in the last); at most {MAX_WIDTH}")


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def checkpoint_path(prefix, epoch):
    """``<prefix>-<epoch:04d>.npz``: the state after ``epoch`` completed epochs."""
    return Path(f"{prefix}-{int(epoch):04d}.npz")


def _text(value):
    """A 0-d unicode array: how a string travels through an npz without pickling."""
    return np.array(json.dumps(value) if not isinstance(value, str) else value, dtype=np.str_)


def nonfinite_entries(state):
    """Names of the arrays of ``state`` ({name: array}) holding NaN or inf."""
    return [k for k, v in state.items()
            if np.asarray(v).dtype.kind in "fc" and not np.isfinite(v).all()]


def save_checkpoint(path, model, optimizer, *, epoch, batch, rng_state, train_sums, history, args):
    """Write the whole training state to ``path`` atomically; refuse a non-finite model.

    Raises CheckpointError (and writes nothing) if a weight or BN statistic is NaN/inf: such a
    file would later be "the last good checkpoint". OSError (full disk, ...) propagates with
    no file left behind.
    """
    path = Path(path)
    model_state = model.state_dict()
    bad = nonfinite_entries(model_state)
    if bad or not np.isfinite(train_sums).all():
        raise CheckpointError(f"checkpoint {path} not written: NaN/inf in "
                              f"{', '.join(bad[:3]) or 'the running loss'}"
                              f"{' ...' if len(bad) > 3 else ''}")
    arrays = {"format": _text(FORMAT),
              "epoch": np.int64(epoch), "batch": np.int64(batch),
              "rng_state": _text(rng_state),
              "train_sums": np.asarray(train_sums, dtype=np.float64),
              "history": _text(history), "args": _text(args)}
    arrays.update({f"model/{k}": v for k, v in model_state.items()})
    arrays.update({f"optimizer/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    return write_npz(path, arrays)


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns: every entry of the file, decoded and checked."""
    path: Path
    model_state: dict
    optimizer_state: dict
    epoch: int
    batch: int
    rng_state: dict
    train_sums: np.ndarray
    history: list = field(default_factory=list)
    args: dict = field(default_factory=dict)
    nonfinite: list = field(default_factory=list)  # model entries with NaN/inf (never resumed)


_SCALARS = ("format", "epoch", "batch", "rng_state", "train_sums", "history", "args")
_RECORD_NUMBERS = ("lr", "train_loss", "train_top1", "test_loss", "test_top1", "train_top5",
                   "test_top5", "epoch_time", "elapsed")


def _known_member(key):
    return key in _SCALARS or key.startswith(("model/", "optimizer/"))


def load_checkpoint(path):
    """Read and check a checkpoint file; raise ``CheckpointError`` naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise CheckpointError(f"checkpoint {path}: is a folder; give a .npz file in it")
        raise CheckpointError(f"checkpoint {path}: no such file{_available_hint(path)}")
    try:
        entries = read_npz(path, _known_member, what="checkpoint")
    except CheckpointError:
        raise
    except SerializationError as e:
        raise CheckpointError(str(e)) from None
    where = f"checkpoint {path}"

    def fail(key, problem):
        raise CheckpointError(f"{where}: field {key!r} {problem}")

    fmt = entries.get("format")
    if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        shown = str(fmt)[:40] if fmt is not None else "missing"
        raise CheckpointError(f"{where}: format {shown!r}, expected {FORMAT!r} "
                              "(not written by igc_np's trainer?)")
    missing = [k for k in _SCALARS if k not in entries]
    if missing:
        raise CheckpointError(f"{where}: missing entries {missing}")

    def integer(key, lo, hi):
        v = entries[key]
        if v.shape != () or v.dtype.kind not in "iu" or not lo <= int(v) <= hi:
            fail(key, f"must be an integer in {lo}..{hi}, got {v!r}")
        return int(v)

    def json_field(key, kind):
        v = entries[key]
        if v.shape != () or v.dtype.kind != "U":
            fail(key, "must be a JSON text")
        try:
            value = json.loads(str(v))
        except ValueError as e:
            fail(key, f"is not valid JSON ({e})")
        if not isinstance(value, kind):
            fail(key, f"must be a JSON {kind.__name__}, got {type(value).__name__}")
        return value

    epoch = integer("epoch", 0, 100_000)
    batch = integer("batch", 0, 1 << 40)
    rng_state = json_field("rng_state", dict)
    try:  # the only way to know a bit-generator state is valid is to set one
        bit_generator = getattr(np.random, str(rng_state.get("bit_generator")))
        if not (isinstance(bit_generator, type) and issubclass(bit_generator, np.random.BitGenerator)):
            raise ValueError(f"unknown bit generator {rng_state.get('bit_generator')!r}")
        bit_generator().state = rng_state
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as e:
        fail("rng_state", f"is not a NumPy bit-generator state ({type(e).__name__}: {e})")
    sums = entries["train_sums"]
    if sums.shape != (4,) or sums.dtype.kind != "f":
        fail("train_sums", f"must be 4 floats, got {sums.shape} {sums.dtype}")
    sums = sums.astype(np.float64)
    if not np.isfinite(sums).all() or (sums < 0).any() or sums[1] != int(sums[1]) \
            or sums[2] > sums[1] or sums[3] > sums[1] or sums[2] > sums[3]:
        fail("train_sums", f"must be [loss sum >= 0, samples, top-1 hits <= top-5 hits <= samples], "
                           f"got {sums.tolist()}")
    if batch == 0 and sums.any():
        fail("train_sums", "must be zero at an epoch boundary (batch 0)")
    history = json_field("history", list)
    if len(history) != epoch:
        fail("history", f"has {len(history)} records for {epoch} completed epochs")
    for i, r in enumerate(history):
        if not isinstance(r, dict) or r.get("epoch") != i:
            fail("history", f"record {i} must be a JSON object with epoch {i}")
        for k in _RECORD_NUMBERS:
            if k in r and (isinstance(r[k], bool) or not isinstance(r[k], (int, float))
                           or not math.isfinite(r[k]) or r[k] < 0):
                fail("history", f"record {i}: {k} must be a finite number >= 0, got {r[k]!r}")
    args = json_field("args", dict)
    try:
        check_options({k: v for k, v in args.items() if k != "lr_steps" or isinstance(v, list)},
                      where=f"{where}: field 'args': ")
    except OptionError as e:
        raise CheckpointError(str(e)) from None
    model_state = {k[6:]: v for k, v in entries.items() if k.startswith("model/")}
    if not model_state:
        fail("model/", "is empty: no weights stored")
    optimizer_state = {k[10:]: v for k, v in entries.items() if k.startswith("optimizer/")}
    if "lr" in optimizer_state:
        lr = optimizer_state["lr"]
        if lr.shape != () or lr.dtype.kind != "f" or not 0 < float(lr) < 1e3:
            fail("optimizer/lr", f"must be a positive finite float, got {lr!r}")
    return Checkpoint(path=path, model_state=model_state, optimizer_state=optimizer_state,
                      epoch=epoch, batch=batch, rng_state=rng_state, train_sums=sums,
                      history=history, args=args,
                      nonfinite=nonfinite_entries(model_state) + [
                          "optimizer/" + k for k in nonfinite_entries(optimizer_state)])


def _available_hint(path):
    """'; in DIR there are: ...-0005.npz, ...-0010.npz' listing checkpoints beside a missing one."""
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
# The step and the data source
# --------------------------------------------------------------------------------------------
def train_step(model, optimizer, x, y):
    """One SGD step on the batch (x, y); returns (loss, logits) as Tensors, still on the device.

    Nothing here reads a value back to the host: on a GPU the step stays asynchronous.
    The data-parallel version is ``distributed.dp_step`` (slices, a rank-ordered reduction).
    """
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss, logits


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


# --------------------------------------------------------------------------------------------
# Metrics and evaluation
# --------------------------------------------------------------------------------------------
class Metrics:
    """Running mean loss, top-1 and top-5 accuracy over the batches seen so far.

    ``sums`` = [sum of loss * batch size, samples, top-1 hits, top-5 hits] (float64), which is
    what a mid-epoch checkpoint stores to continue the epoch's numbers exactly. ``update`` keeps
    the new sums where the arrays are (a GPU array stays on the GPU: no host sync per batch);
    reading ``sums`` (or loss, top1, ...) brings them to the host.
    """

    def __init__(self, sums=None):
        self._host = np.zeros(4) if sums is None else np.array(sums, dtype=np.float64)
        self._pending = None  # device (4,) float64 sums not yet added to _host

    def update(self, loss, logits, labels):
        """loss: the batch's mean loss (number, 0-d array or Tensor); logits (B, K), labels (B,)."""
        loss, logits, labels = (v.data if isinstance(v, Tensor) else v
                                for v in (loss, logits, labels))
        xp = backend.get_array_module(backend.device_of(logits))
        logits, labels = xp.asarray(logits), xp.asarray(labels)
        n = labels.shape[0]
        # the 5 largest logits of each row, unordered (argpartition is O(K), no full sort)
        k = min(5, logits.shape[1])
        top5 = xp.argpartition(-logits, k - 1, axis=1)[:, :k]
        batch = xp.stack([xp.asarray(loss, dtype=xp.float64) * n, xp.asarray(float(n)),
                          (logits.argmax(axis=1) == labels).sum().astype(xp.float64),
                          (top5 == labels[:, None]).sum().astype(xp.float64)])
        self._pending = batch if self._pending is None else self._pending + batch

    def add(self, sums):
        """Add sums already computed (and reduced over ranks) by ``distributed.dp_step``."""
        self._host = self._host + np.asarray(sums, dtype=np.float64)

    @property
    def sums(self):
        if self._pending is not None:  # the host sync: once per log interval, not per batch
            self._host = self._host + backend.to_device(self._pending, "cpu")
            self._pending = None
        return self._host

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


def evaluate(model, x, y, mean, std, batch_size=256, device="cpu", dtype=np.float32,
             progress=None):
    """Test-set Metrics of ``model`` in inference mode (BN uses its running statistics).

    x (N, 3, H, W) uint8, y (N,) int64; mean/std per channel on the 0..255 scale.
    ``progress(n)`` is called after each batch. Leaves the model in eval mode: the caller
    switches it back with ``model.train()``.
    """
    batches = ((Tensor(xb, device=device), Tensor(yb, device=device)) for xb, yb in
               iterate_batches(x, y, batch_size, mean=mean, std=std, dtype=dtype))
    return evaluate_batches(model, batches, progress)


def evaluate_batches(model, batches, progress=None):
    """Metrics of ``model`` (eval mode, no graph) over (x, y) Tensor batches."""
    model.eval()
    metrics = Metrics()
    with no_grad():  # no graph: half the memory, and faster
        for x, y in batches:
            logits = model(x)
            metrics.update(F.cross_entropy(logits, y), logits, y)
            if progress is not None:
                progress(1)
    metrics.sums  # one host sync at the end
    return metrics


def batch_norms(model):
    return [m for _, m in model.named_modules() if hasattr(m, "running_mean")
            and hasattr(m, "momentum")]


def stale_statistics(model, updates, threshold=0.01):
    """True while the BN running statistics still hold more than ``threshold`` of their initial
    values: after t updates with momentum m that share is m**t (0.99**100 = 0.37)."""
    bns = batch_norms(model)
    return bool(bns) and max(m.momentum for m in bns) ** updates > threshold


class precise_bn_statistics:
    """``with precise_bn_statistics(model, batches):`` evaluate with BN statistics of the data.

    Inside the block every BN's running mean/variance is the plain average over ``batches`` of
    the batch statistics (precise BN: cumulative averages, momentum 1 - 1/i for batch i);
    leaving the block puts the trained statistics and momenta back bit for bit, so training,
    checkpoints and resume never see the recalibrated values.
    """

    def __init__(self, model, batches):
        self.model, self.batches, self.count = model, batches, 0

    def __enter__(self):
        self.saved = [(m, m.momentum, m.running_mean.copy(), m.running_var.copy())
                      for m in batch_norms(self.model)]
        self.model.train()  # batch statistics, and the running ones updated
        with no_grad():
            for i, (x, _) in enumerate(self.batches, start=1):
                for m, *_ in self.saved:
                    m.momentum = 1.0 - 1.0 / i  # running = ((i-1) * running + batch) / i
                self.model(x)
                self.count = i
        for m, momentum, *_ in self.saved:
            m.momentum = momentum
        self.model.eval()
        return self

    def __exit__(self, *exc):
        for m, momentum, mean, var in self.saved:
            m.momentum = momentum
            m.running_mean[...] = mean
            m.running_var[...] = var
        return False


PRECISE_BN_BATCHES = 20


def test_pass(model, data, eval_bn="auto", updates=None, progress=None):
    """(Metrics on ``data.test_batches()``, note) with the BN statistics ``eval_bn`` asks for.

    eval_bn: 'running' (the reference: the running statistics), 'precise' (recalibrated on the
    first PRECISE_BN_BATCHES training batches, then restored), or 'auto': precise while
    ``stale_statistics(model, updates)``. The note says which was used; it goes into the log.
    """
    if eval_bn == "precise" or (eval_bn == "auto" and stale_statistics(model, updates or 0)):
        with precise_bn_statistics(model, data.plain_train_batches(PRECISE_BN_BATCHES)) as pbn:
            test = evaluate_batches(model, data.test_batches(), progress)
        why = "asked for" if eval_bn == "precise" else \
            f"the running statistics are young after {updates} updates"
        return test, f"precise ({pbn.count} training batches; {why})"
    return evaluate_batches(model, data.test_batches(), progress), "running"


# --------------------------------------------------------------------------------------------
# The JSON-lines log and the curves
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# The run folder: lock, refusal of a finished run, writability
# --------------------------------------------------------------------------------------------
class RunFolderError(OSError):
    """The output folder cannot be used (another trainer, an earlier run, not writable)."""


RUN_FILES = ("log.jsonl", "loss.png", "accuracy.png")
LOCK_NAME = ".igc_np.lock"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``<folder>/.igc_np.lock``: one trainer per folder.

    Holds JSON {pid, host, started, command}. A lock of a process that is gone (same host) is
    taken over with a note; a live one (or one of another host, which cannot be checked) is an
    error naming it.
    """

    def __init__(self, folder):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def acquire(self, note=print):
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                other = self._read()
                pid, host = other.get("pid"), other.get("host")
                same_host = host == info["host"]
                if isinstance(pid, int) and same_host and not _pid_alive(pid):
                    note(f"note: taking over the stale lock {self.path} of process {pid} "
                         f"(started {other.get('started')}), which is no longer running")
                    self.path.unlink(missing_ok=True)
                    continue
                if not isinstance(pid, int):
                    raise RunFolderError(f"{self.path.parent}: an unreadable lock file {self.path}; "
                                         "if no trainer uses this folder, remove it")
                raise RunFolderError(
                    f"{self.path.parent} is in use by another trainer: pid {pid} on {host}, "
                    f"started {other.get('started')} ({other.get('command', '')[:120]}). Wait for "
                    f"it, choose another --output-dir, or remove {self.path} if that process is "
                    "gone" + ("" if same_host else " (it runs on another machine: not checked)"))
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            self.held = True
            return self
        raise RunFolderError(f"{self.path}: cannot take the lock (others keep taking it)")

    def _read(self):
        try:
            value = json.loads(self.path.read_text()[:4096])
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self):
        if self.held:
            if self._read().get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


def check_writable(folder, option, create=True):
    """Prove a file can be written in ``folder`` (created if needed), else RunFolderError.

    ``create=False`` creates nothing: the nearest existing folder on the way must be a writable
    folder (a quick check before the data is loaded; the real one comes with the lock).
    """
    folder = Path(folder)
    if not create:
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise RunFolderError(f"{option} {folder}: cannot write there ({probe} is "
                                 f"{'not a folder' if not probe.is_dir() else 'not writable'})")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / ".igc_np.write-test") as f:
            f.write(b"ok")
        (folder / ".igc_np.write-test").unlink()
    except OSError as e:
        raise RunFolderError(f"{option} {folder}: cannot write there "
                             f"({e.strerror or type(e).__name__})") from None


def earlier_run_files(out_dir, prefix):
    """Files of an earlier run in ``out_dir`` / with ``prefix``: log, curves, checkpoints."""
    out_dir, prefix = Path(out_dir), Path(prefix)
    files = [out_dir / n for n in RUN_FILES if (out_dir / n).is_file()]
    files += sorted(p for p in prefix.parent.glob(f"{prefix.name}-*.npz") if p.is_file())
    return files


def checkpoint_epoch(path, prefix):
    """k for ``<prefix>-<k:04d>.npz``, None for other names (``-interrupted``)."""
    stem = Path(path).name[len(Path(prefix).name) + 1:-4]
    return int(stem) if stem.isdigit() else None


def check_run_folder(out_dir, prefix, ckpt=None, overwrite=False, delete=False):
    """Refuse a folder holding a run unless ``ckpt`` resumes it at its latest state, or overwrite.

    Also checks that ``out_dir`` and the prefix's folder are writable. ``delete=False``: the
    quick check before the data is loaded, which creates and removes nothing; ``delete=True``:
    the real one under the lock, which creates the folders and, with ``overwrite``, removes the
    earlier run's files (never the checkpoint being resumed).
    """
    out_dir, prefix = Path(out_dir), Path(prefix)
    check_writable(out_dir, "--output-dir", create=delete)
    check_writable(prefix.parent, "--model-prefix", create=delete)
    files = earlier_run_files(out_dir, prefix)
    if not files:
        return
    if overwrite:
        if delete:
            resumed = ckpt.path.resolve() if ckpt is not None else None
            files = [p for p in files if p.resolve() != resumed]  # never the file being resumed
            for p in files:
                p.unlink(missing_ok=True)
            print(f"--overwrite: removed {len(files)} files of the earlier run in {out_dir}",
                  file=sys.stderr)
        return
    ours = ckpt is not None and ckpt.path.resolve().parent == prefix.parent.resolve()
    if not ours:
        what = ", ".join(p.name for p in files[:4]) + (" ..." if len(files) > 4 else "")
        raise RunFolderError(
            f"{out_dir} already holds a run ({what}); this run would replace it. Resume it "
            "(--resume FILE or --load-epoch K), choose another --output-dir, or pass --overwrite "
            "to delete it and start again")
    later = [p for p in files if (checkpoint_epoch(p, prefix) or -1) > ckpt.epoch]
    if later:
        raise RunFolderError(
            f"{out_dir} holds checkpoints later than the one resumed (epoch {ckpt.epoch}): "
            f"{', '.join(p.name for p in later[:4])}; resuming here would replace them. Resume "
            "the latest, give another --output-dir, or pass --overwrite")


# --------------------------------------------------------------------------------------------
# A run: everything around the loop
# --------------------------------------------------------------------------------------------
class Stop(Exception):
    """Raised inside the loop to end the run with ``status`` (NaN loss, Ctrl-C, final save failed)."""

    def __init__(self, status, message=None):
        super().__init__(message)
        self.status, self.message = status, message


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
    except (CheckpointError, DatasetError, ImportError, distributed.DistError) as e:
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
