"""The run folder: one trainer per folder (a lock), no earlier run replaced, writable.

A run writes into two folders that may differ: ``--output-dir`` (log, curves) and the folder of
``--model-prefix`` (checkpoints). Both are locked (``RunLock`` on the output folder, ``cover``-ed
for the prefix's folder by ``check_run_folder``) and both are checked, whichever option named
them: a run elsewhere cannot write checkpoints into a live run's folder, nor ``--overwrite``
them. Checkpoint names are listed and matched exactly (``os.listdir``, never a glob: a prefix
may hold ``[``, ``*`` or ``?``). ``--overwrite`` removes only files the trainer writes (its log
and curves, and trainer checkpoints under the prefix). The longest name a run will write (a
temporary checkpoint name included) is checked against the file system's NAME_MAX and
PATH_MAX before anything trains. Temporaries left by a killed process of this machine (its pid
is in their name) are removed when a run opens the folder.
"""
from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from ..serialization import (SerializationError, atomic_write, describe_os_error, open_regular,
                             read_npz, stale_temporaries, temporary_name_bytes)
from .checkpoint import FORMAT


class RunFolderError(OSError):
    """The output folder cannot be used (another trainer, an earlier run, not writable)."""


RUN_FILES = ("log.jsonl", "loss.png", "accuracy.png")
LOCK_NAME = ".igc_np.lock"
WRITE_TEST = ".igc_np.write-test"
INTERRUPTED = "interrupted"
MAX_LOCK_BYTES = 4096

_HELD = {}  # resolved folder -> the RunLock of this process holding it


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True


def _key(folder):
    return os.path.realpath(folder)


class RunLock:
    """``<folder>/.igc_np.lock``: one trainer per folder (and per folder it ``cover``-s).

    Holds JSON {pid, host, started, command}. A lock of a process that is gone (same host) is
    taken over with a note; a live one (or one of another host, which cannot be checked) is an
    error naming it. A lock file that is not a small regular file (a FIFO, a link to
    /dev/zero) is refused naming it, never read.
    """

    def __init__(self, folder):
        self.path = Path(folder) / LOCK_NAME
        self.held = False
        self.covered = []  # further RunLocks taken with cover(), released with this one

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
                    why = other.get("problem", "not a lock written by igc_np")
                    raise RunFolderError(f"{self.path.parent}: an unreadable lock file {self.path} "
                                         f"({why}); if no trainer uses this folder, remove it")
                raise RunFolderError(
                    f"{self.path.parent} is in use by another trainer: pid {pid} on {host}, "
                    f"started {other.get('started')} ({str(other.get('command', ''))[:120]}). "
                    f"Wait for it, choose another --output-dir / --model-prefix, or remove "
                    f"{self.path} if that process is gone"
                    + ("" if same_host else " (it runs on another machine: not checked)"))
            except RunFolderError:
                raise
            except OSError as e:
                raise RunFolderError(f"{self.path}: cannot create the lock "
                                     f"({describe_os_error(e)})") from None
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            self.held = True
            _HELD[_key(self.path.parent)] = self
            return self
        raise RunFolderError(f"{self.path}: cannot take the lock (others keep taking it)")

    def cover(self, folder, note=print):
        """Also lock ``folder`` (another folder this run writes into) until ``release``."""
        if _key(folder) in _HELD:
            return
        self.covered.append(RunLock(folder).acquire(note))

    def _read(self):
        """The lock's JSON (a dict), or {"problem": why} when it cannot be one."""
        try:
            with open_regular(self.path, "lock file") as f:
                text = f.read(MAX_LOCK_BYTES + 1)
        except (SerializationError, OSError) as e:
            return {"problem": str(e).split(": ", 1)[-1]}
        try:
            value = json.loads(text[:MAX_LOCK_BYTES])
            return value if isinstance(value, dict) else {}
        except ValueError:
            return {}

    def release(self):
        for lock in reversed(self.covered):
            lock.release()
        self.covered = []
        if self.held:
            if self._read().get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
            _HELD.pop(_key(self.path.parent), None)


def held_lock(folder):
    """The RunLock of this process holding ``folder``, or None."""
    return _HELD.get(_key(folder))


def live_lock(folder):
    """Who holds ``folder``'s lock when it is another live process (or one of another machine,
    or an unreadable lock): a description; None when the folder is free or ours."""
    lock = RunLock(folder)
    if not os.path.lexists(lock.path) or held_lock(folder) is not None:
        return None
    other = lock._read()
    pid, host = other.get("pid"), other.get("host")
    if not isinstance(pid, int):
        return f"an unreadable lock file {lock.path} ({other.get('problem', 'not written by igc_np')})"
    if host == socket.gethostname() and (pid == os.getpid() or not _pid_alive(pid)):
        return None
    return f"pid {pid} on {host}, started {other.get('started')} ({str(other.get('command', ''))[:120]})"


def check_writable(folder, option, create=True):
    """Prove a file can be written in ``folder`` (created if needed), else RunFolderError.

    ``create=False`` creates nothing: the nearest existing folder on the way must be a writable
    folder (a quick check before the data is loaded; the real one comes with the lock).
    """
    folder = Path(folder)
    check_name_lengths(folder, [WRITE_TEST], option)
    try:
        if not create:
            probe = _nearest_existing(folder)
            if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
                raise RunFolderError(f"{option} {folder}: cannot write there ({probe} is "
                                     f"{'not a folder' if not probe.is_dir() else 'not writable'})")
            return
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / WRITE_TEST) as f:
            f.write(b"ok")
        # missing_ok: a second trainer starting in this folder at the same moment writes and
        # removes the same name; our rename succeeded, which is the proof sought
        (folder / WRITE_TEST).unlink(missing_ok=True)
    except RunFolderError:
        raise
    except OSError as e:
        raise RunFolderError(f"{option} {folder}: cannot write there ({describe_os_error(e)})") from None


def _nearest_existing(folder):
    """``folder`` or its nearest ancestor that exists (lstat: a broken link counts as existing)."""
    probe = Path(os.path.abspath(folder))
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def check_name_lengths(folder, names, option):
    """RunFolderError unless every file ``names`` in ``folder``, *and its temporary* (atomic_write
    adds ``serialization.TEMPORARY_EXTRA`` bytes), fits the file system's NAME_MAX, and the whole
    path its PATH_MAX (``os.pathconf`` of the nearest existing folder; 255 and 4096 if unknown)."""
    path = os.path.abspath(folder)
    where = _nearest_existing(path)
    limits = {}
    for key, default in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096)):
        try:
            limits[key] = os.pathconf(where, key) if hasattr(os, "pathconf") else default
        except (OSError, ValueError):
            limits[key] = default
        if limits[key] is None or limits[key] <= 0:
            limits[key] = default
    name_max, path_max = limits["PC_NAME_MAX"], limits["PC_PATH_MAX"]
    for part in Path(path).parts:
        if len(os.fsencode(part)) > name_max:
            raise RunFolderError(f"{option} {folder}: the folder name {part[:40]!r}... is "
                                 f"{len(os.fsencode(part))} bytes, more than this file system's "
                                 f"{name_max} (NAME_MAX)")
    longest = max(names, key=lambda n: len(os.fsencode(n)))
    need = temporary_name_bytes(longest)
    if need > name_max:
        raise RunFolderError(
            f"{option} {folder}: the file {longest[:40]!r}... would need a temporary name of {need} "
            f"bytes while it is written, more than this file system's {name_max} (NAME_MAX); "
            f"use a name at least {need - name_max} bytes shorter")
    full = len(os.fsencode(path)) + 1 + need
    if full >= path_max:
        raise RunFolderError(f"{option} {folder}: the path of its files would be {full} bytes, "
                             f"more than this system's {path_max - 1} (PATH_MAX); use a shorter path")


def _checkpoint_names(prefix):
    """The names a run with ``prefix`` writes into its folder, the longest ones."""
    name = Path(prefix).name
    return [f"{name}-{INTERRUPTED}.npz", f"{name}-100000.npz"]


def checkpoint_epoch(path, prefix):
    """k for ``<prefix>-<k:04d>.npz``, None for other names (``-interrupted``)."""
    stem = Path(path).name[len(Path(prefix).name) + 1:-4]
    return int(stem) if stem.isdigit() else None


def checkpoint_files(prefix):
    """The trainer checkpoint names of ``prefix``: ``<name>-<digits>.npz`` and
    ``<name>-interrupted.npz`` in its folder, matched exactly (no glob), sorted."""
    prefix = Path(prefix)
    folder, name = prefix.parent, prefix.name
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    pattern = re.compile(re.escape(name) + r"-([0-9]+|" + INTERRUPTED + r")\.npz", re.S)
    return sorted(folder / e for e in entries
                  if pattern.fullmatch(e) and os.path.isfile(folder / e))


def earlier_run_files(out_dir, prefix):
    """Files of an earlier run in ``out_dir`` / with ``prefix``: log, curves, checkpoints."""
    out_dir = Path(out_dir)
    files = [out_dir / n for n in RUN_FILES if (out_dir / n).is_file()]
    return files + checkpoint_files(prefix)


def is_trainer_checkpoint(path):
    """Whether ``path`` is a checkpoint written by the trainer (its ``format`` entry)."""
    try:
        fmt = read_npz(path, lambda k: k == "format", what="checkpoint").get("format")
    except (SerializationError, OSError):
        return False
    return fmt is not None and fmt.shape == () and str(fmt) == FORMAT


def remove_stale_temporaries(folder, note=print):
    """Remove the temporaries that killed processes of this machine left in ``folder``."""
    for p in stale_temporaries(folder, _pid_alive):
        try:
            p.unlink()
            note(f"note: removed {p}, a temporary file left by a process that was killed while saving")
        except OSError:
            pass


def _folders(out_dir, prefix):
    """(folder, option) of every folder this run writes into, each once."""
    out = [(Path(out_dir), "--output-dir")]
    if _key(Path(prefix).parent) != _key(out_dir):
        out.append((Path(prefix).parent, "--model-prefix"))
    return out


def _lock_folders(out_dir, prefix, delete):
    """Every folder receiving files is locked (delete=True: covered by the lock this process
    holds on out_dir) or, in the quick check, at least not held by a live run."""
    note = lambda m: print(m, file=sys.stderr)  # noqa: E731
    held = held_lock(out_dir) if delete else None
    for folder, option in _folders(out_dir, prefix):
        if held is not None and os.path.isdir(folder):
            held.cover(folder, note)
            continue
        other = live_lock(folder) if os.path.isdir(folder) else None
        if other is not None:
            raise RunFolderError(f"{option} {folder} is in use by another trainer: {other}. Wait "
                                 "for it, or choose another folder")


def check_run_folder(out_dir, prefix, ckpt=None, overwrite=False, delete=False):
    """Refuse a folder holding a run unless ``ckpt`` resumes it at its latest state, or overwrite.

    Also checks that ``out_dir`` and the prefix's folder are writable, their names short enough,
    and not held by another live run. ``delete=False``: the quick check before the data is
    loaded, which creates and removes nothing; ``delete=True``: the real one under the lock,
    which creates the folders, locks the prefix's folder too, removes stale temporaries and,
    with ``overwrite``, the earlier run's files (never the checkpoint being resumed, never files
    the trainer does not write). A folder with log or curves but no checkpoint (a run that
    stopped before its first) holds nothing to resume: the run starts, saying so.
    """
    out_dir, prefix = Path(out_dir), Path(prefix)
    check_name_lengths(out_dir, list(RUN_FILES) + [LOCK_NAME, WRITE_TEST], "--output-dir")
    check_name_lengths(prefix.parent, _checkpoint_names(prefix), "--model-prefix")
    check_writable(out_dir, "--output-dir", create=delete)
    check_writable(prefix.parent, "--model-prefix", create=delete)
    _lock_folders(out_dir, prefix, delete)
    if delete:
        for folder, _ in _folders(out_dir, prefix):
            remove_stale_temporaries(folder, lambda m: print(m, file=sys.stderr))
    files = earlier_run_files(out_dir, prefix)
    checkpoints = checkpoint_files(prefix)
    if not files:
        return
    if overwrite:
        if delete:
            _overwrite(out_dir, files, ckpt)
        return
    if not checkpoints:
        if delete:  # (said once: under the lock, not in the quick check before it)
                print(f"note: {out_dir} holds {', '.join(p.name for p in files)} but no checkpoint (a "
                  "run that stopped before its first one): nothing to resume, starting over them",
                  file=sys.stderr)
        return
    ours = ckpt is not None and ckpt.path.resolve().parent == prefix.parent.resolve()
    if not ours:
        what = ", ".join(p.name for p in files[:4]) + (" ..." if len(files) > 4 else "")
        raise RunFolderError(
            f"{out_dir} already holds a run ({what}); this run would replace it. Resume it "
            "(--resume FILE or --load-epoch K), choose another --output-dir, or pass --overwrite "
            "to delete it and start again")
    later = [p for p in checkpoints if (checkpoint_epoch(p, prefix) or -1) > ckpt.epoch]
    if later:
        raise RunFolderError(
            f"{out_dir} holds checkpoints later than the one resumed (epoch {ckpt.epoch}): "
            f"{', '.join(p.name for p in later[:4])}; resuming here would replace them. Resume "
            "the latest, give another --output-dir, or pass --overwrite")


def _overwrite(out_dir, files, ckpt):
    """--overwrite: remove the earlier run's files the trainer writes; keep the resumed one and
    any .npz under the prefix that is not a trainer checkpoint (it was not written by a run)."""
    resumed = ckpt.path.resolve() if ckpt is not None else None
    removed, kept = [], []
    for p in files:
        if p.resolve() == resumed:
            continue  # never the file being resumed
        if p.suffix == ".npz" and not is_trainer_checkpoint(p):
            kept.append(p.name)
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    print(f"--overwrite: removed {len(removed)} files of the earlier run in {out_dir}"
          + (f"; kept {', '.join(kept)} (not written by the trainer)" if kept else ""),
          file=sys.stderr)
