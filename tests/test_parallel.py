"""The CPU thread helpers (igc_np/ops/parallel.py): results, errors, and the BLAS thread limit."""
import threading
import time

import numpy as np
import pytest

from igc_np.ops import parallel


@pytest.fixture
def two_threads(monkeypatch):
    """Force the threaded paths even on a one-core machine."""
    monkeypatch.setattr(parallel, "THREADS", 2)
    monkeypatch.setattr(parallel, "_pool", None)


def test_run_uses_the_caller_and_a_pool_thread(two_threads):
    seen = [None, None]

    def task(i):
        seen[i] = threading.current_thread()
    parallel.run([lambda: task(0), lambda: task(1)])
    assert seen[0] is threading.main_thread() and seen[1] is not threading.main_thread()


@pytest.mark.parametrize("failing", [0, 1])
def test_run_reraises_only_after_every_task_ended(two_threads, failing):
    """An error in any task reaches the caller, but only once the other task stopped writing."""
    finished = []

    def slow():
        time.sleep(0.05)
        finished.append(True)

    def bad():
        raise ValueError("task failed")
    tasks = [bad, slow] if failing == 0 else [slow, bad]
    with pytest.raises(ValueError, match="task failed"):
        parallel.run(tasks)
    assert finished == [True]


def _numpy_blas_threads():
    from threadpoolctl import threadpool_info
    return [d["num_threads"] for d in threadpool_info()
            if d["user_api"] == "blas" and "numpy" in d["filepath"]]


def test_numpy_blas_is_single_threaded_inside_a_region_and_restored_after(two_threads):
    before = _numpy_blas_threads()
    inside = []
    parallel.run([lambda: inside.append(_numpy_blas_threads()), lambda: None])
    assert inside[0] and all(n == 1 for n in inside[0])
    assert _numpy_blas_threads() == before


@pytest.mark.parametrize("n", [1, 1023, 1024, 2 * 1024 + 5])
def test_matmul_and_matmul_reduce_over_column_blocks(two_threads, n):
    """Blocks of CHUNK columns (or reduction entries) split over threads, edges included, on
    strided views like the interleaved partitions."""
    rng = np.random.default_rng(n)
    a = rng.standard_normal((3, 5, 7)).astype(np.float32)
    b = rng.standard_normal((7, 3, n)).astype(np.float32).transpose(1, 0, 2)  # row stride 3n
    out = np.full((3, 5, n), np.nan, np.float32)
    parallel.matmul(a, b, out=out)
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-5, atol=1e-5)
    g = rng.standard_normal((3, 5, n)).astype(np.float32)
    np.testing.assert_allclose(parallel.matmul_reduce(g, b.transpose(0, 2, 1)),
                               np.matmul(g, b.transpose(0, 2, 1)), rtol=1e-4, atol=1e-3)


def test_for_each_visits_every_item_once_on_at_most_threads_threads(two_threads):
    seen, lock = [], threading.Lock()

    def visit(t, item):
        time.sleep(0.001 * (item % 3))  # uneven items: the dynamic schedule still covers all
        with lock:
            seen.append((t, item))
    k = parallel.for_each(range(17), visit)
    assert k == 2 and sorted(i for _, i in seen) == list(range(17))
    assert {t for t, _ in seen} <= {0, 1}
    assert parallel.for_each([], visit) == 0


class _FakeBlas:
    """A BLAS library controller that records its thread count."""

    def __init__(self, n):
        self.num_threads = n

    def set_num_threads(self, n):
        self.num_threads = n


def test_blas_limit_is_restored_by_the_last_of_two_overlapping_regions():
    """Two Python threads in parallel regions at once: the first to leave must not restore BLAS's
    threads under the other, and the last must restore the original count (not the other's 1)."""
    blas = parallel._SingleThreadedBlas()
    blas.libs = [_FakeBlas(4)]
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with blas:
            a_inside.set()
            b_inside.wait()
        a_left.set()

    def b():
        a_inside.wait()
        with blas:
            b_inside.set()
            a_left.wait()
            seen["while b runs"] = blas.libs[0].num_threads
    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"while b runs": 1} and blas.libs[0].num_threads == 4


def test_two_python_threads_share_the_pool(two_threads):
    """Concurrent callers each get their own results from the one pool, errors included."""
    barrier, results, errors = threading.Barrier(2), {}, []

    def caller(k):
        try:
            barrier.wait()
            for i in range(50):
                out = [None] * 6
                parallel.run([lambda j=j: out.__setitem__(j, (k, i, j)) for j in range(6)])
                assert out == [(k, i, j) for j in range(6)]
                s = parallel.matmul_reduce(np.full((1, 1, 3000), float(k + 1)), np.ones((1, 3000, 1)))
                assert s[0, 0, 0] == 3000.0 * (k + 1)
            results[k] = True
        except BaseException as e:  # noqa: B902 - reported below
            errors.append(e)
    workers = [threading.Thread(target=caller, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors and results == {0: True, 1: True}


def test_reductions_have_the_same_bits_for_every_thread_count(monkeypatch):
    """The weight gradients (matmul_reduce, the conv's tiles) add their blocks in a fixed order: one
    thread, three threads and a slowed thread give identical bits (a per-thread sum would not)."""
    from igc_np.ops import cpu_conv
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 3, 9000)).astype(np.float32)
    b = rng.standard_normal((2, 9000, 4)).astype(np.float32)
    x = rng.standard_normal((8, 6, 20, 20)).astype(np.float32)
    gy = rng.standard_normal((8, 4, 20, 20)).astype(np.float32)
    monkeypatch.setattr(cpu_conv, "TILE_BYTES", 1 << 14)  # many tiles
    _, x_pad = cpu_conv.conv2d_forward(x, np.zeros((4, 3, 3, 3), np.float32), (1, 1), (1, 1), 2)
    results = []
    for threads, slow in ((1, False), (3, False), (3, True), (2, True)):
        monkeypatch.setattr(parallel, "THREADS", threads)
        monkeypatch.setattr(parallel, "_pool", None)
        real = np.matmul

        def matmul(*args, **kwargs):  # the first thread to call it sleeps: others take more blocks
            if slow and threading.current_thread() is threading.main_thread():
                time.sleep(0.002)
            return real(*args, **kwargs)
        monkeypatch.setattr(np, "matmul", matmul)
        results.append((parallel.matmul_reduce(a, b),
                        cpu_conv.conv2d_backward_weight(x_pad, gy, (4, 3, 3, 3), (1, 1), 2)))
        monkeypatch.setattr(np, "matmul", real)
    for r, g in results[1:]:
        assert r.tobytes() == results[0][0].tobytes() and g.tobytes() == results[0][1].tobytes()
