"""Split NumPy work over CPU threads (the CPU path only).

NumPy releases the GIL inside copies and BLAS calls, so plain Python threads run them in parallel.
The conv code hands us independent pieces of work (slabs of channels, chunks of output rows);
inside a parallel region BLAS is held to one thread so that threads do not oversubscribe cores
(measured on 2 cores: im2col + grouped matmul 2.7x faster than one big BLAS-threaded call).

The number of threads is ``os.cpu_count()`` unless ``IGC_NP_THREADS`` says otherwise (read at
import; ``set_threads(n)`` changes it later). With one thread, BLAS is held to one thread as well.

Several Python threads may call in at once (two models trained side by side): they share the one
pool (its queue is thread-safe; every call keeps its own tasks, results and thread indices) and
the BLAS limit (counted, see _SingleThreadedBlas). Only ``set_threads`` must not run while
another thread computes.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import backend


def _threads_from_environment():
    value = os.environ.get("IGC_NP_THREADS")
    if value is None:
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"IGC_NP_THREADS={value}: must be a positive integer (number of CPU "
                         "threads), or unset")
    return n


THREADS = _threads_from_environment()
_pool = None
_blas = None
_started = False
_blas_held = None  # threadpoolctl's limit of BLAS to 1 thread while THREADS == 1


def _hold_blas_with_one_thread():
    """THREADS == 1: limit BLAS to one thread too; else undo that limit.

    Left alone, BLAS keeps a thread per core in every call outside our parallel regions: with
    IGC_NP_THREADS=1 per rank the ranks oversubscribe the cores (measured on 2 cores, 2 ranks:
    a training step took 10.3-11.5 s against 2.46 s).
    """
    global _blas_held
    if THREADS == 1 and _blas_held is None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            return
        _blas_held = threadpool_limits(limits=1, user_api="blas")
    elif THREADS > 1 and _blas_held is not None:
        _blas_held.restore_original_limits()
        _blas_held = None


def set_threads(n):
    """Use `n` (>= 1) threads from now on: drops a pool made with the old count; n == 1 also
    holds BLAS to one thread. Returns n."""
    global THREADS, _pool
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"set_threads: n must be a positive integer (number of CPU threads), "
                         f"got {n!r}")
    n = int(n)
    if n != THREADS:
        THREADS = n
        if _pool is not None:
            _pool.shutdown()
            _pool = None
    _hold_blas_with_one_thread()
    return n


_hold_blas_with_one_thread()


class _SingleThreadedBlas:
    """A context that holds BLAS to one thread (no-op without threadpoolctl).

    threadpoolctl's ``limit()`` context re-reads every library's state on each entry (~10 us);
    a parallel region is entered ~700 times per resnet_igc-20 step, so keep the controllers of
    the BLAS libraries loaded when the engine first runs (NumPy's, the one it calls) and call
    their setters directly (~2 us).

    Two Python threads may be inside parallel regions at once (two models trained side by side):
    the BLAS setting is process-wide, so the first region to enter saves it and the last to leave
    restores it (a count under a lock), never one thread restoring while the other still runs.
    """

    def __init__(self):
        try:
            from threadpoolctl import ThreadpoolController
            self.libs = ThreadpoolController().select(user_api="blas").lib_controllers
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            self.libs = []
        self.saved = []
        self.inside = 0  # parallel regions running now, over all Python threads
        self.lock = threading.Lock()

    def __enter__(self):
        with self.lock:
            if self.inside == 0:
                self.saved = [lib.num_threads for lib in self.libs]
                for lib in self.libs:
                    lib.set_num_threads(1)
            self.inside += 1

    def __exit__(self, *exc):
        with self.lock:
            self.inside -= 1
            if self.inside == 0:
                for lib, n in zip(self.libs, self.saved):
                    lib.set_num_threads(n)


_setup_lock = threading.Lock()  # the pool and the BLAS controller are made once, by one thread


def _single_threaded_blas():
    global _blas
    if _blas is None:
        with _setup_lock:
            if _blas is None:
                _blas = _SingleThreadedBlas()
    return _blas


def _thread_pool():
    global _pool
    pool = _pool
    if pool is None:
        with _setup_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(THREADS - 1, thread_name_prefix="igc_np")
            pool = _pool
    return pool


def run(tasks):
    """Run callables (no arguments) on the thread pool and wait; re-raise the first error.

    The calling thread runs the first task itself (one hand-off fewer per region: ~20 us, and
    regions are short) and waits for the others even when its own task fails, so no task is
    still writing into shared arrays when the error reaches the caller.
    """
    global _started
    if not _started:  # the CPU engine's first real work: tune the allocator once (see backend)
        _started = True
        backend.keep_freed_memory()
    if THREADS == 1 or len(tasks) == 1:
        for task in tasks:
            task()
        return
    pool = _thread_pool()
    with _single_threaded_blas():
        futures = [pool.submit(task) for task in tasks[1:]]
        error = None
        try:
            tasks[0]()
        except BaseException as e:  # noqa: B902 - re-raised below, after the other tasks end
            error = e
        for f in futures:
            try:
                f.result()
            except BaseException as e:  # noqa: B902
                error = error or e
        if error is not None:
            raise error


def split(n, parts=None):
    """[(0, a), (a, b), ...]: `n` items in at most `parts` contiguous, near-equal ranges."""
    parts = min(parts or THREADS, n)
    bounds = [n * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


def for_each(items, fn):
    """fn(t, item) for every item, the threads (t = 0, 1, ...) each taking the next item as they
    finish the last: a dynamic schedule, so a thread slowed by another process or a larger item
    does not leave the others idle at the end. Returns the number of threads used (t < that).
    A single item runs on the caller with BLAS free to use its own threads (see run)."""
    items = list(items)
    k = min(THREADS, len(items))
    if k == 0:
        return 0
    shared = iter(items)  # a list iterator's next() is atomic under the GIL

    def work(t):
        for item in shared:
            fn(t, item)
    run([lambda t=t: work(t) for t in range(k)])
    return k


def over_range(n, fn):
    """fn(start, stop) for contiguous ranges covering range(n), one per thread."""
    run([lambda a=a, b=b: fn(a, b) for a, b in split(n)])


# Columns (matmul) or reduction length (matmul_reduce) handed to BLAS per call. The operands of
# the CPU engine are often strided views whose rows lie a power of two apart (a channel of a
# 32x32x64 (C, H, W, N) array is 256 KiB): BLAS packing of long rows then evicts itself from the
# cache sets those rows share. Blocks of 1024 columns keep one call's rows resident; measured on
# the secondary matmuls of IGC-L24M8 at 8x8 (K = 24): 1.0 ms -> 0.6 ms, forward and gradient.
CHUNK = 1024


def _chunks(n):
    return [(c0, min(c0 + CHUNK, n)) for c0 in range(0, n, CHUNK)]


def matmul(a, b, out=None):
    """a (G, m, k) @ b (G, k, n) -> (G, m, n); blocks of columns split over threads.

    Operands may be strided views (e.g. the interleaved channel views of permute_channels):
    BLAS reads any row stride, so no copy is made.
    """
    G, m, _ = a.shape
    n = b.shape[2]
    if out is None:
        out = np.empty((G, m, n), np.result_type(a, b))
    for_each(_chunks(n), lambda t, c: np.matmul(a, b[:, :, c[0]:c[1]], out=out[:, :, c[0]:c[1]]))
    return out


def matmul_reduce(a, b):
    """a (G, m, K) @ b (G, K, n) -> (G, m, n) for a long reduction axis K (weight gradients).

    The threads multiply blocks of K, whichever thread gets which; the block products are then
    added in block order, so the result has the same bits for every thread count and timing
    (a sum per thread would depend on which blocks each thread happened to take)."""
    chunks = _chunks(a.shape[2])
    products = [None] * len(chunks)

    def mul(t, i):
        c0, c1 = chunks[i]
        products[i] = np.matmul(a[:, :, c0:c1], b[:, c0:c1, :])
    for_each(range(len(chunks)), mul)
    return ordered_sum(products, (a.shape[0], a.shape[1], b.shape[2]), np.result_type(a, b))


def ordered_sum(parts, shape, dtype):
    """zeros(shape) + parts[0] + parts[1] + ..., in this order: the same bits however the parts
    were computed (the reductions of the CPU tier; see matmul_reduce)."""
    total = np.zeros(shape, dtype)
    for p in parts:
        total += p
    return total


def elementwise(fn, out, *arrays):
    """fn(out_part, *array_parts) over slices of the memory-outermost axis of `out`, one per thread.

    For an elementwise op every split is correct; splitting the axis with the largest stride gives
    each thread one contiguous block (the channel axis of the conv's (C, H, W, N) memory).
    """
    if out.size < 1 << 16 or THREADS == 1:
        fn(out, *arrays)
        return out
    axis = int(np.argmax(out.strides))

    def part(a, b):
        sl = (slice(None),) * axis + (slice(a, b),)  # built per task: threads share no index
        fn(out[sl], *[x[sl] for x in arrays])
    run([lambda a=a, b=b: part(a, b) for a, b in split(out.shape[axis])])
    return out
