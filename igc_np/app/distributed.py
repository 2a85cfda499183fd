"""Data-parallel training over several processes: MPI (mpi4py) for CPU ranks, NCCL for GPUs.

The reference trains with ``--gpus 0,1`` and ``--kv-store dist_sync`` (docs/reference_protocol.md, "Several GPUs and machines"):
one replica per device, each ``--batch-size`` batch split evenly over the replicas, gradients
summed so that the update is the one of the mean loss over the whole batch (lr unchanged),
BatchNorm statistics per replica (not synchronised). This module does the same on engines that
already exist; it has no transport of its own.

    comm = distributed.init("auto")            # SingleProcess, MPI or NCCL, threads set per rank
    part = (comm.rank, comm.size)              # every rank draws the same numbers, builds its rows
    for xb, yb in iterate_batches(x, y, B, ..., part=part):
        r = distributed.dp_step(model, optimizer, xb, yb, comm, micro_batches=1,
                                global_batch=rows_of_this_batch)   # B, or fewer for the last
        sums += r.sums                         # reduced over ranks: the same on every rank
        if not r.finite or r.stop: ...         # every rank sees the same flags, stops together

Semantics, and why
------------------
* Slicing. Rank r of P takes rows ``slice_of(B, r, P)`` of each global batch of B rows
  (near-equal, contiguous); with ``micro_batches=K`` its slice is cut the same way into K
  pieces. Every rank draws the same permutation and augmentation numbers (same rng seed), for
  the whole batch, and builds only its rows (``iterate_batches(..., part=(rank, size))``, the
  same in ``ImageNetSource.batches``), so the data order does not depend on the world size and
  no rank decodes or augments another rank's images. ``dp_step`` also accepts the whole batch
  and takes the slice itself.
* Gradients. Piece j (n_j rows) back-propagates ``(n_j / B) * mean loss of piece j``; the sum over
  pieces is the gradient of the mean loss over the whole batch. Weight decay and momentum are
  applied after the reduction, by the unchanged optimizer.
* BatchNorm. Each piece normalises with its own statistics (as the reference: per device). Its
  running statistics are updated from the same starting values on every piece and then averaged
  over the non-empty pieces, so all ranks hold the same model after every step. MXNet keeps
  one copy per device and averages the copies when it saves; the update is linear and the batch
  statistics do not depend on it, so averaging every step gives the same numbers.
* Determinism. Sums run in a fixed order: pieces in order inside a rank, then ranks in order
  (``ordered_sum``). The MPI/NCCL reduction sends chunk c of every rank's buffer to rank c
  (all-to-all), which sums the P parts in rank order and all-gathers the result: the same bytes
  move as in a ring all-reduce, 2 (P-1)/P of the buffer, but the result does not depend on the
  library, the network or the arrival order. Hence P ranks give bit for bit the result of
  ``micro_batches=P`` on one process: how a user checks a cluster run on a laptop.

The launching side (``spawn`` for ``--gpus 0,1,..``, ``mpiexec``/``srun`` for MPI) is in the
same module. Environment set by ``spawn`` for each child: ``IGC_NP_DIST_RANK``,
``IGC_NP_DIST_SIZE``, ``IGC_NP_DIST_LOCAL_RANK``, ``IGC_NP_NCCL_ID`` (hex of the NCCL unique id),
``IGC_NP_THREADS``.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass

import numpy as np

from .. import backend
from .. import functional as F
from ..autograd import Tensor
from ..ops import parallel
from ..step import train_step
from .data import slice_of
from .evaluation import Metrics
from .evaluation import evaluate as evaluate_one

__all__ = ["Communicator", "SingleProcess", "MPI", "NCCL", "DistError", "FollowerError", "init", "launched_by_mpi",
           "slice_of", "ordered_sum", "dp_step", "StepResult", "reduce_flag", "reduce_sums",
           "root_first", "abort_on_error", "abort_if_distributed", "root_reads", "broadcast_bytes",
           "launcher_comm",
           "evaluate_ranks", "spawn", "should_spawn", "set_threads", "threads_per_rank"]

ENV_RANK, ENV_SIZE, ENV_LOCAL_RANK = "IGC_NP_DIST_RANK", "IGC_NP_DIST_SIZE", "IGC_NP_DIST_LOCAL_RANK"
ENV_NCCL_ID = "IGC_NP_NCCL_ID"

# (world size, rank, local size, local rank) as set by the MPI launchers we know: MPICH/Intel MPI
# (hydra), Open MPI, MVAPICH2, Slurm's srun. Only used to tell *whether* we run under a launcher
# (before importing mpi4py) and to size threads; the ranks themselves come from MPI.
_LAUNCHER_ENV = (("PMI_SIZE", "PMI_RANK", "MPI_LOCALNRANKS", "MPI_LOCALRANKID"),
                 ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
                  "OMPI_COMM_WORLD_LOCAL_RANK"),
                 ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_SIZE",
                  "MV2_COMM_WORLD_LOCAL_RANK"),
                 ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_STEP_TASKS_PER_NODE", "SLURM_LOCALID"))


class DistError(RuntimeError):
    """A distributed set-up that cannot work; the message says which option or engine and why."""


class FollowerError(DistError):
    """Raised on the other ranks when rank 0 failed at something all ranks needed: rank 0
    prints the error that says why; the others stay quiet (see ``abort_on_error``)."""


# --------------------------------------------------------------------------------------------
# Communicators
# --------------------------------------------------------------------------------------------
class Communicator:
    """What data-parallel training needs from an engine, on flat 1-D buffers.

    ``allreduce(buf)`` returns the element-wise sum over ranks, summed in rank order (identical
    bits on every rank); ``broadcast(buf, root)`` returns root's buffer; ``barrier()`` waits for
    all. Buffers may be NumPy or (for NCCL) CuPy arrays; the result has buf's type and dtype.
    """
    kind = "none"
    rank, size, local_rank, local_size = 0, 1, 0, 1

    @property
    def is_root(self):
        """Rank 0: the one rank that writes checkpoints, logs and curves."""
        return self.rank == 0

    def allreduce(self, buf):
        raise NotImplementedError

    def broadcast(self, buf, root=0):
        raise NotImplementedError

    def barrier(self):
        raise NotImplementedError

    def abort(self, status=1):
        """End every rank now (after an error on this one): no collective can complete any more.
        Here: this process exits at once; ``spawn``'s parent then stops the other ranks."""
        _flush()
        os._exit(status)

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcess(Communicator):
    """One process: every collective returns its input (the default, and `--micro-batches`)."""

    def allreduce(self, buf):
        return buf

    def broadcast(self, buf, root=0):
        return buf

    def barrier(self):
        pass


def ordered_sum(parts):
    """parts[0] + parts[1] + ... left to right (parts: (P, n) array or list of (n,) arrays).

    The one summation order of this module, used by the reduction and by the micro-batch twin
    (``dp_step`` adds its pieces the same way), so both give the same bits; NumPy's own
    reductions may pair the terms differently.
    """
    out = parts[0].copy()
    for p in parts[1:]:
        out += p
    return out


def _assign(out, value):
    out[...] = value
    return out


def _chunked(n, size):
    """Chunk length so that `size` equal chunks cover n elements (the last ones zero-padded)."""
    return max(1, -(-n // size))


class MPI(Communicator):
    """mpi4py's COMM_WORLD (or `comm`); device arrays are staged through host memory."""
    kind = "mpi"

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI as mpi
        except ImportError:
            raise DistError("--dist mpi needs mpi4py and an MPI library: pip install -e \".[dist]\" "
                            "(brings mpi4py and the mpich wheel, whose mpiexec launches the ranks)") \
                from None
        self._mpi = mpi
        self.comm = comm if comm is not None else mpi.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)  # ranks on this machine
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    def allreduce(self, buf):
        if self.size == 1:
            return buf
        host = np.ascontiguousarray(backend.to_device(buf, "cpu")).reshape(-1)
        P, chunk = self.size, _chunked(host.size, self.size)
        send = np.zeros(P * chunk, host.dtype)
        send[:host.size] = host
        parts = np.empty((P, chunk), host.dtype)
        self.comm.Alltoall(send, parts)          # parts[r] = rank r's piece of my chunk
        mine = ordered_sum(parts)
        full = np.empty(P * chunk, host.dtype)
        self.comm.Allgather(mine, full)
        return _like(full[:host.size].reshape(np.shape(buf)), buf)

    def broadcast(self, buf, root=0):
        host = np.array(backend.to_device(buf, "cpu"), order="C")  # a copy: buf stays as it is
        self.comm.Bcast(host, root=root)
        return _like(host, buf)

    def barrier(self):
        self.comm.Barrier()

    def bcast_object(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def abort(self, status=1):
        """MPI_Abort on COMM_WORLD: the launcher (mpiexec, srun) kills every rank of the job.

        First a pause of OUTPUT_DRAIN_S: the launcher forwards a rank's output asynchronously
        and drops what it has not forwarded when the job is killed (measured: the traceback
        cut after its first line on a loaded machine)."""
        _flush()
        time.sleep(OUTPUT_DRAIN_S)
        self._mpi.COMM_WORLD.Abort(status)


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):  # closed or replaced streams
            pass


def _like(host, buf):
    """`host` (NumPy) back on buf's device."""
    return backend.to_device(host, backend.device_of(buf))


def _pointer(a):
    """Device address of a CuPy array; the host address of a NumPy one (fake-NCCL tests)."""
    return a.data.ptr if hasattr(a.data, "ptr") else a.ctypes.data


class NCCL(Communicator):
    """One process per GPU, on `cupy.cuda.nccl` (NCCL >= 2.7 for send/recv).

    unique_id: what ``nccl.get_unique_id()`` returned on one rank (128 bytes in CuPy 14), handed
    to all (by ``spawn`` through the environment, or by MPI). The deterministic all-reduce is a grouped send/recv
    all-to-all, an ordered sum on the GPU, then ``allGather`` (see the module docstring).
    ``nccl`` and ``xp`` are replaceable for tests (a fake module driving NumPy buffers).
    """
    kind = "nccl"

    def __init__(self, rank, size, unique_id, local_rank=None, local_size=None, nccl=None, xp=None):
        if nccl is None:
            nccl = _cupy_nccl()
        self._nccl, self._xp = nccl, xp if xp is not None else backend.cupy_module()
        self.rank, self.size = int(rank), int(size)
        self.local_rank = self.rank if local_rank is None else int(local_rank)
        self.local_size = self.size if local_size is None else int(local_size)
        self.comm = nccl.NcclCommunicator(self.size, _id_bytes(unique_id), self.rank)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def _stream(self):
        return self._xp.cuda.get_current_stream().ptr if self._xp is not np else 0

    def _nccl_type(self, dtype):
        try:
            return self._types[np.dtype(dtype)]
        except KeyError:
            raise DistError(f"NCCL allreduce: buffers must be float32 or float64, got {dtype}") from None

    def allreduce(self, buf):
        xp, nccl, P = self._xp, self._nccl, self.size
        dev = xp.ascontiguousarray(xp.asarray(buf)).reshape(-1)
        if P == 1:
            return buf
        t, s, chunk = self._nccl_type(dev.dtype), self._stream(), _chunked(dev.size, P)
        send = xp.zeros(P * chunk, dev.dtype)
        send[:dev.size] = dev
        parts = xp.empty((P, chunk), dev.dtype)
        nccl.groupStart()  # all sends and receives of the all-to-all in flight together
        for peer in range(P):
            self.comm.send(_pointer(send[peer * chunk:]), chunk, t, peer, s)
            self.comm.recv(_pointer(parts[peer]), chunk, t, peer, s)
        nccl.groupEnd()
        mine = ordered_sum(parts)
        full = xp.empty(P * chunk, dev.dtype)
        self.comm.allGather(_pointer(mine), _pointer(full), chunk, t, s)
        out = full[:dev.size].reshape(np.shape(buf))
        return out if backend.device_of(buf) == backend.device_of(out) else out.get()

    def broadcast(self, buf, root=0):
        xp = self._xp
        dev = xp.ascontiguousarray(xp.asarray(buf))
        self.comm.bcast(_pointer(dev), dev.size, self._nccl_type(dev.dtype), root, self._stream())
        return dev if backend.device_of(buf) == backend.device_of(dev) else dev.get()

    def barrier(self):
        # NCCL has no barrier: an all-reduce of one number is one
        self.allreduce(self._xp.zeros(1, np.float32))
        if self._xp is not np:
            self._xp.cuda.get_current_stream().synchronize()


def _cupy_nccl():
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        raise DistError(f"--dist nccl needs CuPy with NCCL: pip install -e \".[cuda]\" "
                        f"nvidia-nccl-cu12 (CUDA 12) or -e \".[cuda13]\" nvidia-nccl-cu13 "
                        f"(CUDA 13) ({e})") from None
    if not getattr(nccl, "available", True):
        raise DistError("--dist nccl: CuPy was built without NCCL (cupy.cuda.nccl.available is "
                        "False): pip install nvidia-nccl-cu12 (CUDA 12) or nvidia-nccl-cu13 "
                       "(CUDA 13)")
    return nccl


# --------------------------------------------------------------------------------------------
# Start-up: which engine, which rank, how many threads, which GPU
# --------------------------------------------------------------------------------------------
def launched_by_mpi(environ=None):
    """(world size, local size) if an MPI launcher (mpiexec, mpirun, srun) started us, else None."""
    env = os.environ if environ is None else environ
    for size_key, _, local_key, _ in _LAUNCHER_ENV:
        if env.get(size_key, "").isdigit():
            local = env.get(local_key, "").split("(")[0]  # Slurm writes e.g. "4(x2)"
            return int(env[size_key]), int(local) if local.isdigit() else None
    return None


def threads_per_rank(local_size, environ=None):
    """Threads for one of `local_size` ranks on this machine: its share of the cores.

    IGC_NP_THREADS wins when set. A rank the launcher bound to some cores (affinity smaller than
    the machine) uses those; otherwise the machine's cores are divided by the ranks on it.
    """
    env = os.environ if environ is None else environ
    if env.get("IGC_NP_THREADS", "").isdigit():
        return max(1, int(env["IGC_NP_THREADS"]))
    cores = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    if allowed < cores:
        return allowed
    return max(1, cores // max(1, local_size))


_blas_limit = None  # kept alive: threadpoolctl undoes the limit when this object is collected


def set_threads(n):
    """Use `n` threads in igc_np's CPU ops and in BLAS from now on (for this process).

    ops/parallel.py reads IGC_NP_THREADS once at import: ``parallel.set_threads`` changes its
    count (and its pool); the variable is set too, for child processes.
    """
    global _blas_limit
    n = parallel.set_threads(max(1, int(n)))
    os.environ["IGC_NP_THREADS"] = str(n)
    try:
        from threadpoolctl import threadpool_limits
        if _blas_limit is not None:  # limits do not stack: start from the original ones
            _blas_limit.restore_original_limits()
        _blas_limit = threadpool_limits(limits=n, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    return n


def init(kind="auto", gpus=None, threads=True):
    """Create the communicator of this process and set it up (threads; the GPU for NCCL).

    kind: "none" (one process), "mpi" (mpi4py, CPU or GPU arrays through the host), "nccl"
    (one process per GPU; rank and unique id from ``spawn``'s environment, else from MPI), or
    "auto": nccl under ``spawn``; under an MPI launcher that started more than one rank, nccl
    if `gpus` names GPUs, else mpi; otherwise none. gpus: GPU ids, e.g. "0,1,2,3" or [0, 1]; the rank
    with local rank i uses gpus[i]. threads: give every rank its share of the CPU cores.
    """
    gpu_ids = _parse_gpus(gpus)
    if kind == "auto":
        launcher = launched_by_mpi()
        if ENV_SIZE in os.environ:
            kind = "nccl"
        elif launcher and launcher[0] > 1:
            kind = "nccl" if gpu_ids else "mpi"
        else:
            kind = "none"
    if kind == "none":
        comm = SingleProcess()
    elif kind == "mpi":
        comm = MPI()
    elif kind == "nccl":
        comm = _init_nccl(gpu_ids)
    else:
        raise DistError(f"--dist {kind!r}: expected one of auto, mpi, nccl, none")
    if kind == "mpi" and gpu_ids:
        _use_gpu(gpu_ids, comm)
    if threads and comm.size > 1:
        set_threads(threads_per_rank(comm.local_size))
    if comm.size > 1:
        abort_on_error(comm)
    return comm


# --------------------------------------------------------------------------------------------
# An error on one rank ends every rank (the others would wait for it forever in a collective)
# --------------------------------------------------------------------------------------------
_active = None  # the communicator of this process once init() made one of several ranks
FOLLOWER_WAIT_S = 10.0
OUTPUT_DRAIN_S = 1.0


def abort_on_error(comm):
    """From now on an exception that escapes on this rank prints its traceback once, headed
    "rank r of P failed", and ends every rank (``comm.abort``: MPI_Abort, or the exit that
    ``spawn``'s parent answers by stopping the others). ``init`` calls it for P > 1."""
    global _active
    _active = comm
    if getattr(sys.excepthook, "_igc_np_abort", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        comm = _active
        if comm is None or comm.size == 1 or issubclass(kind, (SystemExit, KeyboardInterrupt)):
            return previous(kind, value, tb)
        if issubclass(kind, FollowerError):  # rank 0 prints why and aborts the job: give it
            time.sleep(FOLLOWER_WAIT_S)       # the time, then say this much and abort anyway
            print(f"error: {value}", file=sys.stderr)
        else:  # one write: the header and the traceback arrive together
            sys.stderr.write(f"rank {comm.rank} of {comm.size} failed; stopping every rank:\n"
                             + "".join(traceback.format_exception(kind, value, tb)))
        comm.abort(1)
    hook._igc_np_abort = True
    sys.excepthook = hook


def abort_if_distributed(status=1, error=None):
    """For a program that catches its own errors (one line instead of a traceback) and then
    exits with `status` != 0: when this process is one of several ranks, end them all now;
    otherwise return. Call it after printing the error. An `error` that every rank already
    knows of (``root_first`` / ``root_reads``: rank 0's error, the others' FollowerError) needs
    no abort: all ranks leave together, each with its status."""
    if not status or _active is None or _active.size == 1:
        return
    if error is not None and (isinstance(error, FollowerError)
                              or getattr(error, "_igc_np_every_rank_knows", False)):
        return
    print(f"(rank {_active.rank} of {_active.size}: stopping every rank)", file=sys.stderr)
    _active.abort(status)


def _known_to_every_rank(error):
    """Mark rank 0's error once every rank has learnt (by a reduction) that it failed."""
    try:
        error._igc_np_every_rank_knows = True
    except AttributeError:  # an exception type with __slots__: abort_if_distributed aborts
        pass
    return error


def launcher_comm():
    """The MPI communicator when an MPI launcher started several ranks, else SingleProcess: what
    a program can use before ``init`` (e.g. ``root_reads`` of the checkpoint its options come
    from). Ranks started by ``spawn`` share one machine, and its files: SingleProcess."""
    launcher = launched_by_mpi()
    return MPI() if launcher and launcher[0] > 1 and ENV_SIZE not in os.environ else SingleProcess()


def _parse_gpus(gpus):
    if gpus is None or gpus == "":
        return []
    if isinstance(gpus, str):
        try:
            return [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise DistError(f"--gpus must be comma-separated GPU ids such as 0,1,2,3, got {gpus!r}") \
                from None
    return [int(g) for g in gpus]


def _use_gpu(gpu_ids, comm):
    if comm.local_rank >= len(gpu_ids):
        raise DistError(f"rank {comm.rank} is local rank {comm.local_rank} of {comm.local_size} on "
                        f"this machine, but --gpus lists only {len(gpu_ids)} ids ({gpu_ids}): "
                        "give one GPU per rank on each machine")
    backend.cupy_module().cuda.Device(gpu_ids[comm.local_rank]).use()


def _init_nccl(gpu_ids):
    if not gpu_ids:
        raise DistError("--dist nccl needs --gpus, one id per process on each machine (e.g. 0,1,2,3)")
    if ENV_SIZE in os.environ:  # started by spawn(): everything is in the environment
        rank, size = int(os.environ[ENV_RANK]), int(os.environ[ENV_SIZE])
        local_rank, local_size = int(os.environ.get(ENV_LOCAL_RANK, rank)), size
        uid = _decode_id(os.environ[ENV_NCCL_ID])
    else:  # under an MPI launcher: rank 0 makes the id, MPI hands it to the others
        mpi = MPI()
        rank, size, local_rank, local_size = mpi.rank, mpi.size, mpi.local_rank, mpi.local_size
        uid = mpi.bcast_object(_cupy_nccl().get_unique_id() if rank == 0 else None)
    if local_rank >= len(gpu_ids):
        raise DistError(f"rank {rank}: local rank {local_rank} but --gpus lists {len(gpu_ids)} ids "
                        f"({gpu_ids}): give one GPU per rank on each machine")
    backend.cupy_module().cuda.Device(gpu_ids[local_rank]).use()  # before NCCL binds to a device
    comm = NCCL(rank, size, uid, local_rank, local_size)
    if ENV_SIZE not in os.environ:  # ranks of an MPI launcher: an error aborts through MPI
        comm.abort = mpi.abort
    return comm


NCCL_ID_BYTES = 128  # NCCL_UNIQUE_ID_BYTES


def _id_bytes(uid):
    """NCCL's unique id as CuPy 14 takes it: 128 bytes (CuPy < 14 used a tuple of ints)."""
    if not isinstance(uid, bytes):
        raise DistError(f"NCCL unique id: expected the {NCCL_ID_BYTES} bytes of CuPy >= 14's "
                        f"nccl.get_unique_id(), got {type(uid).__name__} (CuPy < 14 is not "
                        "supported: pip install -e \".[cuda]\" or \".[cuda13]\")")
    if len(uid) != NCCL_ID_BYTES:
        raise DistError(f"NCCL unique id: expected {NCCL_ID_BYTES} bytes, got {len(uid)}")
    return uid


def _encode_id(uid):
    """NCCL's unique id (128 bytes) as hex, for an environment variable."""
    return _id_bytes(uid).hex()


def _decode_id(text):
    try:
        return _id_bytes(bytes.fromhex(text))
    except ValueError:
        raise DistError(f"{ENV_NCCL_ID} is not the hex of a {NCCL_ID_BYTES}-byte NCCL id: "
                        f"{text[:40]!r}...") from None


# --------------------------------------------------------------------------------------------
# The data-parallel step
# --------------------------------------------------------------------------------------------
@dataclass
class StepResult:
    """What ``dp_step`` returns, identical on every rank.

    sums: (4,) float64 [sum of loss * rows, rows, top-1 hits, top-5 hits] over the global batch
    (``training.Metrics.sums``); stop: some rank asked to stop after this step; finite: the
    global loss is finite (when False nothing was changed: no update, BN statistics restored).
    """
    sums: np.ndarray
    stop: bool
    finite: bool

    @property
    def loss(self):
        return float(self.sums[0] / max(self.sums[1], 1))


def _bn_buffers(model):
    """The running statistics (every Module buffer) as (module, attribute) pairs, in order."""
    return [(m, key) for _, m, key in model.named_buffers()]


def _flatten(arrays, xp, dtype):
    return xp.concatenate([a.reshape(-1).astype(dtype, copy=False) for a in arrays]) \
        if arrays else xp.zeros(0, dtype)


def dp_step(model, optimizer, xb, yb, comm, micro_batches=1, loss_fn=None, stop=False,
            global_batch=None):
    """One data-parallel training step; returns a StepResult (the same on every rank).

    xb (B, C, H, W), yb (B,): arrays (NumPy, CuPy) or Tensors; the global batch, of which this
    rank uses ``slice_of(B, rank, size)``; or, with ``global_batch=B``, this rank's slice already
    (a loader that builds only its rows). micro_batches K: the rank's slice is cut into K pieces
    run one after another (BatchNorm per piece), the exact twin of K ranks. loss_fn(logits,
    labels) -> mean loss Tensor (default cross entropy). stop: this rank wants to stop after this
    step (Ctrl-C, SIGTERM, SIGUSR1: ``training.GracefulInterrupt.requested``); it is reduced with
    the metrics, so all ranks stop after the same batch.

    One process and one piece is ``igc_np.step.train_step`` itself (the update is then applied
    whatever the loss; ``finite`` reports it, as the one-process trainer checks it).
    """
    loss_fn = loss_fn or F.cross_entropy
    xb, yb = (v.data if isinstance(v, Tensor) else v for v in (xb, yb))  # arrays, any device
    K, P = int(micro_batches), comm.size
    if K < 1:
        raise ValueError(f"dp_step: micro_batches must be >= 1, got {micro_batches}")
    B = len(xb) if global_batch is None else int(global_batch)
    mine = _rows_of_this_rank(xb, yb, comm, B, global_batch is not None)
    if P == 1 and K == 1 and loss_fn is F.cross_entropy:
        return _train_step(model, optimizer, xb, yb, stop)

    buffers = _bn_buffers(model)
    start = [getattr(m, key).copy() for m, key in buffers]
    sums, grads, stats = _run_pieces(model, optimizer, xb, yb, mine, K, B, loss_fn, buffers, start)
    sums, stop, finite = _reduce_metrics(comm, sums, stop)
    if not finite:  # leave the model exactly as it was before this step
        _set_statistics(buffers, start)
        optimizer.zero_grad()
        return StepResult(sums, stop, finite)
    # one buffer, one reduction: the gradients and the running statistics together
    xp = backend.get_array_module(model.device)
    total = comm.allreduce(xp.concatenate([grads, stats]))
    pieces = sum(1 for r in range(P) for k in range(K)
                 if _piece_rows(B, r, P, k, K) > 0)  # the same count on every rank
    _apply_reduction(total, optimizer.params, buffers, start, pieces)
    optimizer.step()
    return StepResult(sums, stop, finite)


def _rows_of_this_rank(xb, yb, comm, B, given_slice):
    """This rank's rows of the global batch of B (a slice of xb), with the arguments checked."""
    mine = slice_of(B, comm.rank, comm.size)
    if given_slice:
        if len(xb) != mine.stop - mine.start:
            raise ValueError(f"dp_step: rank {comm.rank} of {comm.size} should get rows {mine.start}.."
                             f"{mine.stop} ({mine.stop - mine.start}) of the global batch of {B}, "
                             f"got {len(xb)} rows")
        mine = slice(0, len(xb))
    if len(yb) != len(xb):
        raise ValueError(f"dp_step: {len(xb)} images but {len(yb)} labels")
    return mine


def _train_step(model, optimizer, xb, yb, stop):
    """One process, one piece: ``igc_np.step.train_step``, and the metric sums it leaves."""
    device = model.device
    loss, logits = train_step(model, optimizer, Tensor(xb, device=device),
                                       Tensor(yb, device=device))
    sums = _sums(loss.item(), logits.numpy(), backend.to_device(yb, "cpu"))
    return StepResult(sums, bool(stop), bool(np.isfinite(sums[0])))


def _run_pieces(model, optimizer, xb, yb, mine, K, B, loss_fn, buffers, start):
    """Forward and backward of this rank's K pieces; returns (metric sums, the gradients of all
    parameters summed over the pieces, the pieces' running statistics summed), the last two
    as flat buffers. Piece j of n_j rows back-propagates (n_j / B) * its mean loss; every piece
    starts from the running statistics `start`."""
    device, params = model.device, optimizer.params
    xp = backend.get_array_module(device)
    dtype = np.result_type(*[p.dtype for p in params], *[s.dtype for s in start])
    rows = mine.stop - mine.start
    sums, grads, stats = np.zeros(4), None, None
    for k in range(K):
        piece = slice_of(rows, k, K)
        n = piece.stop - piece.start
        if n == 0:  # fewer rows than pieces (a small last batch): this piece adds nothing
            continue
        lo, hi = mine.start + piece.start, mine.start + piece.stop
        if grads is not None:  # every piece starts from the same running statistics
            _set_statistics(buffers, start)
        optimizer.zero_grad()
        logits = model(Tensor(xb[lo:hi], device=device))
        loss = loss_fn(logits, Tensor(yb[lo:hi], device=device))
        value = loss.item()
        sums += _sums(value, logits.numpy(), backend.to_device(yb[lo:hi], "cpu"))
        if np.isfinite(value):  # else the step is skipped anyway: no need for a backward pass
            (loss * (n / B)).backward()
        g = _flatten([p.grad if p.grad is not None else xp.zeros(p.shape, dtype) for p in params],
                     xp, dtype)
        st = _flatten([getattr(m, key) for m, key in buffers], xp, dtype)
        if grads is None:
            grads, stats = g, st
        else:  # pieces in order, as ordered_sum
            grads += g
            stats += st
    if grads is None:  # this rank has no rows at all: it still takes part in every collective
        grads = xp.zeros(sum(p.size for p in params), dtype)
        stats = xp.zeros(sum(s.size for s in start), dtype)
    return sums, grads, stats


def _reduce_metrics(comm, sums, stop):
    """(global metric sums, some rank asked to stop, the global loss is finite): one reduction."""
    small = comm.allreduce(np.concatenate([sums, [float(bool(stop))]]))
    return small[:4].copy(), bool(small[4] > 0), bool(np.isfinite(small[0]))


def _set_statistics(buffers, values):
    for (m, key), v in zip(buffers, values):  # plain arrays, in place: the modules see them
        _assign(getattr(m, key), v)


def _apply_reduction(total, params, buffers, start, pieces):
    """The reduced flat buffer back into the parameters' gradients and, averaged over the
    `pieces` non-empty pieces of all ranks, into the running statistics."""
    offset = 0
    for p in params:
        p.grad = total[offset:offset + p.size].reshape(p.shape).astype(p.dtype, copy=False)
        offset += p.size
    for (m, key), s in zip(buffers, start):
        _assign(getattr(m, key), (total[offset:offset + s.size] / pieces).reshape(s.shape))
        offset += s.size


def _piece_rows(B, r, P, k, K):
    mine = slice_of(B, r, P)
    piece = slice_of(mine.stop - mine.start, k, K)
    return piece.stop - piece.start


def _sums(loss, logits, labels):
    """training.Metrics' sums of one piece: [loss * rows, rows, top-1 hits, top-5 hits]."""
    m = Metrics()
    m.update(loss, logits, labels)
    return m.sums


def reduce_sums(comm, sums):
    """Element-wise sum over ranks (float64, rank order) of metric sums; the same on every rank."""
    return comm.allreduce(np.asarray(sums, dtype=np.float64))


def reduce_flag(comm, flag):
    """True on every rank if `flag` is true on any rank (stop requests, errors)."""
    return bool(reduce_sums(comm, [float(bool(flag))])[0] > 0)


def root_first(comm, fn, errors=(Exception,)):
    """Run ``fn()`` on rank 0 alone (a check, a lock, a file); if it raises one of `errors`,
    every rank raises (rank 0 that error, the others a DistError saying so), so that no rank
    goes on training alone or waits forever for rank 0 in the next collective."""
    error = None
    if comm.is_root:
        try:
            fn()
        except errors as e:
            error = e
    if reduce_flag(comm, error is not None):
        if error is not None:
            raise _known_to_every_rank(error)
        raise FollowerError(f"rank {comm.rank}: stopping because rank 0 failed (its message says why)")


def broadcast_bytes(comm, data, root=0):
    """Root's `data` (bytes; the other ranks pass anything) on every rank, as bytes.

    Sent as float64 words through ``comm.broadcast``: a broadcast copies bits (MPI_Bcast, ncclBcast
    compute nothing), so any bytes arrive unchanged on every engine."""
    n = int(comm.broadcast(np.array([len(data) if comm.rank == root else 0], np.float64), root)[0])
    words = np.zeros(-(-n // 8), np.float64)
    if comm.rank == root:
        words.view(np.uint8)[:n] = np.frombuffer(data, np.uint8)
    got = np.asarray(backend.to_device(comm.broadcast(words, root), "cpu"))
    return got.view(np.uint8)[:n].tobytes()


def root_reads(comm, fn, errors=(Exception,)):
    """``fn()`` run on rank 0 alone, its result on every rank: a file (a checkpoint) that only
    rank 0 can see, on a cluster without a shared file system.

    The result travels pickled through ``broadcast_bytes`` (rank 0's own objects, from the same
    program: never bytes from a file). If fn raises one of `errors`, every rank raises (rank 0
    that error, the others a DistError saying so), as ``root_first``."""
    if comm.size == 1:
        return fn()
    payload, error = b"", None
    if comm.is_root:
        try:
            payload = pickle.dumps(fn(), protocol=pickle.HIGHEST_PROTOCOL)
        except errors as e:
            error = e
    if reduce_flag(comm, error is not None):
        if error is not None:
            raise _known_to_every_rank(error)
        raise FollowerError(f"rank {comm.rank}: stopping because rank 0 could not read what every "
                        "rank needs (its message says why)")
    return pickle.loads(broadcast_bytes(comm, payload))


def evaluate_ranks(model, x, y, mean, std, comm, batch_size=256, device="cpu", dtype=np.float32):
    """Test-set Metrics with the images split over ranks (rank r: ``slice_of(N, r, P)``), reduced.

    Same arguments as ``training.evaluate`` plus `comm`; every rank gets the same Metrics.
    """
    part = slice_of(len(x), comm.rank, comm.size)
    local = evaluate_one(model, x[part], y[part], mean, std, batch_size, device, dtype) \
        if part.stop > part.start else Metrics()
    return Metrics(reduce_sums(comm, local.sums))


# Signals (SIGINT, SIGTERM, SIGUSR1) are caught by training.GracefulInterrupt; a loop passes its
# flag to dp_step(stop=...) or reduce_flag() so that every rank stops after the same batch.
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


# --------------------------------------------------------------------------------------------
# --gpus 0,1,2,3: one process per GPU, started here
# --------------------------------------------------------------------------------------------
def should_spawn(kind, gpus, environ=None):
    """True when a trainer given these options should start one process per GPU (``spawn``):
    several --gpus, --dist auto or nccl, and not already a rank (of spawn or of an MPI launcher)."""
    env = os.environ if environ is None else environ
    launcher = launched_by_mpi(env)
    return (kind in ("auto", "nccl") and len(_parse_gpus(gpus)) > 1 and ENV_SIZE not in env
            and not (launcher and launcher[0] > 1))


def _die_with_parent():
    """In a child, before exec: get SIGTERM when the parent dies (Linux), not linger in NCCL."""
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# Over ~60 lines: a docstring of the signal and failure rules, and one try/finally that must
# install the handlers before the children start and restore them after the last one ends.
def spawn(gpus, argv, nccl=None, grace_s=3.0, executable=None):
    """Run ``python argv...`` once per GPU id (NCCL ranks) and wait; returns the exit status.

    Each child gets ``IGC_NP_DIST_RANK/SIZE/LOCAL_RANK``, the NCCL unique id made here, and its
    share of the cores in ``IGC_NP_THREADS``; ``init("auto")`` in the child reads them. The
    children run in their own process group, so a terminal's Ctrl-C reaches this parent only,
    which forwards SIGINT, SIGTERM and SIGUSR1 to every child exactly once. When a child fails
    (it printed its error), the others, which would wait forever in a collective and cannot
    save anything, get SIGTERM, then SIGKILL after `grace_s` seconds; this parent says once
    which rank failed. The status is the one of the first child that failed, else 0.
    """
    gpu_ids = _parse_gpus(gpus)
    if not gpu_ids:
        raise DistError("spawn: --gpus names no GPU")
    if len(set(gpu_ids)) != len(gpu_ids):
        raise DistError(f"--gpus {gpus}: an id appears twice; one process per GPU needs distinct ids")
    nccl = nccl if nccl is not None else _cupy_nccl()
    uid = _encode_id(nccl.get_unique_id())
    size = len(gpu_ids)
    threads = threads_per_rank(size)
    children = []

    forwarded = []  # after a forwarded signal every rank stops by itself (rank 0 saves)

    def forward(signum, frame):
        forwarded.append(signum)
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)
    previous = {}  # installed before the children start: no signal falls between
    for name in FORWARDED_SIGNALS:
        try:
            previous[name] = signal.signal(getattr(signal, name), forward)
        except ValueError:  # not the main thread: no forwarding
            break
    try:
        for rank in range(size):
            env = dict(os.environ, **{ENV_RANK: str(rank), ENV_SIZE: str(size),
                                      ENV_LOCAL_RANK: str(rank), ENV_NCCL_ID: uid,
                                      "IGC_NP_THREADS": str(threads)})
            children.append(subprocess.Popen([executable or sys.executable, *argv], env=env,
                                             start_new_session=True, preexec_fn=_die_with_parent))
        codes, failed_at, status = [None] * size, None, 0
        while any(c is None for c in codes):
            for i, c in enumerate(children):
                if codes[i] is None:
                    codes[i] = c.poll()
                    if codes[i] not in (None, 0) and not status:
                        status = codes[i]
                    if codes[i] not in (None, 0) and failed_at is None and not forwarded:
                        failed_at = time.monotonic()
                        print(f"rank {i} (GPU {gpu_ids[i]}) failed with exit status {codes[i]}: "
                              "stopping the other ranks", file=sys.stderr)
                        for other in children:
                            if other.poll() is None:
                                other.terminate()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for c in children:
                    if c.poll() is None:
                        c.kill()
            time.sleep(0.05)
    except BaseException:  # a rank that cannot start: the others would wait for it forever
        for c in children:
            if c.poll() is None:
                c.kill()
        raise
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
    return status
