"""Data sets, download, batching and augmentation for the IGC experiments.

Everything here returns plain NumPy arrays: images as ``(N, 3, H, W)`` uint8 on the 0..255 scale,
labels as ``(N,)`` int64. The trainer moves batches to the GPU itself.

Data sets (``load_dataset(name)``)
----------------------------------
``cifar10`` / ``cifar100``
    60,000 colour images of 32x32 (50,000 train, 10,000 test). Two official layouts are read:

    * the *binary* version: ``cifar-10-batches-bin/data_batch_1.bin .. data_batch_5.bin`` and
      ``test_batch.bin``, each a sequence of records ``<1 label byte><3072 pixel bytes>``; and
      ``cifar-100-binary/train.bin, test.bin`` with records
      ``<coarse byte><fine byte><3072 pixels>``
      (we use the fine label, 100 classes, as the paper does).
    * the *python* version: ``cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch`` and
      ``cifar-100-python/train, test``: Python 2 pickles of a dict with ``data`` ((N, 3072) uint8)
      and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100).

    The 3072 pixel bytes are the red plane, then green, then blue, each 32x32 row-major, so a plain
    ``reshape(N, 3, 32, 32)`` gives NCHW. ``data_dir`` may be the parent folder or the batches
    folder itself; when both layouts are present the binary one wins (it needs no unpickling).

``svhn``
    Street View House Numbers, the official ``train_32x32.mat``, ``extra_32x32.mat`` and
    ``test_32x32.mat`` (MATLAB v5, read with ``scipy.io.loadmat``; scipy is optional). As in the
    reference code, training uses train + extra (604,388 images); test has 26,032. ``X`` is stored
    (32, 32, 3, N) and is transposed to (N, 3, 32, 32); the digit 0 is stored as label 10.

``digits``
    The 1,797 8x8 handwritten digits shipped inside scikit-learn (no download), values 0..16 scaled
    to 0..255 and replicated to 3 channels so that the same 3-channel stem works. We keep 8x8: the
    teaching example must train in minutes on a laptop CPU, and upsampling adds no information.
    A fixed permutation (seed 0) splits it into 1,437 train and 360 test images; mean and std are
    computed from the training split. No augmentation (mirroring a digit changes its meaning).

Pickle policy
-------------
Unpickling runs code named in the file, so a downloaded pickle could call ``os.system``. Our
unpickler (``_RestrictedUnpickler``) refuses every global except the three that rebuild a NumPy
array: ``numpy.core.multiarray._reconstruct`` (or its NumPy 2 name ``numpy._core.multiarray``),
``numpy.ndarray`` and ``numpy.dtype``. These only allocate an array or a dtype and fill it from
bytes; they cannot call anything else, so a pickle can build containers, bytes, str, numbers and
arrays and nothing more. Every other global (``os.system``, ``builtins.eval``, ...) raises
``DatasetError`` before it is looked up. Files are loaded with ``encoding='bytes'`` because the
CIFAR pickles come from Python 2 (dict keys arrive as ``b'data'``).

Pickles written by Python 3 rebuild arrays with two more callables, admitted in checked form:
protocol 2 stores bytes as ``_codecs.encode(text, 'latin1')`` (admitted: a str and that one
encoding, giving bytes), protocol 5 stores array data as
``numpy._core.numeric._frombuffer(buffer, dtype, shape, order)`` (admitted: a bytes-like buffer,
a dtype without Python objects, a tuple of sizes matching the buffer).

Download
--------
``download=True`` fetches the official archive with urllib, verifies its MD5, and unpacks it into a
temporary folder beside the target which is renamed into place only when complete, so an
interrupted run never leaves a half-extracted data set. Tar members with absolute paths, ``..``
components, links or device files are refused.

Batching
--------
``iterate_batches`` yields normalised float batches ``(x - mean) / std``. CIFAR augmentation (the
reference's): pad 4 pixels filled with the per-channel mean (0 after normalisation), take a random
HxW crop and mirror it horizontally with probability 1/2. All randomness comes from a
``numpy.random.Generator`` passed in; its state is ``rng.bit_generator.state`` (a dict that can be
saved in a checkpoint and assigned back), so a resumed run draws the same batches.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

import numpy as np

from ..serialization import describe_os_error, open_regular, read_regular

__all__ = ["Dataset", "DatasetError", "DatasetNotFoundError", "load_dataset", "iterate_batches",
           "check_data_dir", "DATASETS", "DEFAULT_DATA_DIR"]

#: Where data sets live unless ``data_dir`` is given: ``$IGC_NP_DATA`` or ``./data``.
DEFAULT_DATA_DIR = os.environ.get("IGC_NP_DATA", "data")

DATASETS = ("cifar10", "cifar100", "svhn", "digits", "imagenet")


class DatasetError(ValueError, OSError):
    """A data file is missing, truncated or corrupt; the message names the file and the problem."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The data set (or one of its files) is not on disk."""


@dataclass(repr=False)
class Dataset:
    """A loaded data set. Images ``(N, 3, H, W)`` uint8 (0..255), labels ``(N,)`` int64.

    ``mean`` and ``std`` are per-channel on the 0..255 scale; ``augment`` says whether the reference
    trains this data set with pad/crop/mirror augmentation.
    """
    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    mean: tuple
    std: tuple
    image_size: int
    augment: bool = False

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.train_x.shape}, test={self.test_x.shape}, "
                f"classes={self.num_classes}, image_size={self.image_size}, "
                f"augment={self.augment})")


# --------------------------------------------------------------------------------------------
# The catalogue: file names, URLs, checksums and normalisation constants
# (the reference code's: docs/reference_protocol.md)
# --------------------------------------------------------------------------------------------
CIFAR = {
    "cifar10": dict(
        title="CIFAR-10", num_classes=10,
        py_dir="cifar-10-batches-py", bin_dir="cifar-10-batches-bin",
        py_train=[f"data_batch_{i}" for i in range(1, 6)], py_test=["test_batch"],
        bin_train=[f"data_batch_{i}.bin" for i in range(1, 6)], bin_test=["test_batch.bin"],
        label_key="labels", header_bytes=1,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        mean=(125.307, 122.950, 113.865), std=(62.993, 62.089, 66.705)),
    "cifar100": dict(
        title="CIFAR-100", num_classes=100,
        py_dir="cifar-100-python", bin_dir="cifar-100-binary",
        py_train=["train"], py_test=["test"],
        bin_train=["train.bin"], bin_test=["test.bin"],
        label_key="fine_labels", header_bytes=2,   # coarse byte, then fine byte
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        mean=(129.304, 124.070, 112.434), std=(68.170, 65.392, 70.418)),
}

SVHN = dict(
    title="SVHN", folder="svhn", num_classes=10,
    files={  # split -> (file name, md5)
        "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        "test": ("test_32x32.mat", "eb5a983be6a315427106f1b24d19d3d4"),
        "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
    },
    url="http://ufldl.stanford.edu/housenumbers/{}",
    mean=(111.609, 113.161, 120.565), std=(50.498, 51.259, 50.244))

DIGITS_TEST_SIZE = 360     # 1,797 = 1,437 train + 360 test
DIGITS_SPLIT_SEED = 0

IMAGE_BYTES = 3 * 32 * 32  # one CIFAR image, planar RGB


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                 subset: int | None = None) -> Dataset:
    """Load ``name`` in {cifar10, cifar100, svhn, digits} as a ``Dataset``; ``imagenet`` gives an
    ``igc_np.imagenet.ImageNet`` (streamed batches; data_dir or data_dir/imagenet holds its files).

    ``data_dir`` defaults to ``DEFAULT_DATA_DIR``; ``download=True`` fetches missing official files;
    ``subset=N`` keeps the first N training images (all if there are fewer); the test set is
    always complete.
    """
    name = name.lower()
    if subset is not None and (int(subset) != subset or subset < 1):
        raise ValueError(f"subset must be a positive integer, got {subset!r}")
    root = check_data_dir(Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser())
    if name in CIFAR:
        ds = _load_cifar(name, root, download)
    elif name == "svhn":
        ds = _load_svhn(root, download, subset)
    elif name == "digits":
        ds = _load_digits()
    elif name == "imagenet":  # JPEGs read from disk batch by batch, not an in-memory Dataset
        raise ValueError("imagenet is streamed from disk, not loaded into memory: use "
                         "igc_np.app.imagenet.load_imagenet(imagenet_dir(data_dir)), or "
                         "igc_np.data.load_dataset('imagenet'), which dispatches to it")
    else:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if subset is not None and subset < len(ds.train_x):
        # copy, so that the full array can be freed
        ds.train_x = ds.train_x[:subset].copy()
        ds.train_y = ds.train_y[:subset].copy()
    for split, images in (("training", ds.train_x), ("test", ds.test_x)):
        if len(images) == 0:  # a run would report 0.0000 and save a checkpoint of nothing
            raise DatasetError(f"{name}: the {split} split under {root} has no images")
    return ds


def check_data_dir(root: Path) -> Path:
    """``root`` if it is a folder or does not exist yet (the not-found messages come later);
    DatasetError naming it when it is a file, a link loop, a path too long, unreadable..."""
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        return root
    except OSError as e:
        raise DatasetError(f"data folder {root}: {describe_os_error(e)}") from None
    except ValueError as e:  # a NUL byte
        raise DatasetError(f"data folder {str(root)!r}: not a usable path ({e})") from None
    if not stat.S_ISDIR(mode):
        raise DatasetError(f"data folder {root}: is a file, not a folder (give the folder that "
                           "holds the data set)")
    return root


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------------------------
def _load_cifar(name: str, root: Path, download: bool) -> Dataset:
    spec = CIFAR[name]
    found = _find_cifar(spec, root)
    if found is None and download:
        _download_and_extract(spec["url"], spec["md5"], root, spec["py_dir"])
        found = _find_cifar(spec, root)
    if found is None:
        raise DatasetNotFoundError(_cifar_missing_message(spec, root))
    folder, layout = found
    read = _read_cifar_binary if layout == "bin" else _read_cifar_pickle
    parts = {split: [read(folder / f, spec) for f in spec[f"{layout}_{split}"]]
             for split in ("train", "test")}
    train_x, train_y = (np.concatenate(a) for a in zip(*parts["train"]))
    test_x, test_y = (np.concatenate(a) for a in zip(*parts["test"]))
    return Dataset(name, train_x, train_y, test_x, test_y, spec["num_classes"],
                   spec["mean"], spec["std"], image_size=32, augment=True)


def _find_cifar(spec: dict, root: Path) -> tuple[Path, str] | None:
    """The folder and layout ('bin' or 'py') holding a complete copy, or None if there is none.

    A folder with only some of the files of a layout is an error, not "absent": the user should
    learn which file is missing rather than be told to download everything again.
    """
    candidates = [root / spec["bin_dir"], root / spec["py_dir"], root]
    partial = None
    for layout in ("bin", "py"):          # binary first: it needs no unpickling
        files = spec[f"{layout}_train"] + spec[f"{layout}_test"]
        for folder in candidates:
            # exists(), not is_file(): a FIFO or device under the name is refused by the reader
            # naming it, not reported as missing
            missing = [folder / f for f in files if not (folder / f).exists()]
            if not missing:
                return folder, layout
            if len(missing) < len(files) and partial is None:
                partial = (folder, missing)
    if partial is not None:
        folder, missing = partial
        raise DatasetNotFoundError(f"{spec['title']} in {folder} is incomplete: missing "
                                   + ", ".join(map(str, missing)))
    return None


def _cifar_missing_message(spec: dict, root: Path) -> str:
    py = ", ".join(spec["py_train"] + spec["py_test"])
    bn = ", ".join(spec["bin_train"] + spec["bin_test"])
    return (f"{spec['title']} not found under {root}. Expected either\n"
            f"  {root / spec['py_dir']}/{{{py}}}  (python version) or\n"
            f"  {root / spec['bin_dir']}/{{{bn}}}  (binary version).\n"
            f"Pass --download (load_dataset(..., download=True)), or fetch {spec['url']} "
            f"yourself and unpack it into {root}.")


def _read_cifar_binary(path: Path, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """One .bin file -> images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    head = spec["header_bytes"]
    record = head + IMAGE_BYTES
    where = f"{path.parent.name}/{path.name}"
    # at most a whole data set of records (60,000): a bigger file is not one of these
    raw = np.frombuffer(read_regular(path, where, 60_000 * record, DatasetError), np.uint8)
    if raw.size == 0 or raw.size % record:
        raise DatasetError(f"{where}: {raw.size} bytes, expected a non-zero multiple of {record} "
                           f"(truncated or not a {spec['title']} binary file)")
    rows = raw.reshape(-1, record)
    if head == 2:  # CIFAR-100 also stores the coarse label (20 super-classes): check it too
        _check_labels(rows[:, 0], 20, where + " (coarse labels)")
    y = rows[:, head - 1].astype(np.int64)
    _check_labels(y, spec["num_classes"], where)
    x = rows[:, head:].reshape(-1, 3, 32, 32).copy()
    return x, y


def _read_cifar_pickle(path: Path, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """One python-version batch -> images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    where = f"{path.parent.name}/{path.name}"
    batch = _safe_unpickle(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"{where}: expected a pickled dict, got {type(batch).__name__}")
    data = _get_key(batch, "data", where)
    if isinstance(data, np.ndarray):
        data = data.view(np.ndarray)  # the unpickler's checked subclass -> a plain array (a view)
    labels = _get_key(batch, spec["label_key"], where)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == IMAGE_BYTES and len(data) > 0):
        shape = getattr(data, "shape", None)
        raise DatasetError(f"{where}: 'data' should be a (N, {IMAGE_BYTES}) uint8 array, got "
                           f"{type(data).__name__} {shape} {getattr(data, 'dtype', '')}")
    y = _integer_labels(labels, where)
    if y.shape != (len(data),):
        raise DatasetError(f"{where}: {y.size} labels for {len(data)} images")
    _check_labels(y, spec["num_classes"], where)
    return data.reshape(-1, 3, 32, 32).copy(), y


def _get_key(batch: dict, key: str, where: str):
    # Python 2 pickles loaded with encoding='bytes' have bytes keys; accept str keys as well
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DatasetError(f"{where}: no {key!r} entry (keys: {sorted(map(repr, batch))})")


def _integer_labels(labels, where: str) -> np.ndarray:
    """Labels as int64; floats only when they are whole numbers (never silently truncated)."""
    try:
        raw = np.asarray(labels)
        if raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw)):
            raw = raw.astype(np.int64)  # e.g. MATLAB or MXNet files store labels as floats
        if raw.dtype.kind not in "iub":
            bad = raw.reshape(-1)[:3].tolist() if raw.size else []
            raise TypeError(f"dtype {raw.dtype}, first values {bad}")
        return raw.astype(np.int64).reshape(-1) if raw.ndim > 1 else raw.astype(np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DatasetError(f"{where}: labels must be whole numbers ({e})") from None


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(f"{where}: wrong label range {y.min()}..{y.max()}, "
                           f"expected 0..{num_classes - 1}")


# ---- restricted unpickling ------------------------------------------------------------------
# The only callables a pickle may name: they rebuild an ndarray from (shape, dtype, bytes), each
# in checked form. Every array a pickle builds is charged to a budget of bytes proportional to
# the file's size (an array read from a file cannot hold more data than the file), so a pickle
# declaring a 10**12-element array is refused before anything is allocated.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
ALLOC_SLACK = 1 << 20     # bytes any pickle may allocate beyond twice its own size (tiny arrays)


class _PickleBudget:
    """Bytes left for the arrays (and bytes) one pickle may build."""

    def __init__(self, file_size):
        self.left = 2 * file_size + ALLOC_SLACK

    def charge(self, nbytes, what):
        if nbytes > self.left:
            raise pickle.UnpicklingError(f"{what} needs {nbytes} bytes, more than the file can "
                                         f"hold ({self.left} left of its budget): corrupt or hostile")
        self.left -= nbytes


def _array_bytes(shape, dtype, what):
    """shape * itemsize of a plain (object-free) dtype, refusing anything else."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing {what} with dtype {dtype!r} (no Python objects)")
    shape = (shape,) if isinstance(shape, int) else shape
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise pickle.UnpicklingError(f"refusing {what} with shape {shape!r}")
    count = 1
    for n in shape:  # Python ints: no overflow
        count *= n
    return count * dtype.itemsize


class _PickledArray(np.ndarray):
    """What ``_reconstruct`` builds while unpickling: its ``__setstate__`` (pickle's BUILD) checks
    the state's shape, dtype and bytes against the budget before NumPy sees them. Readers take a
    plain view of it (``.view(np.ndarray)``)."""

    _budget = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("refusing an ndarray state that is not a 4- or 5-tuple")
        shape, dtype, _fortran, raw = state[-4:]
        nbytes = _array_bytes(shape, dtype, "an ndarray")
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != nbytes:
            raise pickle.UnpicklingError(f"ndarray state: {len(raw) if isinstance(raw, (bytes, bytearray)) else type(raw).__name__} "
                                         f"bytes of data for shape {shape} {dtype} ({nbytes} bytes)")
        self._budget.charge(nbytes, f"an ndarray of shape {shape} {dtype}")
        super().__setstate__(state)


def _restricted_globals(budget):
    """(module, name) -> callable for one unpickler, every one charging ``budget``."""
    array_type = type("_PickledArray", (_PickledArray,), {"_budget": budget})

    def ndarray(shape, dtype=float, *args, **kwargs):
        if args or kwargs:
            raise pickle.UnpicklingError("refusing numpy.ndarray with a buffer, offset or strides")
        dtype = np.dtype(dtype)
        budget.charge(_array_bytes(shape, dtype, "numpy.ndarray"), f"numpy.ndarray {shape}")
        return np.zeros(shape, dtype)

    def reconstruct(subtype, shape, dtype):
        if subtype not in (np.ndarray, ndarray):
            raise pickle.UnpicklingError(f"refusing _reconstruct of {subtype!r}")
        dt = np.dtype(dtype) if isinstance(dtype, (bytes, str)) else dtype
        budget.charge(_array_bytes(shape, dt if isinstance(dt, np.dtype) else None,
                                   "_reconstruct"), f"_reconstruct {shape}")
        return _RECONSTRUCT(array_type, shape, dtype)

    def dtype(*args, **kwargs):
        dt = np.dtype(*args, **kwargs)
        if dt.hasobject:
            raise pickle.UnpicklingError(f"refusing dtype {dt} (Python objects)")
        return dt

    def latin1_encode(text, encoding="latin1"):
        """``_codecs.encode`` as protocol 2 uses it for bytes: latin-1 text to bytes only."""
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(f"refusing _codecs.encode({type(text).__name__}, "
                                         f"{encoding!r}): only latin-1 text to bytes is allowed")
        budget.charge(len(text), "_codecs.encode")
        return text.encode("latin-1")

    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): ndarray,
        ("numpy", "dtype"): dtype,
        ("_codecs", "encode"): latin1_encode,
        ("numpy.core.numeric", "_frombuffer"): _checked_frombuffer,  # a view: no allocation
        ("numpy._core.numeric", "_frombuffer"): _checked_frombuffer,
    }


def _checked_frombuffer(buffer, dtype, shape, order="C"):
    """``numpy._core.numeric._frombuffer`` (protocol 5) with its arguments checked first."""
    if not isinstance(buffer, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        raise pickle.UnpicklingError(f"refusing _frombuffer of a {type(buffer).__name__}")
    nbytes = _array_bytes(shape, dtype, "_frombuffer")
    if nbytes != memoryview(buffer).nbytes or order not in ("C", "F"):
        raise pickle.UnpicklingError(f"_frombuffer: {memoryview(buffer).nbytes} bytes for shape "
                                     f"{shape} of {dtype}, order {order!r}")
    array = np.frombuffer(buffer, dtype=dtype, count=nbytes // max(dtype.itemsize, 1))
    return array.reshape(shape[::-1]).T if order == "F" else array.reshape(shape)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits containers, bytes, str, numbers and plain NumPy arrays only, each
    array within the budget of the file's size."""

    def __init__(self, file, budget, **kwargs):
        super().__init__(file, **kwargs)
        self._globals = _restricted_globals(budget)

    def find_class(self, module: str, name: str):
        try:
            return self._globals[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only NumPy array reconstruction is "
                f"allowed in a data file") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a data file")


#: The largest pickle read (CIFAR-100's train is 150 MiB)
MAX_PICKLE_BYTES = 1 << 30


def _check_opcode_lengths(raw: bytes) -> None:
    """Walk the opcodes once: every length a pickle declares (bytes, str, frames) must fit in
    the bytes that follow it. pickle itself allocates a declared length before reading it, so a
    few bytes claiming a 2**62-byte object would otherwise be a MemoryError (or worse)."""
    import pickletools
    try:
        for _op, _arg, _pos in pickletools.genops(io.BytesIO(raw)):
            pass
    except (ValueError, pickle.UnpicklingError) as e:  # "expected N bytes ... but only M remain"
        raise pickle.UnpicklingError(f"a length or opcode does not fit the file ({e})") from None


def _safe_unpickle(path: Path):
    where = f"{path.parent.name}/{path.name}"
    raw = read_regular(path, where, MAX_PICKLE_BYTES, DatasetError)
    try:
        _check_opcode_lengths(raw)
        budget = _PickleBudget(len(raw))
        return _RestrictedUnpickler(io.BytesIO(raw), budget, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DatasetError(f"{where}: unsafe or corrupt pickle: {e}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            UnicodeDecodeError, MemoryError, OverflowError) as e:
        # what a truncated or garbled pickle raises halfway through the opcode stream
        raise DatasetError(f"{where}: truncated or corrupt pickle ({type(e).__name__}: {e})") \
            from None


# --------------------------------------------------------------------------------------------
# SVHN
# --------------------------------------------------------------------------------------------
def _load_svhn(root: Path, download: bool, subset: int | None) -> Dataset:
    folder = _find_svhn(root)
    if folder is None:
        if not download:
            raise DatasetNotFoundError(_svhn_missing_message(root))
        folder = root / SVHN["folder"]
    train_x, train_y = _read_svhn_mat(_svhn_file(folder, "train", download, root))
    # the 1.3 GB extra file is only read when the requested subset needs it
    if subset is None or subset > len(train_x):
        extra_x, extra_y = _read_svhn_mat(_svhn_file(folder, "extra", download, root))
        train_x = np.concatenate([train_x, extra_x])
        train_y = np.concatenate([train_y, extra_y])
        del extra_x, extra_y
    test_x, test_y = _read_svhn_mat(_svhn_file(folder, "test", download, root))
    return Dataset("svhn", train_x, train_y, test_x, test_y, 10, SVHN["mean"], SVHN["std"],
                   image_size=32, augment=False)


def _svhn_file(folder: Path, split: str, download: bool, root: Path) -> Path:
    """Path of one SVHN split's .mat file, fetching it first if allowed."""
    fname, md5 = SVHN["files"][split]
    path = folder / fname
    if not path.exists():  # (a FIFO or device under the name is refused by the reader, named)
        if not download:
            raise DatasetNotFoundError(f"SVHN: missing {path}\n" + _svhn_missing_message(root))
        url = SVHN["url"].format(fname)
        _fetch(url, path, md5, f"Put {fname} (from {url}) in {folder}.")
    return path


def _find_svhn(root: Path) -> Path | None:
    """The folder holding the SVHN .mat files (root/svhn or root itself), or None."""
    names = [f for f, _ in SVHN["files"].values()]
    for folder in (root / SVHN["folder"], root):
        if any((folder / n).exists() for n in names):
            return folder
    return None


def _svhn_missing_message(root: Path) -> str:
    names = ", ".join(f for f, _ in SVHN["files"].values())
    return (f"SVHN not found: expected {root / SVHN['folder']}/{{{names}}}.\n"
            f"Pass --download (load_dataset(..., download=True)), or fetch them from "
            f"{SVHN['url'].format('')} into {root / SVHN['folder']}.")


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN .mat file -> images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0..9."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError("reading SVHN needs scipy: pip install scipy "
                          "(or pip install -e \".[examples]\")") from None
    where = f"{path.parent.name}/{path.name}"
    try:
        with open_regular(path, where, DatasetError) as f:  # a FIFO or device: refused, named
            mat = loadmat(f, variable_names=["X", "y"])
    except (MemoryError, DatasetError):
        raise
    except Exception as e:  # scipy raises many types (ValueError, MatReadError, OSError, ...)
        raise DatasetError(f"{where}: cannot read .mat file ({type(e).__name__}: {e})") from None
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"{where}: expected variables X and y, found {sorted(mat)}")
    X, y = mat["X"], mat["y"]
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{where}: X should be (32, 32, 3, N) uint8, got {X.shape} {X.dtype}")
    y = _integer_labels(y.reshape(-1), where)
    if y.shape != (X.shape[3],):
        raise DatasetError(f"{where}: {y.size} labels for {X.shape[3]} images")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DatasetError(f"{where}: wrong label range {y.min()}..{y.max()}, expected 1..10")
    y[y == 10] = 0  # SVHN stores the digit 0 as class 10
    # (H, W, C, N) -> (N, C, H, W)
    return np.ascontiguousarray(X.transpose(3, 2, 0, 1)), y


# --------------------------------------------------------------------------------------------
# digits (scikit-learn)
# --------------------------------------------------------------------------------------------
def _load_digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits data set comes with scikit-learn: "
                          "pip install -e \".[examples]\" (or pip install scikit-learn)") from None
    bunch = load_digits()
    # values 0..16 -> 0..255, one channel replicated to three: (N, 3, 8, 8)
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    x = np.repeat(x[:, None], 3, axis=1)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(x))
    train, test = order[:-DIGITS_TEST_SIZE], order[-DIGITS_TEST_SIZE:]
    train_x = x[train]
    mean = tuple(float(m) for m in train_x.mean(axis=(0, 2, 3)))
    std = tuple(float(s) for s in train_x.std(axis=(0, 2, 3)))
    return Dataset("digits", train_x, y[train], x[test], y[test], 10, mean, std,
                   image_size=8, augment=False)


# --------------------------------------------------------------------------------------------
# Download, checksum, safe extraction
# --------------------------------------------------------------------------------------------
_urlopen = urllib.request.urlopen  # module attribute so tests can replace the network


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: Download limits: an overall deadline, and a minimum rate averaged over a window (a server
#: trickling bytes must not keep a run alive for days; the per-read timeout alone cannot see it).
DOWNLOAD_DEADLINE_S = 6 * 3600.0
DOWNLOAD_MIN_RATE = 10_000          # bytes/s, averaged over DOWNLOAD_RATE_WINDOW_S
DOWNLOAD_RATE_WINDOW_S = 60.0
DOWNLOAD_READ_TIMEOUT_S = 60.0


def _fetch(url: str, dest: Path, md5: str, offline_hint: str, *, deadline_s=None, min_rate=None,
           window_s=None, timeout_s=None) -> None:
    """Download ``url`` to ``dest`` (through ``dest.part``) and check its MD5.

    Resumable: a ``.part`` left by an interrupted or too slow download is continued with an HTTP
    Range request (a server that ignores it sends everything again). The download stops with
    DatasetError after ``deadline_s`` or when the rate over the last ``window_s`` seconds falls
    below ``min_rate`` bytes/s, keeping the ``.part`` for the next try. The final name only ever
    holds a file whose MD5 matched.
    """
    deadline_s = DOWNLOAD_DEADLINE_S if deadline_s is None else deadline_s
    min_rate = DOWNLOAD_MIN_RATE if min_rate is None else min_rate
    window_s = DOWNLOAD_RATE_WINDOW_S if window_s is None else window_s
    timeout_s = DOWNLOAD_READ_TIMEOUT_S if timeout_s is None else timeout_s
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = url if not have else urllib.request.Request(url, headers={"Range": f"bytes={have}-"})
    keep = f"the partial file {part} is kept: run again to continue"
    try:
        try:
            response = _urlopen(request, timeout=timeout_s)
        except urllib.error.HTTPError as e:
            if e.code != 416 or not have:  # 416: nothing left to send, the .part is complete
                raise
            response = None
        if response is not None:
            with response:
                status = getattr(response, "status", 200)
                if have and status != 206:  # the server ignored the Range: start again
                    have = 0
                length = int(response.headers.get("Content-Length") or 0)
                total = have + length if length else 0
                _copy_with_limits(response, part, have, total, dest.name, url, deadline_s,
                                  min_rate, window_s, keep)
                got = part.stat().st_size
                if total and got < total:
                    raise DatasetError(f"download of {url}: the connection closed after {got} of "
                                       f"{total} bytes; {keep}")
    except DatasetError:
        raise
    except (urllib.error.URLError, OSError) as e:  # offline, DNS, timeout, reset, disk full
        if part.is_file() and part.stat().st_size:
            raise DatasetError(f"cannot download {url} ({e}); {keep}.\n{offline_hint}") from None
        part.unlink(missing_ok=True)
        raise DatasetError(f"cannot download {url} ({e}).\n{offline_hint}") from None
    got = _md5(part)
    if got != md5:
        part.unlink()
        raise DatasetError(f"{dest.name}: md5 mismatch, got {got}, expected {md5} "
                           f"(download from {url} is corrupt; try again)")
    os.replace(part, dest)  # atomic: the final name only ever holds a verified file


def _copy_with_limits(response, part, have, total, label, url, deadline_s, min_rate, window_s,
                      keep):
    """Append the response body to ``part`` (truncated to ``have`` bytes first), with limits."""
    read = getattr(response, "read1", response.read)  # read1: whatever arrived, never waits for 64 KiB
    start = time.monotonic()
    marks = [(start, 0)]  # (time, bytes this session) to measure the rate over the window
    done = 0
    with open(part, "r+b" if have else "wb") as out, _progress(total, label, have) as advance:
        out.truncate(have)
        out.seek(have)
        while True:
            chunk = read(1 << 16)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            advance(len(chunk))
            now = time.monotonic()
            if now - start > deadline_s:
                raise DatasetError(f"download of {url}: not finished after {deadline_s:g} s "
                                   f"(deadline); {keep}")
            marks.append((now, done))
            while len(marks) > 2 and now - marks[1][0] >= window_s:
                marks.pop(0)
            t0, b0 = marks[0]
            if now - t0 >= window_s and (done - b0) / (now - t0) < min_rate:
                raise DatasetError(f"download of {url} is too slow: {(done - b0) / (now - t0):.0f} "
                                   f"bytes/s over the last {now - t0:.0f} s (minimum {min_rate}); "
                                   f"{keep}")


def _download_and_extract(url: str, md5: str, root: Path, folder: str) -> None:
    """Fetch the tar.gz at ``url`` into ``root`` and unpack its top folder ``folder`` there."""
    archive = root / url.rsplit("/", 1)[-1]
    if not (archive.is_file() and _md5(archive) == md5):
        _fetch(url, archive, md5, f"Without network, fetch {url} elsewhere and unpack it into "
                                  f"{root}, so that the folder {root / folder} exists.")
    target = root / folder
    if target.exists():
        raise DatasetError(f"{target} exists but is incomplete; remove it and retry")
    # extract beside the target, then rename: an interrupted run leaves only a temp folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=root))
    try:
        _safe_extract(archive, tmp)
        if not (tmp / folder).is_dir():
            raise DatasetError(f"{archive.name}: archive does not contain the folder {folder}/")
        os.replace(tmp / folder, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into ``dest``, refusing members that could escape it."""
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as e:
        raise DatasetError(f"{archive.name}: corrupt archive ({e})") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DatasetError(f"{archive.name}: corrupt archive ({e})") from None
        for m in members:
            parts = PurePosixPath(m.name).parts
            if m.name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
                raise DatasetError(f"{archive.name}: unsafe path {m.name!r} in archive")
            if not (m.isfile() or m.isdir()):
                raise DatasetError(f"{archive.name}: refusing link or special file {m.name!r}")
        # Python >= 3.11.4 also has its own 'data' filter: belt and braces
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            tar.extractall(dest, members=members, **kwargs)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DatasetError(f"{archive.name}: corrupt archive ({e})") from None


class _progress:
    """Context manager yielding ``advance(n)``: tqdm (bytes and rate) if installed, else a
    percentage line with the rate."""

    def __init__(self, total: int, label: str, initial: int = 0):
        self.total, self.label, self.done, self.last = total, label, initial, -1
        self.initial, self.bar, self.t0 = initial, None, time.monotonic()

    def __enter__(self):
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total or None, initial=self.initial, unit="B",
                            unit_scale=True, unit_divisor=1024, desc=self.label)
            return self.bar.update
        except ImportError:
            return self._advance

    def _advance(self, n: int) -> None:
        self.done += n
        if self.total:
            pct = 100 * self.done // self.total
            if pct != self.last:
                self.last = pct
                rate = (self.done - self.initial) / max(time.monotonic() - self.t0, 1e-9)
                print(f"\r{self.label}: {pct:3d}% ({rate / 1e6:.2f} MB/s)", end="",
                      file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        elif self.total:
            print(file=sys.stderr)
        return False


# --------------------------------------------------------------------------------------------
# Batching and augmentation
# --------------------------------------------------------------------------------------------
def slice_of(batch_size, rank, size):
    """Rows of a `batch_size` batch that rank `rank` of `size` takes: contiguous, near-equal.

    Rank r gets [B*r//P, B*(r+1)//P): sizes differ by at most one, the larger ones last.
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"slice_of: rank {rank} is not in 0..{size - 1}")
    return slice(batch_size * rank // size, batch_size * (rank + 1) // size)


def iterate_batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False,
                    rng: np.random.Generator | None = None, augment: bool = False,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    drop_last: bool = False, dtype=np.float32, pad: int = 4,
                    mirror: bool = True, start_batch: int = 0, part: tuple[int, int] | None = None
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(xb, yb)``: xb (B, C, H, W) = ``(x - mean) / std`` in ``dtype``; yb (B,) int64.

    x: (N, C, H, W) uint8 images; mean/std: per-channel on the 0..255 scale (default 0 and 1).
    ``shuffle`` draws one permutation per call; ``augment`` pads by ``pad`` with the mean, crops
    back to HxW at a random offset and (if ``mirror``) flips left-right with probability 1/2.
    Random numbers come only from ``rng``, in this order: the permutation, then per batch the
    vertical offsets, horizontal offsets and mirror flags. To resume mid-epoch, restore
    ``rng.bit_generator.state`` saved *before* the call and pass ``start_batch=k``: the skipped
    batches still draw their numbers, so batches k, k+1, ... equal those of the full run.

    part=(rank, size): data-parallel rank `rank` of `size` gets only rows
    ``distributed.slice_of(B, rank, size)`` of each batch of B (B_r rows). The numbers are still
    drawn for the whole batch, so the rng advances as on one process and the rows are those of
    the whole batch; only they are gathered, augmented and normalised.
    """
    n, C, H, W = x.shape
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(y) != n:
        raise ValueError(f"{n} images but {len(y)} labels")
    if (shuffle or augment) and not isinstance(rng, np.random.Generator):
        raise ValueError("shuffle/augment need rng, a numpy.random.Generator "
                         "(np.random.default_rng(seed))")
    mean = np.zeros(C) if mean is None else np.asarray(mean, dtype=np.float64)
    std = np.ones(C) if std is None else np.asarray(std, dtype=np.float64)
    mean_c = mean.astype(dtype).reshape(1, C, 1, 1)
    inv_std_c = (1.0 / std).astype(dtype).reshape(1, C, 1, 1)
    y = np.asarray(y, dtype=np.int64)
    if part is not None:
        rank, size = part
        slice_of(0, rank, size)  # a rank outside 0..size-1 fails here, before any batch

    order = rng.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for b, start in enumerate(range(0, stop, batch_size)):
        idx = order[start:start + batch_size]
        if augment:
            offsets = rng.integers(0, 2 * pad + 1, size=(2, len(idx)))
            flips = rng.random(len(idx)) < 0.5 if mirror else np.zeros(len(idx), dtype=bool)
        if b < start_batch:
            continue
        if part is not None:  # this rank's rows only, with their own numbers
            mine = slice_of(len(idx), rank, size)
            idx = idx[mine]
            if augment:
                offsets, flips = offsets[:, mine], flips[mine]
        xb = (x[idx].astype(dtype) - mean_c) * inv_std_c
        if augment:
            xb = _pad_crop_mirror(xb, pad, offsets[0], offsets[1], flips)
        yield xb, y[idx]


def _pad_crop_mirror(xb: np.ndarray, pad: int, dy: np.ndarray, dx: np.ndarray,
                     flips: np.ndarray) -> np.ndarray:
    """Crop image i of zero-padded ``xb`` (B, C, H, W) at (dy[i], dx[i]); mirror where ``flips``.

    ``xb`` is already normalised, so zero padding equals padding the raw image with the mean.
    One fancy-indexing gather does the whole batch.
    """
    B, C, H, W = xb.shape
    padded = np.zeros((B, C, H + 2 * pad, W + 2 * pad), dtype=xb.dtype)
    padded[:, :, pad:pad + H, pad:pad + W] = xb
    rows = dy[:, None] + np.arange(H)                       # (B, H)
    cols = dx[:, None] + np.arange(W)                       # (B, W)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)    # reading columns backwards = mirror
    return padded[np.arange(B)[:, None, None, None], np.arange(C)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


# --------------------------------------------------------------------------------------------
# python -m igc_np.data cifar10 --data-dir data --download : fetch and check a data set
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Exit status 0: the data set loads; 1: it does not (the reason on stderr, no traceback)."""
    p = argparse.ArgumentParser(description="Download and check an igc_np data set.")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true")
    args = p.parse_args(argv)
    try:
        print(load_dataset(args.dataset, args.data_dir, download=args.download))
    except (OSError, ValueError, ImportError) as e:  # DatasetError is both OSError and ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
