"""Split NumPy work over CPU threads (the CPU path only).

NumPy releases the GIL inside copies and BLAS calls, so plain Python threads run them in parallel.
The conv code hands us independent pieces of work (slabs of channels, chunks of output rows);
inside a parallel region BLAS is held to one thread so that threads do not oversubscribe cores
(measured on 2 cores: im2col + grouped matmul 2.7x faster than one big BLAS-threaded call).

The number of threads is ``os.cpu_count()`` unless ``IGC_NP_THREADS`` says otherwise (read at
import; ``set_threads(n)`` changes it later). With one thread, BLAS is held to one thread as well.
"""
import contextlib
import os
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


def _single_threaded_blas():
    """A context that limits BLAS to one thread (no-op without threadpoolctl)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = ThreadpoolController()
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            _blas = False
    if _blas is False:
        return contextlib.nullcontext()
    return _blas.limit(limits=1, user_api="blas")


def run(tasks):
    """Run callables (no arguments) on the thread pool and wait; re-raise the first error."""
    global _pool, _started
    if not _started:  # the CPU engine's first real work: tune the allocator once (see backend)
        _started = True
        backend.keep_freed_memory()
    if THREADS == 1 or len(tasks) == 1:
        for task in tasks:
            task()
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="igc_np")
    with _single_threaded_blas():
        futures = [_pool.submit(task) for task in tasks]
        for f in futures:
            f.result()


def split(n, parts=None):
    """[(0, a), (a, b), ...]: `n` items in at most `parts` contiguous, near-equal ranges."""
    parts = min(parts or THREADS, n)
    bounds = [n * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


def over_range(n, fn):
    """fn(start, stop) for contiguous ranges covering range(n), one per thread."""
    run([lambda a=a, b=b: fn(a, b) for a, b in split(n)])


def matmul(a, b, out=None):
    """a (G, m, k) @ b (G, k, n) -> (G, m, n); columns split over threads.

    Operands may be strided views (e.g. the interleaved channel views of permute_channels):
    BLAS reads any row stride, so no copy is made.
    """
    G, m, _ = a.shape
    n = b.shape[2]
    if out is None:
        out = np.empty((G, m, n), np.result_type(a, b))
    if n < 4096 or THREADS == 1:
        np.matmul(a, b, out=out)
        return out
    run([lambda c0=c0, c1=c1: np.matmul(a, b[:, :, c0:c1], out=out[:, :, c0:c1]) for c0, c1 in split(n)])
    return out


def matmul_reduce(a, b):
    """a (G, m, K) @ b (G, K, n) -> (G, m, n) for a long reduction axis K (weight gradients):
    each thread sums a slice of K, then the small partial products are added."""
    K = a.shape[2]
    if K < 4096 or THREADS == 1:
        return np.matmul(a, b)
    parts = [None] * len(split(K))

    def work(p, k0, k1):
        parts[p] = np.matmul(a[:, :, k0:k1], b[:, k0:k1, :])
    run([lambda p=p, k0=k0, k1=k1: work(p, k0, k1) for p, (k0, k1) in enumerate(split(K))])
    return sum(parts[1:], parts[0])


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
