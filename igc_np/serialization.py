"""Safe files: atomic writing and bounded reading of ``.npz`` archives, and ``save`` / ``load``.

Writing (``write_npz``, ``atomic_write``)
    The bytes go to a temporary file with a unique name (``.<name>.<host>-<pid>.<random>.tmp``:
    ``<host>`` 8 hex digits of the machine's name, ``<pid>`` the writer's process id, so that a
    temporary left by a killed process can be recognised and removed: ``stale_temporaries``) in
    the target's folder, are flushed and ``fsync``-ed, and the temporary file is renamed onto the target with
    ``os.replace``, which is atomic on one file system. A crash, a full disk, SIGKILL or Ctrl-C
    therefore leaves either the old file or the new one under the name, never half of one; the
    temporary file is removed on every failure we can see (SIGKILL leaves it, under its dot-name).
    Unique names let two writers share a folder without clobbering each other's temporary files.

Reading (``read_npz``)
    An ``.npz`` is a zip of ``.npy`` members. A hostile file can declare a member of terabytes
    (a zip bomb: tiny compressed, huge uncompressed) or an array header of huge shape. Before a
    member is read we check, from the zip directory and the member's ``.npy`` header only:

    * the member is one the caller expects (``accept(key)``); others are never read;
    * the header's ``shape * itemsize`` plus the header equals the zip's stated uncompressed size,
      which is at most ``max_member_bytes``, and all members together at most ``max_total_bytes``;
    * the stated compressed size fits in the file, and the uncompressed size is at most
      ``max_ratio`` times the compressed size (members under 1 MiB excepted: tiny arrays of zeros
      compress well);
    * the dtype holds no Python objects (``allow_pickle=False``: loading never runs code).

    zipfile then stops decompressing at the stated size and checks the CRC, so memory use is
    bounded by what was checked. Every failure raises ``SerializationError`` naming the file and
    the member.

``save(state_dict, path)`` / ``load(path)``
    The PyTorch habit ``torch.save(model.state_dict(), f)`` / ``model.load_state_dict(torch.load(f))``
    with plain ``.npz`` files instead of pickles: ``ig.save(model.state_dict(), "m.npz")``,
    ``model.load_state_dict(ig.load("m.npz"))``. The file is readable by ``numpy.load`` too.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from . import backend

__all__ = ["SerializationError", "NotRegularFileError", "write_npz", "read_npz", "atomic_write",
           "open_regular", "read_regular", "describe_os_error", "stale_temporaries",
           "temporary_name_bytes", "save", "load"]

#: limits of ``read_npz`` unless the caller gives others
MAX_MEMBER_BYTES = 8 << 30       # one array: 8 GiB (an ImageNet IGC net is a few hundred MiB)
MAX_TOTAL_BYTES = 16 << 30
MAX_RATIO = 200                  # deflate reaches ~1000:1 on zeros; real weights compress < 2:1
MAX_MEMBERS = 100_000
_SMALL = 1 << 20                 # members below 1 MiB skip the ratio test
_NPY_MAGIC, _ZIP_MAGIC, _PICKLE_MAGIC = b"\x93NUMPY", b"PK\x03\x04", b"\x80"
_ALLOWED_KINDS = set("biufcU")   # bool, ints, floats, complex, unicode text: no objects, no voids


def _read_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class SerializationError(ValueError):
    """A file is not a readable, safe .npz archive; the message names the file (and member)."""


class NotRegularFileError(SerializationError, OSError):
    """A path to be read is missing, a folder, a FIFO, a device or a socket (``open_regular``)."""


# --------------------------------------------------------------------------------------------
# opening files to read: regular files only
# --------------------------------------------------------------------------------------------
_KINDS = ((stat.S_ISDIR, "is a folder, not a file"),
          (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file: reading it could wait forever"),
          (stat.S_ISCHR, "is a character device (like /dev/zero), not a regular file: reading it "
                         "could never end"),
          (stat.S_ISBLK, "is a block device, not a regular file"),
          (stat.S_ISSOCK, "is a socket, not a regular file"))
_OPEN_ERRORS = {errno.ENOENT: "no such file", errno.ENOTDIR: "no such file (a part of the path "
                "is not a folder)", errno.ELOOP: "a symbolic link loop (the link points back at "
                "itself)", errno.ENAMETOOLONG: "the path or one of its names is too long for the "
                "file system (PATH_MAX / NAME_MAX)", errno.EACCES: "permission denied"}


def describe_os_error(e):
    """A short reason for an OSError met on a path ("a symbolic link loop", "no such file")."""
    if e.errno == errno.EISDIR:
        return "is a folder, not a file"
    return _OPEN_ERRORS.get(e.errno, e.strerror or str(e))


def _kind_problem(mode):
    """None for a regular file, else why a file of this st_mode is not read."""
    if stat.S_ISREG(mode):
        return None
    for test, problem in _KINDS:
        if test(mode):
            return problem
    return "is not a regular file"


def open_regular(path, what="file", error=None):
    """Open ``path`` for reading (binary) if it is a regular file after following links, else
    raise ``error`` (default NotRegularFileError) naming it: "<what> <path>: is a FIFO ...".

    Every file igc_np reads goes through here. The check is made on the opened descriptor
    (``fstat``), so a name swapped between a check and the open cannot slip through, and the open
    itself uses O_NONBLOCK, so even opening a FIFO with no writer returns at once instead of
    waiting forever. A regular file then reads normally (O_NONBLOCK means nothing for it).
    """
    error = error or NotRegularFileError
    where = f"{what} {os.fsdecode(path)}"
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_BINARY", 0)
    try:
        problem = _kind_problem(os.stat(path).st_mode)  # refuse a device before opening it
        if problem:
            raise error(f"{where}: {problem}")
        fd = os.open(path, flags)
    except ValueError as e:  # a NUL byte in the path
        if isinstance(e, error):
            raise
        raise error(f"{where!r}: not a usable path ({e})") from None
    except OSError as e:
        if isinstance(e, error):
            raise
        raise error(f"{where}: {describe_os_error(e)}") from None
    try:
        problem = _kind_problem(os.fstat(fd).st_mode)
        if problem:
            raise error(f"{where}: {problem}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, what="file", limit=None, error=None):
    """The bytes of the regular file ``path`` (``open_regular``), at most ``limit`` of them:
    a larger file is refused before reading, and reading stops at the size ``fstat`` gave (a
    file growing meanwhile cannot make the read unbounded)."""
    error = error or NotRegularFileError
    with open_regular(path, what, error) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            raise error(f"{what} {os.fsdecode(path)}: {size} bytes, more than the {limit} "
                        "expected of such a file; refusing to read it")
        data = f.read(size)
    return data


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """``with atomic_write(path) as f: f.write(...)``: the file appears complete or not at all.

    The temporary file lives beside ``path`` under a unique dot-name and is removed if the block
    raises anything (including KeyboardInterrupt and a full disk).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError):  # mkstemp makes 0600; a result file is 0666 - umask
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def host_tag(host=None):
    """8 hex digits naming a machine (of its host name) in temporary names: short, fixed length."""
    name = socket.gethostname() if host is None else host
    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _owner():
    return f"{host_tag()}-{os.getpid()}"


#: ``.<name>.<host>-<pid>.<8 random>.tmp``: what atomic_write adds to a name, at most (pid <= 7 digits)
TEMPORARY_EXTRA = len(".") + len(".") + 8 + 1 + 7 + 1 + 8 + len(".tmp")
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})\.[a-z0-9_]{8}\.tmp$",
                        re.S)


def temporary_name_bytes(name):
    """The longest name (in bytes) of atomic_write's temporary file for a target named ``name``."""
    return len(os.fsencode(name)) + TEMPORARY_EXTRA


def stale_temporaries(folder, alive):
    """Temporary files of atomic_write in ``folder`` whose writer is a dead process of this
    machine: ``alive(pid)`` is False. Temporaries of other machines (unknowable) and of live
    processes are never listed."""
    here = host_tag()
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out = []
    for name in names:
        m = _TEMPORARY.match(name)
        if m and m["host"] == here and int(m["pid"]) != os.getpid() and not alive(int(m["pid"])):
            out.append(Path(folder) / name)
    return sorted(out)


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX); not possible on every system, so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_npz(path, arrays):
    """Write ``arrays`` ({key: array}) to ``path`` as an uncompressed .npz, atomically.

    Keys may contain '/' (``model/fc_weight``); arrays must not hold Python objects.
    """
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise SerializationError(f"{path}: keys must be non-empty strings, got {key!r}")
        if np.asarray(value).dtype.hasobject:
            raise SerializationError(f"{path}: entry {key!r} holds Python objects "
                                     f"(dtype object); only numeric arrays and text are stored")
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return Path(path)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def read_npz(path, accept=None, *, max_member_bytes=MAX_MEMBER_BYTES,
             max_total_bytes=MAX_TOTAL_BYTES, max_ratio=MAX_RATIO, what="file"):
    """{key: array} of the members of ``path`` for which ``accept(key)`` is true (all if None).

    Bounded as described in the module docstring; raises ``SerializationError`` naming the file
    and member on anything unexpected. ``what`` names the file's role in messages ("checkpoint").
    """
    path = Path(path)
    where = f"{what} {path}"
    with open_regular(path, what) as f:  # the one descriptor, checked regular, read throughout
        try:
            magic = f.read(6)
            f.seek(0)
        except OSError as e:
            raise SerializationError(f"{where}: cannot be read ({e.strerror or e})") from None
        size = os.fstat(f.fileno()).st_size
        return _read_npz_open(f, where, magic, size, accept, max_member_bytes, max_total_bytes,
                              max_ratio)


def _read_npz_open(f, where, magic, size, accept, max_member_bytes, max_total_bytes, max_ratio):
    """read_npz on the open file ``f`` (its first bytes ``magic``, its size ``size``)."""
    if magic.startswith(_NPY_MAGIC):
        raise SerializationError(f"{where}: is a single-array .npy file, not an .npz archive "
                                 "(read it with numpy.load, or save with numpy.savez)")
    if magic.startswith(_PICKLE_MAGIC):
        raise SerializationError(f"{where}: is a Python pickle, not an .npz archive; pickles are "
                                 "never loaded (they can run code)")
    if not magic.startswith(_ZIP_MAGIC[:2]):
        raise SerializationError(f"{where}: not a readable .npz file (it does not start like a "
                                 "zip archive): corrupt, or not written by numpy.savez")
    try:
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise SerializationError(f"{where}: {len(infos)} members, more than {MAX_MEMBERS}")
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                raise SerializationError(f"{where}: duplicate members {dup[:5]} (tampered?)")
            chosen = []
            for info in infos:
                if not info.filename.endswith(".npy"):
                    continue  # not an array: never read
                key = info.filename[:-4]
                if accept is None or accept(key):
                    chosen.append((key, info))
            total = 0
            for key, info in chosen:
                _check_sizes(where, key, info, size, max_member_bytes, max_ratio)
                total += info.file_size
                if total > max_total_bytes:
                    raise SerializationError(f"{where}: the members add up to more than "
                                             f"{max_total_bytes} bytes (limit); refusing to read")
            return {key: _read_member(zf, where, key, info) for key, info in chosen}
    except SerializationError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            NotImplementedError, RuntimeError) as e:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method
        raise SerializationError(f"{where}: not a readable .npz file, corrupt or truncated "
                                 f"({type(e).__name__}: {e})") from None


def _check_sizes(where, key, info, file_size, max_member_bytes, max_ratio):
    if info.file_size > max_member_bytes:
        raise SerializationError(f"{where}: member {key!r} declares {info.file_size} bytes, more "
                                 f"than the limit of {max_member_bytes}; refusing to read it")
    if info.compress_size > file_size:
        raise SerializationError(f"{where}: member {key!r} claims {info.compress_size} compressed "
                                 f"bytes in a file of {file_size} (truncated or tampered)")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise SerializationError(f"{where}: member {key!r} is stored uncompressed but claims "
                                 f"{info.compress_size} bytes stored for {info.file_size} "
                                 "(corrupt or tampered)")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > _SMALL and \
            info.file_size > max_ratio * max(info.compress_size, 1):
        raise SerializationError(
            f"{where}: member {key!r} expands {info.compress_size} -> {info.file_size} bytes "
            f"(ratio over {max_ratio}: a zip bomb?); refusing to read it")


def _read_member(zf, where, key, info):
    """One member, after checking its .npy header against the zip's stated size."""
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unknown .npy version {version}")
        except ValueError as e:
            raise SerializationError(f"{where}: member {key!r} has a bad .npy header ({e})") \
                from None
        if dtype.hasobject or dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
            raise SerializationError(f"{where}: member {key!r} has dtype {dtype}, which is not a "
                                     "plain numeric or text type (objects are never unpickled)")
        count = 1
        for n in shape:
            count *= int(n)
        header_end = f.tell()
        if header_end + count * dtype.itemsize != info.file_size:
            raise SerializationError(
                f"{where}: member {key!r} header says {shape} {dtype} "
                f"({count * dtype.itemsize} bytes) but the archive stores "
                f"{info.file_size - header_end} (corrupt or tampered)")
        # read straight into the array (no second copy); zipfile checks the CRC at the end
        array = np.empty(count, dtype=dtype)
        view = memoryview(array.view(np.uint8))
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise SerializationError(f"{where}: member {key!r} is truncated")
            got += n
        if f.read(1):
            raise SerializationError(f"{where}: member {key!r} is longer than its header says")
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


# --------------------------------------------------------------------------------------------
# save / load: state dicts as .npz
# --------------------------------------------------------------------------------------------
def check_writable_path(path, op):
    """Refuse, before anything is written, a path whose folder is missing or that is a folder."""
    path = Path(path)
    if path.is_dir():
        raise SerializationError(f"{op}: {path} is a folder; give a file name, e.g. {path / 'model.npz'}")
    if not path.parent.is_dir():
        raise SerializationError(f"{op}: cannot write {path}: the folder {path.parent} does not exist "
                                 "(create it first)")


def save(state_dict, path):
    """Write a ``state_dict`` ({name: array}, CPU or GPU) to ``path`` (.npz, atomically).

    The name is used as given (``m.npz`` recommended; no suffix is added).
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"igc_np.save: expected a dict of arrays (model.state_dict()), got "
                        f"{type(state_dict).__name__}")
    check_writable_path(path, "igc_np.save")
    arrays = {}
    for key, value in state_dict.items():
        try:
            arrays[key] = backend.to_device(value, "cpu")
        except (TypeError, ValueError) as e:
            raise SerializationError(f"igc_np.save {path}: entry {key!r} is not an array ({e})") \
                from None
    return write_npz(path, arrays)


def load(path):
    """The {name: NumPy array} written by ``save`` (or any plain ``numpy.savez`` archive)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"igc_np.load: path must be a str or Path, got {type(path).__name__}")
    return read_npz(path)
