"""The run folder: one trainer per folder (a lock), no earlier run replaced, writable."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from ..serialization import atomic_write


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

