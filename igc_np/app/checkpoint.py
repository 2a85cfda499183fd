"""Trainer checkpoints: ``save_checkpoint``, ``load_checkpoint`` (checked), ``restore``.

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
import shlex
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..serialization import SerializationError, open_regular, read_npz, write_npz
from .options import OptionError, check_options
from .signals import deferred_signals

FORMAT = "igc_np.checkpoint/1"


class CheckpointError(SerializationError):
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


def nonfinite_entries(state):
    """Names of the arrays of ``state`` ({name: array}) holding NaN or inf."""
    return [k for k, v in state.items()
            if np.asarray(v).dtype.kind in "fc" and not np.isfinite(v).all()]


def save_checkpoint(path, model, optimizer, *, epoch, batch, rng_state, train_sums, history, args):
    """Write the whole training state to ``path`` atomically; refuse a non-finite model.

    Raises CheckpointError (and writes nothing) if a weight or BN statistic is NaN/inf: such a
    file would later be "the last good checkpoint". OSError (full disk, ...) propagates with
    no file left behind. A signal during the write is delivered when it is complete
    (``signals.deferred_signals``).
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
    with deferred_signals():  # a Ctrl-C now is delivered after the save, never inside zipfile
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


def _refuse_a_state_dict(path, where):
    """A .npz of other arrays only (``ig.save(model.state_dict(), path)``): say what it is and
    how to load it, instead of "format missing"."""
    try:
        with open_regular(path, "checkpoint") as f, zipfile.ZipFile(f) as z:
            names = [n[:-4] if n.endswith(".npy") else n for n in z.namelist()]
    except (OSError, ValueError, zipfile.BadZipFile):
        return
    if names:
        raise CheckpointError(
            f"{where}: holds {len(names)} arrays ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}), not a trainer checkpoint (no 'format' entry): "
            "a state dict written with ig.save? Load it into the network it came from with "
            "model.load_state_dict(ig.load(path)); resuming, "
            "evaluating and predicting take a model-NNNN.npz written by the trainer")


def _integer(lo, hi):
    """A checker: a 0-d integer array in lo..hi -> int."""
    def check(v, fail, got):
        if v.shape != () or v.dtype.kind not in "iu" or not lo <= int(v) <= hi:
            fail(f"must be an integer in {lo}..{hi}, got {v!r}")
        return int(v)
    return check


def _json(kind):
    """A checker: a 0-d unicode array holding JSON of type ``kind`` -> the decoded value."""
    def check(v, fail, got):
        if v.shape != () or v.dtype.kind != "U":
            fail("must be a JSON text")
        try:
            value = json.loads(str(v))
        except ValueError as e:
            fail(f"is not valid JSON ({e})")
        if not isinstance(value, kind):
            fail(f"must be a JSON {kind.__name__}, got {type(value).__name__}")
        return value
    return check


def _rng_state(v, fail, got):
    state = _json(dict)(v, fail, got)
    try:  # the only way to know a bit-generator state is valid is to set one
        bit_generator = getattr(np.random, str(state.get("bit_generator")))
        if not (isinstance(bit_generator, type) and issubclass(bit_generator, np.random.BitGenerator)):
            raise ValueError(f"unknown bit generator {state.get('bit_generator')!r}")
        bit_generator().state = state
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as e:
        fail(f"is not a NumPy bit-generator state ({type(e).__name__}: {e})")
    return state


def _train_sums(v, fail, got):
    if v.shape != (4,) or v.dtype.kind != "f":
        fail(f"must be 4 floats, got {v.shape} {v.dtype}")
    sums = v.astype(np.float64)
    if not np.isfinite(sums).all() or (sums < 0).any() or sums[1] != int(sums[1]) \
            or sums[2] > sums[1] or sums[3] > sums[1] or sums[2] > sums[3]:
        fail(f"must be [loss sum >= 0, samples, top-1 hits <= top-5 hits <= samples], "
             f"got {sums.tolist()}")
    if got["batch"] == 0 and sums.any():
        fail("must be zero at an epoch boundary (batch 0)")
    return sums


def _history(v, fail, got):
    history = _json(list)(v, fail, got)
    if len(history) != got["epoch"]:
        fail(f"has {len(history)} records for {got['epoch']} completed epochs")
    for i, r in enumerate(history):
        if not isinstance(r, dict) or r.get("epoch") != i:
            fail(f"record {i} must be a JSON object with epoch {i}")
        for k in _RECORD_NUMBERS:
            if k in r and (isinstance(r[k], bool) or not isinstance(r[k], (int, float))
                           or not math.isfinite(r[k]) or r[k] < 0):
                fail(f"record {i}: {k} must be a finite number >= 0, got {r[k]!r}")
    return history


def _args(v, fail, got):
    args = _json(dict)(v, fail, got)
    try:
        check_options({k: x for k, x in args.items() if k != "lr_steps" or isinstance(x, list)},
                      where=f"checkpoint {got['path']}: field 'args': ")
    except OptionError as e:
        raise CheckpointError(str(e)) from None
    return args


# The scalar fields: (name, checker(array, fail, fields read so far) -> decoded value), read in
# this order because later checks read earlier fields (train_sums the batch, history the epoch).
_FIELDS = (("epoch", _integer(0, 100_000)), ("batch", _integer(0, 1 << 40)),
           ("rng_state", _rng_state), ("train_sums", _train_sums), ("history", _history),
           ("args", _args))


def load_checkpoint(path):
    """Read and check a checkpoint file; raise ``CheckpointError`` naming the file and the field."""
    path = Path(path)
    entries = _read_entries(path)
    where = f"checkpoint {path}"
    got = {"path": path}
    for key, check in _FIELDS:
        def fail(problem, key=key):
            raise CheckpointError(f"{where}: field {key!r} {problem}")
        got[key] = check(entries[key], fail, got)
    model_state = {k[6:]: v for k, v in entries.items() if k.startswith("model/")}
    if not model_state:
        raise CheckpointError(f"{where}: field 'model/' is empty: no weights stored")
    optimizer_state = {k[10:]: v for k, v in entries.items() if k.startswith("optimizer/")}
    lr = optimizer_state.get("lr")
    if lr is not None and (lr.shape != () or lr.dtype.kind != "f" or not 0 < float(lr) < 1e3):
        raise CheckpointError(f"{where}: field 'optimizer/lr' must be a positive finite float, "
                              f"got {lr!r}")
    return Checkpoint(model_state=model_state, optimizer_state=optimizer_state, **got,
                      nonfinite=nonfinite_entries(model_state) + [
                          "optimizer/" + k for k in nonfinite_entries(optimizer_state)])


def _read_entries(path):
    """The file's entries, checked for the format and every scalar field; else CheckpointError."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: is a folder; give a .npz file in it")
    try:  # (read_npz opens it through open_regular: a FIFO or device is named as such)
        entries = read_npz(path, _known_member, what="checkpoint")
    except CheckpointError:
        raise
    except SerializationError as e:
        hint = _available_hint(path) if not os.path.lexists(path) else ""
        raise CheckpointError(f"{e}{hint}") from None
    where = f"checkpoint {path}"
    fmt = entries.get("format")
    if fmt is None and not entries:
        _refuse_a_state_dict(path, where)
    if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        shown = str(fmt)[:40] if fmt is not None else "missing"
        raise CheckpointError(f"{where}: format {shown!r}, expected {FORMAT!r} "
                              "(not written by igc_np's trainer?)")
    missing = [k for k in _SCALARS if k not in entries]
    if missing:
        raise CheckpointError(f"{where}: missing entries {missing}")
    return entries


def _available_hint(path):
    """'; in DIR there are: ...-0005.npz, ...-0010.npz' listing checkpoints beside a missing one."""
    stem = path.name.rsplit("-", 1)[0]
    if not path.parent.is_dir():
        return f" (the folder {path.parent} does not exist)"
    try:  # names matched exactly: a prefix may hold glob characters ([, *, ?)
        found = sorted(n for n in os.listdir(path.parent)
                       if n.startswith(stem + "-") and n.endswith(".npz"))
    except OSError:
        found = []
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
# Resuming: the command line that continues a run, and what a resume keeps or changes
# --------------------------------------------------------------------------------------------
def shell_quote(arg):
    """``arg`` (a str, possibly holding undecodable bytes as surrogate escapes, as os.fsdecode
    gives them; or bytes) quoted for a POSIX shell so that pasting it gives the very bytes back.

    Text that is valid UTF-8 gets ``shlex.quote``; anything else bash's ``$'...'`` with ``\\xNN``
    for the bytes that are not printable ASCII (``shlex.quote`` would print ``\\udce9``, which
    names another file once pasted).
    """
    raw = arg if isinstance(arg, bytes) else os.fsencode(arg)
    try:
        text = raw.decode("utf-8")
        if text.isprintable():
            return shlex.quote(text)
    except UnicodeDecodeError:
        pass
    out = []
    for b in raw:
        c = chr(b)
        if c in "\\'":
            out.append("\\" + c)
        elif 0x20 <= b < 0x7F:
            out.append(c)
        else:
            out.append(f"\\x{b:02x}")
    return "$'" + "".join(out) + "'"


def shell_join(args):
    """A command line (list of str/bytes) as one shell line, each argument ``shell_quote``-d."""
    return " ".join(shell_quote(str(a) if not isinstance(a, (str, bytes)) else a) for a in args)


def default_lr_steps(num_epochs):
    """The trainer's default steps: 1/2, 3/4 and 7/8 of the epochs (as in examples/cifar10_igc.py)."""
    return sorted({int(num_epochs * f) for f in (1 / 2, 3 / 4, 7 / 8)} - {0})


def resume_options(stored, given, skip=(), known=None):
    """Which of a checkpoint's options (``stored``: its ``args``) a resume takes, and one line
    per stored option that the resume keeps although it could matter, or changes.

    given: the options of the command line; skip: never taken (paths, devices); known: the
    option names (others are ignored). Returns (options to fill in, lines to print).

    The learning-rate steps: stored steps that are the defaults of the stored --num-epochs are
    recomputed for a new --num-epochs (they were never chosen, the epoch count was); steps that
    differ from those defaults were given explicitly and are kept. Either way one line says so.
    """
    fill, notes = {}, []
    for key, value in stored.items():
        if key in skip or (known is not None and key not in known):
            continue
        if key in given:
            if given[key] != value and key not in ("lr_steps", "num_epochs"):  # (said below)
                notes.append(f"resume: --{key.replace('_', '-')} {given[key]} (the checkpoint's "
                             f"was {value})")
            continue
        fill[key] = value
    old_n, steps = stored.get("num_epochs"), stored.get("lr_steps")
    new_n = given.get("num_epochs", old_n)
    if "lr_steps" not in given and isinstance(steps, list) and isinstance(new_n, int) \
            and new_n != old_n:
        if isinstance(old_n, int) and steps == default_lr_steps(old_n):
            fill["lr_steps"] = default_lr_steps(new_n)
            notes.append(f"resume: --num-epochs {new_n} (was {old_n}): the default lr steps "
                         f"recomputed as {_steps(fill['lr_steps'])} (were {_steps(steps)})")
        else:
            notes.append(f"resume: --num-epochs {new_n} (was {old_n}): the lr steps "
                         f"{_steps(steps)} given to the run are kept (--lr-steps to change them)")
    elif new_n != old_n:
        notes.append(f"resume: --num-epochs {new_n} (was {old_n})")
    elif "lr_steps" in given and isinstance(steps, list) and given["lr_steps"] != steps:
        notes.append(f"resume: --lr-steps {given['lr_steps']} (the checkpoint's were {_steps(steps)})")
    return fill, notes


def _steps(steps):
    return ",".join(map(str, steps)) or "none"
