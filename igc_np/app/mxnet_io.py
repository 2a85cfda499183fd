"""MXNet's files without MXNet: ``.params`` weights in and out, and RecordIO ``.rec`` / ``.idx`` data.

The reference code ships its five trained ImageNet models as ``<prefix>-symbol.json`` (the graph,
read by ``igc_np.mxnet_graph``) and ``<prefix>-<epoch:04d>.params``, and trains from RecordIO
files. Both formats are read here with the standard library and NumPy only (the layouts are spelled out
below, next to the code that reads them).

    import igc_np as ig
    from igc_np import mxnet_io
    model = ig.nets.imagenet_model("igc_l4m32", weights="seed-0001.params")   # or:
    mxnet_io.load_params(model, "seed-0001.params")
    mxnet_io.save_params(model, "mine-0120.params")       # mx.nd.load() reads it
    model, name = mxnet_io.load_mxnet_checkpoint("resnet_gcwf_noshare_imagenet_d18b4", 120)  # the seed's pair

``.params`` (an NDArray list, all integers little-endian)::

    uint64 0x112, uint64 0 (reserved), uint64 count, count arrays, uint64 count, count names
    name:  uint64 length, bytes                      ('arg:<name>' learned, 'aux:<name>' BN statistics)
    array (MXNet >= 0.9, magic V2 0xF993fac9; V3 0xF993faca in NumPy-shape files; V1 0xF993fac8):
           uint32 magic, int32 storage type (V2/V3 only; 0 = dense), uint32 ndim, int64[ndim] shape,
           int32 device type, int32 device id, int32 type flag, raw data (C order)
    array (MXNet < 0.9, "legacy"): uint32 ndim, uint32[ndim] shape, then as above from device type

An empty array stops after its shape (ndim 0 in V1/V2/legacy; in V3 ndim 0 is a scalar and -1 is
empty). Reading is bounded by the file: every declared count, rank and size is checked against the
bytes that are left before anything is allocated, so a corrupt header is an error, never a huge
allocation. Errors are ``MXNetFormatError`` naming the file, the byte offset and what was wrong.

RecordIO (dmlc-core's format): records of ``uint32 0xced7230a, uint32 (cflag << 29 | length),
length bytes, zero padding to a multiple of 4``. MXNet's writer (igc_np only reads RecordIO)
splits a payload wherever the magic number occurs in it at a 4-aligned position and drops those
4 bytes; the parts carry cflag 1
(start), 2 (middle), 3 (end), and the reader puts the magic back between them. An image record's
payload starts with an IRHeader ``uint32 flag, float32 label, uint64 id, uint64 id2``; when
flag > 0, ``flag`` float32 labels follow it (the label vector). Then the encoded image.
"""
from __future__ import annotations

import math
import os
import struct
import sys
import warnings
from pathlib import Path

import numpy as np

from ..nets import IMAGENET_CONFIGS, imagenet_model
from ..nn import Module
from ..serialization import atomic_write, check_writable_path, open_regular, read_regular
from .data import DatasetError
from .mxnet_graph import identify_graph, num_classes_of_graph

__all__ = ["MXNetFormatError", "read_ndarray_list", "write_ndarray_list", "load_params", "save_params",
           "read_params", "load_mxnet_checkpoint", "load_checkpoint", "RecordIO", "unpack_image_record"]

LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
MAX_NDIM = 32          # MXNet's own limit is far below this; a larger rank means a corrupt header

# MXNet's type flags (mshadow's TypeFlag)
DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f8"), 2: np.dtype("<f2"), 3: np.dtype("u1"),
          4: np.dtype("<i4"), 5: np.dtype("i1"), 6: np.dtype("<i8")}
FLAGS = {dt: flag for flag, dt in DTYPES.items()}


class MXNetFormatError(DatasetError):
    """A ``.params``, ``.rec`` or ``.idx`` file is truncated, corrupt or not of this format (a
    DatasetError, so the trainer reports it as a bad data file; also a ValueError)."""


# ---- the NDArray list format ----------------------------------------------------------------
class _Reader:
    """Bounded little-endian reads from a bytes object; errors name the file and the offset."""

    def __init__(self, data, path):
        self.data, self.path, self.pos = memoryview(data), path, 0

    def left(self):
        return len(self.data) - self.pos

    def fail(self, what, at=None):
        raise MXNetFormatError(f"{self.path}: at byte {self.pos if at is None else at}: {what}")

    def take(self, n, what):
        if n > self.left():
            self.fail(f"truncated: {what} needs {n} bytes, only {self.left()} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt, what):
        size = struct.calcsize(fmt)
        values = struct.unpack("<" + fmt, self.take(size, what))
        return values[0] if len(values) == 1 else values


def _read_array(r, index):
    """One array at r.pos -> np.ndarray (a copy) or None for an empty (none) array."""
    what = f"array {index}"
    start = r.pos
    magic = r.unpack("I", f"{what} header")
    if magic in (V2_MAGIC, V3_MAGIC):
        stype = r.unpack("i", f"{what} storage type")
        if stype != 0:
            r.fail(f"{what}: storage type {stype} (sparse) is not supported; only dense (0) arrays", start)
    if magic in (V1_MAGIC, V2_MAGIC, V3_MAGIC):
        ndim = r.unpack("i", f"{what} ndim")
        if magic == V3_MAGIC and ndim == -1:
            return None
        if not 0 <= ndim <= MAX_NDIM:
            r.fail(f"{what}: ndim {ndim} is not in 0..{MAX_NDIM} (corrupt header)", r.pos - 4)
        shape = r.unpack(f"{ndim}q", f"{what} shape") if ndim else ()
        if magic != V3_MAGIC and ndim == 0:
            return None
    else:  # MXNet < 0.9: the first word is already ndim, the shape is uint32
        ndim = magic
        if ndim > MAX_NDIM:
            r.fail(f"{what}: unknown array magic 0x{magic:08x} (not an MXNet NDArray; expected "
                   f"0x{V2_MAGIC:08x}, 0x{V3_MAGIC:08x}, 0x{V1_MAGIC:08x} or a legacy rank <= {MAX_NDIM})", start)
        if ndim == 0:
            return None
        shape = r.unpack(f"{ndim}I", f"{what} shape")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(d < 0 for d in shape):
        r.fail(f"{what}: negative dimension in shape {shape}")
    nonzero = math.prod(d for d in shape if d)  # what NumPy must represent, even for 0 elements
    if nonzero * 8 > sys.maxsize:
        r.fail(f"{what}: shape {shape} is impossible (its dimensions multiply past 2**63 bytes; "
               "corrupt header)", start)
    r.unpack("ii", f"{what} device")  # where it lived when saved: irrelevant here
    flag = r.unpack("i", f"{what} type flag")
    if flag not in DTYPES:
        r.fail(f"{what}: unknown type flag {flag} (known: "
               f"{', '.join(f'{k} {v.name}' for k, v in DTYPES.items())})", r.pos - 4)
    dtype = DTYPES[flag]
    count = math.prod(shape)
    if count * dtype.itemsize > r.left():  # checked before allocating anything
        r.fail(f"truncated: {what} of shape {shape} {dtype.name} needs {count * dtype.itemsize} bytes, "
               f"only {r.left()} left")
    raw = r.take(count * dtype.itemsize, f"{what} data")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def read_ndarray_list(path):
    """Read an MXNet NDArray list file -> (arrays, names): a list of np.ndarray (None for an empty
    array) and a list of str (empty when the file was saved without names)."""
    path = Path(path)
    try:
        data = read_regular(path, "weights file", None, MXNetFormatError)  # FIFO, /dev/zero: refused
    except MXNetFormatError:
        raise
    except OSError as e:  # a read error of a regular file
        raise MXNetFormatError(f"{path}: cannot read: {e.strerror or e}") from e
    r = _Reader(data, path)
    if len(data) == 0:
        r.fail("empty file (not an MXNet .params file)")
    if len(data) < 8:
        r.fail(f"truncated: {len(data)} bytes, an MXNet .params file starts with a uint64 magic")
    magic = r.unpack("Q", "magic")
    if magic != LIST_MAGIC:
        r.fail(f"magic 0x{magic:x} is not an MXNet NDArray list (0x{LIST_MAGIC:x}): not a .params file", 0)
    r.unpack("Q", "reserved word")
    count = r.unpack("Q", "array count")
    if count > r.left() // 4:  # every array takes at least 4 bytes
        r.fail(f"declared {count} arrays, but only {r.left()} bytes follow", r.pos - 8)
    arrays = [_read_array(r, i) for i in range(count)]
    n_names = r.unpack("Q", "name count")
    if n_names > r.left() // 8:
        r.fail(f"declared {n_names} names, but only {r.left()} bytes follow", r.pos - 8)
    names = []
    for i in range(n_names):
        length = r.unpack("Q", f"length of name {i}")
        raw = r.take(length, f"name {i} ({length} bytes)")
        try:
            names.append(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError:
            r.fail(f"name {i} is not UTF-8 text", r.pos - length)
    if names and len(names) != len(arrays):
        r.fail(f"{len(arrays)} arrays but {len(names)} names: the file is inconsistent")
    if r.left():
        r.fail(f"{r.left()} unexpected bytes after the name list")
    return arrays, names


def write_ndarray_list(path, arrays, names):
    """Write arrays (np.ndarray) and names as an MXNet NDArray list (V2 arrays, dense, 'cpu(0)'),
    atomically: a unique temporary file in the same folder, then os.replace."""
    if len(arrays) != len(names):
        raise ValueError(f"write_ndarray_list: {len(arrays)} arrays but {len(names)} names")
    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for name, a in zip(names, arrays):
        a = np.asarray(a)
        if a.dtype.newbyteorder("<") not in FLAGS:
            raise ValueError(f"write_ndarray_list: {name}: dtype {a.dtype} has no MXNet type flag "
                             f"(supported: {', '.join(sorted(d.name for d in FLAGS))})")
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        if a.ndim == 0:
            a = a.reshape(1)  # a V2 array of rank 0 means 'no array'
        parts.append(struct.pack(f"<Iii{a.ndim}q", V2_MAGIC, 0, a.ndim, *a.shape))
        parts.append(struct.pack("<iii", 1, 0, FLAGS[a.dtype]))  # device type 1 = cpu, id 0
        parts.append(a.tobytes())
    parts.append(struct.pack("<Q", len(names)))
    for name in names:
        raw = name.encode("utf-8")
        parts.append(struct.pack("<Q", len(raw)) + raw)
    _atomic_write(Path(path), b"".join(parts))


def _atomic_write(path, payload):
    """The bytes appear complete at `path` or not at all (serialization.atomic_write)."""
    check_writable_path(path, "save_params")
    with atomic_write(path) as f:
        f.write(payload)


# ---- model weights ------------------------------------------------------------------------------
def read_params(path):
    """An MXNet .params file -> (arg, aux): two dicts name -> np.ndarray, the 'arg:' and 'aux:'
    entries with their prefix removed (names without a prefix count as 'arg')."""
    arrays, names = read_ndarray_list(path)
    if arrays and not names:
        raise MXNetFormatError(f"{path}: {len(arrays)} arrays but no names: a .params file names every array")
    arg, aux = {}, {}
    for name, a in zip(names, arrays):
        kind, _, bare = name.partition(":") if ":" in name else ("arg", "", name)
        if kind not in ("arg", "aux"):
            raise MXNetFormatError(f"{path}: array name {name!r}: prefix {kind!r} is neither 'arg:' nor 'aux:'")
        target = arg if kind == "arg" else aux
        if bare in arg or bare in aux:
            raise MXNetFormatError(f"{path}: the name {bare!r} occurs twice")
        if a is None:
            raise MXNetFormatError(f"{path}: {name!r} is an empty (none) array")
        target[bare] = a
    return arg, aux


def _check_model_arg(op, model, path):
    """(model, path) in that order: a swapped call fails here with a message, not deep inside."""
    if not isinstance(model, Module):
        swapped = " (the arguments are swapped?)" if isinstance(path, Module) else ""
        raise TypeError(f"{op}(model, path): model must be an igc_np Module, got "
                        f"{type(model).__name__}{swapped}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{op}(model, path): path must be a str or Path, got {type(path).__name__}")


def _model_targets(model):
    """name -> (kind, shape, dtype) of every learned parameter ('arg') and BN statistic ('aux')."""
    targets = {n: ("arg", tuple(p.shape), np.dtype(p.dtype)) for n, p in model.named_parameters()}
    for n, m, key in model.named_buffers():
        buf = getattr(m, key)
        targets[n] = ("aux", tuple(buf.shape), np.dtype(buf.dtype))
    return targets


def load_params(model, path, strict=True):
    """Set every parameter and BN moving statistic of ``model`` from an MXNet ``.params`` file, by
    the reference names (``g0_conv_weight``, ``g1_b1_conv1_bn_moving_mean``, ...). Returns model.

    Everything is checked before anything is copied, so after an error the model is unchanged:
    names (strict: a missing or unexpected name is an error that lists them; strict=False loads
    the names both have), 'arg:' vs 'aux:', shapes (a model of another configuration fails here),
    dtypes (float16/float64 are cast to the model's float32 with a warning; integers refused).
    """
    _check_model_arg("load_params", model, path)
    arg, aux = read_params(path)
    stored = {**{n: ("arg", a) for n, a in arg.items()}, **{n: ("aux", a) for n, a in aux.items()}}
    targets = _model_targets(model)
    missing = [n for n in targets if n not in stored]
    unexpected = [n for n in stored if n not in targets]
    if strict and (missing or unexpected):
        raise MXNetFormatError(
            f"{path}: does not match {_model_label(model)}: "
            f"{len(missing)} missing ({_names(missing)}), {len(unexpected)} unexpected ({_names(unexpected)})"
            f"; a model of another configuration?{_released_hint(arg)}")
    state, cast, wrong_shape = {}, set(), []
    for name, (kind, a) in stored.items():
        if name not in targets:
            continue
        want_kind, want_shape, want_dtype = targets[name]
        if kind != want_kind:
            raise MXNetFormatError(f"{path}: {name!r} is stored as '{kind}:' but it is "
                                   f"{'a learned parameter' if want_kind == 'arg' else 'a BN statistic'} "
                                   f"('{want_kind}:')")
        if a.shape != want_shape:
            wrong_shape.append(f"{name} {a.shape} in the file, {want_shape} in the model")
            continue
        if a.dtype.kind != "f":
            raise MXNetFormatError(f"{path}: {name!r} is stored as {a.dtype.name}; weights must be floating point")
        if a.dtype != want_dtype:
            cast.add(a.dtype.name)
        state[name] = a
    if wrong_shape:
        raise MXNetFormatError(f"{path}: {len(wrong_shape)} arrays do not fit {_model_label(model)} "
                               f"(a model of another configuration?{_released_hint(arg)}): "
                               f"{_names(wrong_shape, 3)}")
    if cast:
        warnings.warn(f"{path}: {', '.join(sorted(cast))} arrays cast to the model's dtype "
                      f"({', '.join(sorted({t[2].name for t in targets.values()}))})", stacklevel=2)
    model.load_state_dict(state, strict=False)  # names, shapes checked above: this cannot fail half-way
    return model


def save_params(model, path):
    """Write ``model``'s parameters ('arg:<name>') and BN statistics ('aux:<name>') as an MXNet
    ``.params`` file (what ``mx.nd.load`` and the seed's ``mx.model.load_checkpoint`` read).
    Atomic: a reader never sees a half-written file."""
    _check_model_arg("save_params", model, path)
    targets = _model_targets(model)
    state = model.state_dict()
    names = [f"{targets[n][0]}:{n}" for n in state]
    unnamed = [n for n in state if "." in n]
    if unnamed:
        warnings.warn(f"save_params: {len(unnamed)} arrays have no reference name ({_names(unnamed)}); "
                      f"they are saved under their attribute paths", stacklevel=2)
    write_ndarray_list(path, list(state.values()), names)


def load_mxnet_checkpoint(prefix, epoch):
    """What MXNet's ``mx.model.load_checkpoint(prefix, epoch)`` gives the seed's users, as an igc_np
    model: ``<prefix>-symbol.json`` says which released model it is (mxnet_graph.identify_graph),
    ``<prefix>-<epoch:04d>.params`` holds its weights. Returns (model, name)."""
    symbol = Path(f"{prefix}-symbol.json")
    params = Path(f"{prefix}-{int(epoch):04d}.params")
    for path in (symbol, params):
        if not os.path.lexists(path):  # (a FIFO or device under the name is refused by its reader)
            raise FileNotFoundError(f"load_mxnet_checkpoint: {path} does not exist")
    name = identify_graph(symbol)
    return load_released(name, params, num_classes=num_classes_of_graph(symbol)), name


# The old name, kept for code that imports it (igc_np's own trainer checkpoints are
# app.checkpoint.load_checkpoint; this one reads MXNet's prefix/epoch pair).
load_checkpoint = load_mxnet_checkpoint


def _released_hint(arg):
    """' The file looks like <name>' when its stem conv is that of one of the five released
    ImageNet models (their stem widths C0 all differ), else ''."""
    for stem_name in ("g0_conv_weight", "g0_weight"):
        shape = getattr(arg.get(stem_name), "shape", None)
        if shape is not None and len(shape) == 4 and shape[1:] == (3, 7, 7):
            for name, (C0, _, Ls) in IMAGENET_CONFIGS.items():
                if C0 == shape[0] and (Ls is not None) == (stem_name == "g0_conv_weight"):
                    return f" The file's stem is that of {name!r}: imagenet_model({name!r}, weights=...)"
    return ""


def _names(names, k=5):
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "") if names else "none"


def _model_label(model):
    name = getattr(model, "name", "")
    return f"the model {name!r}" if name else f"the {type(model).__name__}"


# ---- RecordIO ---------------------------------------------------------------------------------
RECORD_MAGIC = 0xCED7230A
_LENGTH_MASK = (1 << 29) - 1
IRHEADER = struct.Struct("<IfQQ")


class RecordIO:
    """Read a RecordIO file: ``len(rec)``, ``rec[i] -> (label, payload bytes)``, iteration.

    With an ``.idx`` (``<key>\\t<offset>`` lines) record i is the i-th line's offset (random access,
    one seek). Without one, the records are read front to back; ``len()`` and ``rec[i]`` then first
    walk the record headers once (seeking over the payloads) to build the offsets. The label is
    the IRHeader's float label, or a float32 vector when the header's flag is > 0; the payload is
    what follows the header (an encoded image). ``read_raw(i)`` gives the whole record instead.
    The file is opened per call (safe to share between threads and worker processes).
    """

    def __init__(self, rec_path, idx_path=None):
        if isinstance(idx_path, str) and idx_path in ("r", "w"):  # mx.recordio.MXRecordIO(uri, flag)
            raise ValueError(f"RecordIO({str(rec_path)!r}, {idx_path!r}): the second argument is the "
                             "path of the .idx, not MXNet's 'r'/'w' flag; this class only reads: "
                             "RecordIO(rec) or RecordIO(rec, idx)")
        self.path = Path(rec_path)
        with self._open() as f:  # a folder, FIFO, device or missing file is refused here, named
            self.size = os.fstat(f.fileno()).st_size
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self.keys, self._offsets = None, None
        if self.idx_path is not None:
            self.keys, self._offsets = self._read_idx()

    def _open(self):
        """The .rec opened for reading, refused unless a regular file (serialization.open_regular)."""
        return open_regular(self.path, "RecordIO file", MXNetFormatError)

    def _read_idx(self):
        keys, offsets = [], []
        # a line per record, each at most ~40 bytes: bounded by the .rec's record count
        limit = 64 * (self.size // 8 + 1)
        try:
            lines = read_regular(self.idx_path, "RecordIO index", limit, MXNetFormatError).decode().splitlines()
        except MXNetFormatError:
            raise
        except (OSError, UnicodeDecodeError) as e:
            raise MXNetFormatError(f"{self.idx_path}: cannot read the index: {e}") from e
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                key, off = int(fields[0]), int(fields[1])
            except (IndexError, ValueError):
                raise MXNetFormatError(f"{self.idx_path}: line {n}: {line!r} is not '<key>\\t<offset>'") from None
            if not 0 <= off < self.size:
                raise MXNetFormatError(f"{self.idx_path}: line {n}: offset {off} is outside {self.path} "
                                       f"({self.size} bytes)")
            keys.append(key)
            offsets.append(off)
        return keys, offsets

    def _scan(self):
        """Offsets of every record's first part, walking the headers only."""
        offsets = []
        with self._open() as f:
            pos, in_record = 0, False
            while pos < self.size:
                cflag, length = self._header(f, pos)
                if not in_record:
                    offsets.append(pos)
                in_record = cflag in (1, 2)
                pos += 8 + (length + 3) // 4 * 4
            if in_record:
                raise MXNetFormatError(f"{self.path}: at byte {pos}: truncated: the last record has no end part")
        return offsets

    def _header(self, f, pos):
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            raise MXNetFormatError(f"{self.path}: at byte {pos}: truncated record header "
                                   f"({len(head)} of 8 bytes)")
        magic, word = struct.unpack("<II", head)
        if magic != RECORD_MAGIC:
            raise MXNetFormatError(f"{self.path}: at byte {pos}: bad record magic 0x{magic:08x} "
                                   f"(expected 0x{RECORD_MAGIC:08x}): corrupt file or wrong offset")
        length = word & _LENGTH_MASK
        if pos + 8 + length > self.size:
            raise MXNetFormatError(f"{self.path}: at byte {pos}: truncated record: {length} bytes declared, "
                                   f"{self.size - pos - 8} left in the file")
        return word >> 29, length

    def _read_at(self, f, pos):
        """The record starting at pos (parts joined) -> (bytes, offset after it)."""
        parts, start = [], pos
        while True:
            cflag, length = self._header(f, pos)
            if (cflag in (2, 3)) != bool(parts):
                raise MXNetFormatError(f"{self.path}: at byte {pos}: continuation flag {cflag} out of order "
                                       f"in the record starting at byte {start}")
            parts.append(f.read(length))
            pos += 8 + (length + 3) // 4 * 4
            if cflag in (0, 3):
                break
        # the writer cut the payload at each aligned magic number and dropped it: put it back
        return struct.pack("<I", RECORD_MAGIC).join(parts), pos

    @property
    def offsets(self):
        if self._offsets is None:
            self._offsets = self._scan()
        return self._offsets

    def __len__(self):
        return len(self.offsets)

    def read_raw(self, i):
        """Record i's whole payload (IRHeader included), parts joined."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: record {i} out of range ({n} records)")
        with self._open() as f:
            return self._read_at(f, self.offsets[i])[0]

    def __getitem__(self, i):
        return unpack_image_record(self.read_raw(i), where=f"{self.path} record {i}")

    def __iter__(self):
        """Sequential reading (no index needed)."""
        with self._open() as f:
            pos = 0
            while pos < self.size:
                raw, end = self._read_at(f, pos)
                yield unpack_image_record(raw, where=f"{self.path} record at byte {pos}")
                pos = end

    def __repr__(self):
        return f"RecordIO({str(self.path)!r}, {'indexed' if self.idx_path else 'sequential'})"


def unpack_image_record(raw, where="record"):
    """An image record's payload -> (label, image bytes): label a float, or a float32 vector when
    the IRHeader's flag gives the number of labels stored after it."""
    if len(raw) < IRHEADER.size:
        raise MXNetFormatError(f"{where}: {len(raw)} bytes, shorter than the {IRHEADER.size}-byte IRHeader")
    flag, label, _id, _id2 = IRHEADER.unpack_from(raw)
    start = IRHEADER.size
    if flag > 0:
        if start + 4 * flag > len(raw):
            raise MXNetFormatError(f"{where}: IRHeader declares {flag} labels, the record holds "
                                   f"{(len(raw) - start) // 4}")
        label = np.frombuffer(raw, "<f4", flag, start).astype(np.float32)
        start += 4 * flag
    return label, bytes(raw[start:])


def load_released(name, path, num_classes=1000):
    """``nets.imagenet_model(name, num_classes)`` with the weights of the MXNet ``.params`` file
    ``path`` loaded into it by ``load_params`` (strict: every parameter and BN statistic)."""
    return load_params(imagenet_model(name, num_classes=num_classes), path)
