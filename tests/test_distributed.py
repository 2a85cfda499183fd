"""Data-parallel training (igc_np/distributed.py): MPI ranks equal the micro-batch twin bit for bit.

The MPI tests launch tests/dist_worker.py with ``mpiexec -n P`` (the mpich wheel of the `dist`
extra) and compare rank 0's final state with ``dist_worker.run(..., micro_batches=P)`` run here
in one process. NCCL is tested against a fake ``cupy.cuda.nccl`` that moves bytes between
threads through the raw pointers, as NCCL does; the real-GPU test needs two GPUs.
"""
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, strategies as st

import igc_np as ig
from igc_np.app import distributed as dist
from igc_np import functional as F, nn, optim

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dist_worker  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "dist_worker.py")


def _have_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpiexec") is not None


needs_mpi = pytest.mark.skipif(not _have_mpi(), reason="needs mpi4py and mpiexec: pip install -e "
                                                       "\".[dist]\" (mpi4py + the mpich wheel)")


def _equal_states(a, b):
    """Names whose arrays differ (bit for bit) between two dist_worker.pack() dicts."""
    return [k for k in a if k in b and not np.array_equal(np.asarray(a[k]), np.asarray(b[k]))]


# --------------------------------------------------------------------------------------------
# slicing and the summation order
# --------------------------------------------------------------------------------------------
@given(st.integers(0, 300), st.integers(1, 9))
def test_slice_of_covers_the_batch_in_order_with_near_equal_parts(B, P):
    parts = [dist.slice_of(B, r, P) for r in range(P)]
    assert parts[0].start == 0 and parts[-1].stop == B
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_slice_of_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 3 is not in 0..2"):
        dist.slice_of(10, 3, 3)


def test_ordered_sum_adds_left_to_right():
    # 1e16 + 1 - 1e16 is 0 left to right (the 1 is lost) but 1 in another pairing
    parts = np.array([[1e16], [1.0], [-1e16]])
    assert dist.ordered_sum(parts)[0] == 0.0
    assert dist.ordered_sum(parts[[0, 2, 1]])[0] == 1.0


# --------------------------------------------------------------------------------------------
# dp_step on one process: the plain step, the gradient of the global mean, per-piece BN
# --------------------------------------------------------------------------------------------
def _plain_steps(model, opt, data):
    """Today's single-process training step (examples/cifar10_igc.py), for comparison."""
    for xb, yb in data:
        logits = model(ig.Tensor(xb))
        loss = F.cross_entropy(logits, ig.Tensor(yb))
        opt.zero_grad()
        loss.backward()
        opt.step()


def _data(steps=3, seed=5):
    gen = dist_worker.batches(0, np.random.default_rng(seed).bit_generator.state)
    return [next(gen)[:2] for _ in range(steps)]


def test_one_rank_one_piece_is_the_plain_step_bit_for_bit(monkeypatch):
    data = _data()
    model_a, opt_a = dist_worker.make_model()
    _plain_steps(model_a, opt_a, data)
    model_b, opt_b = dist_worker.make_model()
    calls, real = [], dist.train_step
    monkeypatch.setattr(dist, "train_step", lambda *a: calls.append(1) or real(*a))
    for xb, yb in data:
        r = dist.dp_step(model_b, opt_b, xb, yb, dist.SingleProcess())
    assert len(calls) == len(data)  # the one-process case is igc_np.step.train_step itself
    a = dist_worker.pack(model_a, opt_a, 0, {}, np.zeros(4))
    b = dist_worker.pack(model_b, opt_b, 0, {}, np.zeros(4))
    assert _equal_states(a, b) == []
    assert r.finite and not r.stop and r.sums[1] == len(data[-1][1])


def _linear_model(seed=0):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10, rng=np.random.default_rng(seed)))
    model.to("cpu", np.float64)
    return model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_pieces_sum_to_the_gradient_of_the_mean_loss_over_the_whole_batch(K):
    # no BatchNorm: cutting the batch changes only the rounding, lr stays the same
    data = _data(steps=2)
    model_a, opt_a = _linear_model()
    _plain_steps(model_a, opt_a, data)
    model_b, opt_b = _linear_model()
    for xb, yb in data:
        dist.dp_step(model_b, opt_b, xb, yb, dist.SingleProcess(), micro_batches=K)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        np.testing.assert_allclose(pb.data, pa.data, rtol=1e-12, atol=1e-14)
    for va, vb in zip(opt_a.velocity, opt_b.velocity):
        np.testing.assert_allclose(vb, va, rtol=1e-12, atol=1e-14)


def _bn_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(1)),
                          nn.BatchNorm2d(4), nn.GlobalAvgPool2d(),
                          nn.Linear(4, 10, rng=np.random.default_rng(2)))
    model.to("cpu", np.float64)
    return model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def test_guard_batchnorm_is_per_piece_not_one_big_batch():
    """The documented semantics (as the reference: BN per device): K pieces are NOT one batch."""
    xb, yb = _data(steps=1)[0]
    big, opt_big = _bn_model()
    dist.dp_step(big, opt_big, xb, yb, dist.SingleProcess(), micro_batches=1)
    two, opt_two = _bn_model()
    dist.dp_step(two, opt_two, xb, yb, dist.SingleProcess(), micro_batches=2)
    assert not np.allclose(two[0].weight.data, big[0].weight.data, rtol=1e-6, atol=0)

    # running statistics: each piece updates from the same start, then the two are averaged
    bn = two[1]
    fresh, _ = _bn_model()
    conv = fresh[0]
    h = [conv(ig.Tensor(xb[s])).numpy() for s in (slice(0, 4), slice(4, 8))]
    m = bn.momentum
    expect_mean = sum(m * 0.0 + (1 - m) * a.mean(axis=(0, 2, 3)) for a in h) / 2
    expect_var = sum(m * 1.0 + (1 - m) * a.var(axis=(0, 2, 3)) for a in h) / 2
    np.testing.assert_allclose(bn.running_mean, expect_mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, expect_var, rtol=1e-12)
    # ... which is not the statistic of the whole batch (the variance misses the between-piece part)
    whole = conv(ig.Tensor(xb)).numpy()
    assert not np.allclose(bn.running_var, m + (1 - m) * whole.var(axis=(0, 2, 3)), rtol=1e-6)


def test_a_non_finite_loss_changes_nothing_and_is_reported():
    model, opt = _bn_model()
    xb, yb = _data(steps=1)[0]
    dist.dp_step(model, opt, xb, yb, dist.SingleProcess(), micro_batches=2)  # velocities exist
    before = dist_worker.pack(model, opt, 0, {}, np.zeros(4))
    bad = xb.copy()
    bad[5] = np.nan  # one image in the second piece
    r = dist.dp_step(model, opt, bad, yb, dist.SingleProcess(), micro_batches=2)
    assert not r.finite and not np.isfinite(r.loss)
    assert _equal_states(before, dist_worker.pack(model, opt, 0, {}, np.zeros(4))) == []


def test_a_rank_given_only_its_slice_equals_a_rank_given_the_global_batch():
    xb, yb = _data(steps=1)[0]

    class Rank1Of2(dist.SingleProcess):  # rank 1's slicing with a one-process reduction
        rank, size = 1, 2
    a, opt_a = _bn_model()
    ra = dist.dp_step(a, opt_a, xb, yb, Rank1Of2())
    b, opt_b = _bn_model()
    part = dist.slice_of(len(xb), 1, 2)
    rb = dist.dp_step(b, opt_b, xb[part], yb[part], Rank1Of2(), global_batch=len(xb))
    assert np.array_equal(ra.sums, rb.sums) and ra.sums[1] == part.stop - part.start
    assert all(np.array_equal(p.data, q.data) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match=r"rank 1 of 2 should get rows 4..8 \(4\) of the global "
                                         r"batch of 8, got 8 rows"):
        dist.dp_step(b, opt_b, xb, yb, Rank1Of2(), global_batch=len(xb))


def test_a_batch_smaller_than_the_pieces_leaves_the_empty_pieces_out():
    xb, yb = _data(steps=1)[0]
    model, opt = _bn_model()
    r = dist.dp_step(model, opt, xb[:2], yb[:2], dist.SingleProcess(), micro_batches=3)
    assert r.finite and r.sums[1] == 2
    # two non-empty pieces of one image each: the BN average is over those two only
    assert np.all(np.isfinite(model[1].running_var)) and np.all(model[1].running_var > 0.5)


def test_dp_step_rejects_bad_arguments():
    model, opt = _bn_model()
    xb, yb = _data(steps=1)[0]
    with pytest.raises(ValueError, match="micro_batches must be >= 1, got 0"):
        dist.dp_step(model, opt, xb, yb, dist.SingleProcess(), micro_batches=0)
    with pytest.raises(ValueError, match="8 images but 7 labels"):
        dist.dp_step(model, opt, xb, yb[:7], dist.SingleProcess(), micro_batches=2)


# --------------------------------------------------------------------------------------------
# start-up: launcher detection, threads, options
# --------------------------------------------------------------------------------------------
def test_launchers_are_recognised_from_their_environment():
    assert dist.launched_by_mpi({}) is None
    assert dist.launched_by_mpi({"PMI_SIZE": "4", "PMI_RANK": "1", "MPI_LOCALNRANKS": "2"}) == (4, 2)
    assert dist.launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "8",
                                 "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}) == (8, 4)
    assert dist.launched_by_mpi({"SLURM_STEP_NUM_TASKS": "16",
                                 "SLURM_STEP_TASKS_PER_NODE": "4(x4)"}) == (16, 4)
    # a batch script's own environment (SLURM_NTASKS without a step) is not a launched rank
    assert dist.launched_by_mpi({"SLURM_NTASKS": "4"}) is None


def test_each_rank_gets_its_share_of_the_cores():
    cores = os.cpu_count()
    bound = len(os.sched_getaffinity(0)) < cores
    if not bound:
        assert dist.threads_per_rank(1, {}) == cores
        assert dist.threads_per_rank(cores, {}) == 1
        assert dist.threads_per_rank(4 * cores, {}) == 1
    assert dist.threads_per_rank(2, {"IGC_NP_THREADS": "3"}) == 3


def test_init_none_and_option_errors():
    comm = dist.init("none")
    assert isinstance(comm, dist.SingleProcess) and comm.is_root and comm.size == 1
    buf = np.arange(3.0)
    assert comm.allreduce(buf) is buf and comm.broadcast(buf) is buf
    with pytest.raises(dist.DistError, match="--dist 'gloo': expected one of auto, mpi, nccl, none"):
        dist.init("gloo")
    with pytest.raises(dist.DistError, match="--gpus must be comma-separated GPU ids"):
        dist.init("none", gpus="0;1")
    with pytest.raises(dist.DistError, match="--dist nccl needs --gpus"):
        dist.init("nccl")


def test_set_threads_replaces_the_pool_and_the_count():
    from igc_np.ops import parallel
    old, old_env = parallel.THREADS, os.environ.get("IGC_NP_THREADS")
    try:
        parallel.set_threads(2)
        parallel.run([lambda: None, lambda: None])  # creates the pool of 2
        assert parallel._pool is not None
        dist.set_threads(1)
        assert parallel.THREADS == 1 and parallel._pool is None
        assert parallel.split(10) == [(0, 10)] and os.environ["IGC_NP_THREADS"] == "1"
        for bad in (0, -3, 1.5, True):
            with pytest.raises(ValueError, match="set_threads: n must be a positive integer"):
                parallel.set_threads(bad)
    finally:
        dist.set_threads(old)
        dist._blas_limit.restore_original_limits()
        if old_env is None:
            os.environ.pop("IGC_NP_THREADS", None)
        else:
            os.environ["IGC_NP_THREADS"] = old_env


def _python(code, threads):
    """Run `code` in a fresh interpreter with IGC_NP_THREADS=threads; the CompletedProcess."""
    env = dict(os.environ, IGC_NP_THREADS=threads,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "2.5", ""])
def test_a_bad_igc_np_threads_is_named_at_import(value):
    r = _python("import igc_np", value)
    assert r.returncode == 1
    assert (f"ValueError: IGC_NP_THREADS={value}: must be a positive integer (number of CPU "
            "threads), or unset") in r.stderr


def test_one_thread_holds_blas_to_one_thread_too():
    """IGC_NP_THREADS=1 alone (no distributed.set_threads): BLAS gets one thread as well, and
    set_threads(2) gives BLAS back its own count (measured: left at its default, a 1-thread rank
    ran a step 4x slower on 2 cores)."""
    code = ("import json, numpy, threadpoolctl\n"
            "def blas(): return [i['num_threads'] for i in threadpoolctl.threadpool_info() "
            "if i['user_api'] == 'blas']\n"
            "before = blas()\n"
            "from igc_np.ops import parallel\n"
            "held = blas()\n"
            "parallel.set_threads(2)\n"
            "print(json.dumps([parallel.THREADS, before, held, blas()]))")
    r = _python(code, "1")
    assert r.returncode == 0, r.stderr
    threads, before, held, after = json.loads(r.stdout)
    assert threads == 2 and before and held == [1] * len(before) and after == before


# --------------------------------------------------------------------------------------------
# MPI ranks (mpiexec -n P) against the micro-batch twin
# --------------------------------------------------------------------------------------------
def _mpiexec(n, out_dir, steps, *extra):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("IGC_NP_THREADS", None)  # let each rank take its share
    p = subprocess.run(["mpiexec", "-n", str(n), sys.executable, WORKER, str(out_dir), str(steps),
                        *extra], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"mpiexec -n {n} failed:\n{p.stdout}\n{p.stderr}"
    assert sorted(os.listdir(out_dir)) == ["state.npz"], "only rank 0 writes, one file"
    return dict(np.load(os.path.join(out_dir, "state.npz")))


@needs_mpi
@pytest.mark.parametrize("P", [2, 3])
def test_mpi_ranks_equal_the_micro_batch_twin_bit_for_bit(tmp_path, P):
    # 4 steps of batch 8 over 23 images: the third batch is the uneven 7
    got = _mpiexec(P, tmp_path, 4)
    assert str(got["kind"]) == "mpi" and int(got["world_size"]) == P  # --dist auto found mpiexec
    assert bool(got["identical"]), "every rank holds the same parameters, velocities, BN buffers"
    assert list(got["flags"]) == [True, False]
    assert int(got["threads"]) == dist.threads_per_rank(P, {})
    twin = dist_worker.run(dist.SingleProcess(), 4, micro_batches=P)
    assert _equal_states(twin, got) == []
    assert got["sums"][1] == 31
    # the test pass over ranks counts what one process counts (the loss sum up to rounding)
    model, _ = dist_worker.make_model()
    model.load_state_dict({k[6:]: v for k, v in twin.items() if k.startswith("model/")})
    from igc_np.training import evaluate
    one = evaluate(model, *dist_worker.make_data(), (0, 0, 0), (1, 1, 1), batch_size=5,
                   dtype=np.float64).sums
    assert np.array_equal(got["test_sums"][1:], one[1:]) and one[1] == dist_worker.N_IMAGES
    np.testing.assert_allclose(got["test_sums"][0], one[0], rtol=1e-12)
    # and the comparison can fail: one piece (the plain run) is another result
    assert _equal_states(dist_worker.run(dist.SingleProcess(), 4), got) != []


@needs_mpi
def test_mpi_one_rank_is_the_single_process_run(tmp_path):
    got = _mpiexec(1, tmp_path, 3)
    assert str(got["kind"]) == "none"  # auto: one rank needs no engine
    model, opt = dist_worker.make_model()
    _plain_steps(model, opt, [b[:2] for b, _ in zip(dist_worker.batches(
        0, np.random.default_rng(7).bit_generator.state), range(3))])
    plain = dist_worker.pack(model, opt, 0, {}, np.zeros(4))
    assert [k for k in plain if k.startswith(("model/", "optimizer/"))
            and not np.array_equal(plain[k], got[k])] == []


@needs_mpi
def test_mpi_resume_on_another_world_size_stays_exact(tmp_path):
    first = _mpiexec(2, tmp_path / "two", 2)
    got = _mpiexec(3, tmp_path / "three", 3, "--resume", str(tmp_path / "two" / "state.npz"))
    assert int(got["step"]) == 5 and bool(got["identical"])
    twin = dist_worker.run(dist.SingleProcess(), 3, micro_batches=3,
                           state=dist_worker.run(dist.SingleProcess(), 2, micro_batches=2))
    assert _equal_states(twin, got) == []
    assert int(first["step"]) == 2 and _equal_states(first, got) != []


def _worker_env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    env.pop("IGC_NP_THREADS", None)
    return env


@needs_mpi
def test_an_error_on_one_rank_ends_every_rank_within_seconds(tmp_path):
    """Rank 1 raises before its step 2 while rank 0 waits in the step's all-reduce: rank 1's
    traceback is printed once and MPI_Abort ends the job (before: rank 0 waited forever)."""
    t0 = time.monotonic()
    p = subprocess.run(["mpiexec", "-n", "2", sys.executable, WORKER, str(tmp_path / "out"), "50"],
                       env=_worker_env(IGC_NP_TEST_RAISE="1,2"), capture_output=True, text=True,
                       timeout=120)
    seconds = time.monotonic() - t0
    assert p.returncode != 0 and not (tmp_path / "out").exists()
    assert p.stderr.count("ValueError: rank 1 failed on purpose before step 2") == 1, p.stderr
    assert p.stderr.count("rank 1 of 2 failed; stopping every rank:") == 1
    assert "rank 0 of 2 failed" not in p.stderr
    assert seconds < 30, f"the job took {seconds:.1f} s to end after rank 1 failed"


def test_an_escaping_error_aborts_through_the_communicator(monkeypatch, capsys):
    aborted = []

    class Rank1Of2(dist.SingleProcess):
        rank, size = 1, 2

        def abort(self, status=1):
            aborted.append(status)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setattr(dist, "_active", None)
    dist.abort_on_error(Rank1Of2())
    try:
        raise ValueError("bad shard")
    except ValueError:
        sys.excepthook(*sys.exc_info())
    err = capsys.readouterr().err
    assert aborted == [1] and err.startswith("rank 1 of 2 failed; stopping every rank:")
    assert err.count("ValueError: bad shard") == 1
    dist.abort_if_distributed(0)  # success: nothing happens
    dist.abort_if_distributed(2)  # a caught error, exit status 2: every rank ends
    assert aborted == [1, 2]


def test_broadcast_bytes_and_root_reads_on_one_process():
    comm = dist.SingleProcess()
    data = bytes(range(256)) * 3 + b"\xff\xf8\x00"  # NaN bit patterns among them
    assert dist.broadcast_bytes(comm, data) == data
    assert dist.root_reads(comm, lambda: {"a": np.arange(3)})["a"].tolist() == [0, 1, 2]


@needs_mpi
def test_a_resume_reads_the_file_on_rank_0_only(tmp_path):
    """No shared file system: rank 1 is given a path that does not exist on its side; rank 0
    reads the state and sends it; the run equals the resume that every rank could read."""
    first = _mpiexec(2, tmp_path / "two", 2)
    state = str(tmp_path / "two" / "state.npz")
    missing = str(tmp_path / "only-on-rank-0" / "state.npz")
    out = tmp_path / "resumed"
    cmd = ["mpiexec", "-n", "1", sys.executable, WORKER, str(out), "3", "--resume", state, ":",
           "-n", "1", sys.executable, WORKER, str(out), "3", "--resume", missing]
    p = subprocess.run(cmd, env=_worker_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    got = dict(np.load(out / "state.npz"))
    assert int(got["step"]) == 5 and bool(got["identical"])
    twin = dist_worker.run(dist.SingleProcess(), 3, micro_batches=2, state=first)
    assert _equal_states(twin, got) == []
    # and when rank 0 cannot read it either, every rank stops with rank 0's error
    p = subprocess.run(["mpiexec", "-n", "2", sys.executable, WORKER, str(out), "3", "--resume",
                        missing], env=_worker_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and p.stderr.count("No such file or directory") == 1, p.stderr
    assert "rank 0 of 2 failed" in p.stderr and "rank 1" not in p.stderr  # rank 0's error, once


# --------------------------------------------------------------------------------------------
# NCCL against a fake cupy.cuda.nccl (threads as ranks, bytes moved through raw pointers)
# --------------------------------------------------------------------------------------------
def _view(ptr, count, dtype):
    """The `count` elements of `dtype` at address `ptr`, as NCCL sees a buffer."""
    dtype = np.dtype(dtype)
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype)


# CuPy 14.2's cupy.cuda.nccl (= cupy_backends/cuda/libs/nccl.pyx), pinned from the first lines of
# its docstrings (read from the cupy-cuda12x 14.2.0 wheel; the test below compares them with the
# installed module when it imports). The fake checks every call against these types.
CUPY_NCCL_SIGNATURES = {
    "NcclCommunicator": "NcclCommunicator(int ndev, bytes commId, int rank, NcclConfig config=None)",
    "send": "NcclCommunicator.send(self, intptr_t sendbuf, size_t count, int datatype, int peer, "
            "intptr_t stream)",
    "recv": "NcclCommunicator.recv(self, intptr_t recvbuf, size_t count, int datatype, int peer, "
            "intptr_t stream)",
    "allGather": "NcclCommunicator.allGather(self, intptr_t sendbuf, intptr_t recvbuf, size_t count, "
                 "int datatype, intptr_t stream)",
    "allReduce": "NcclCommunicator.allReduce(self, intptr_t sendbuf, intptr_t recvbuf, size_t count, "
                 "int datatype, int op, intptr_t stream)",
    "bcast": "NcclCommunicator.bcast(self, intptr_t buff, size_t count, int datatype, int root, "
             "intptr_t stream)",
}


def _check_call(method, args):
    """TypeError as Cython raises it when an argument is not of the pinned C type."""
    params = CUPY_NCCL_SIGNATURES[method].split("(", 1)[1].rstrip(")").split(", ")
    params = [q for q in params if q != "self" and "=" not in q]
    if len(args) != len(params):
        raise TypeError(f"{method}() takes exactly {len(params)} positional arguments "
                        f"({len(args)} given)")
    for value, param in zip(args, params):
        ctype, name = param.split()
        if ctype == "bytes":
            if not isinstance(value, bytes):
                raise TypeError(f"Argument '{name}' has incorrect type (expected bytes, got "
                                f"{type(value).__name__})")
        elif isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{method}: '{name}' ({ctype}) must be an integer, got "
                            f"{type(value).__name__}")


class FakeNccl:
    """The part of CuPy 14's cupy.cuda.nccl that NCCL uses: communicators of threads in one process.

    Argument types as CUPY_NCCL_SIGNATURES (the unique id is 128 bytes: a tuple is a TypeError,
    as in CuPy 14). Point-to-point calls are only legal between groupStart and groupEnd (a real
    NCCL would deadlock on a blocking send/recv pair between two ranks), as the real API
    requires of an all-to-all.
    """
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
    DTYPES = {7: np.float32, 8: np.float64}

    def __init__(self):
        self.worlds, self.lock, self.local = {}, threading.Lock(), threading.local()
        self.calls = []
        fake = self

        class NcclCommunicator:
            def __init__(self, ndev, commId, rank):
                _check_call("NcclCommunicator", (ndev, commId, rank))
                if len(commId) != 128:
                    raise ValueError(f"commId length {len(commId)} != 128.")
                with fake.lock:
                    self.world = fake.worlds.setdefault(commId, dict(
                        barrier=threading.Barrier(ndev), mail={}, slots=[None] * ndev,
                        cv=threading.Condition()))
                self.rank, self.ndev = rank, ndev

            def _p2p(self, kind, ptr, count, dtype, peer, stream):
                _check_call(kind, (ptr, count, dtype, peer, stream))
                if getattr(fake.local, "group", None) is None:
                    raise RuntimeError(f"fake NCCL: {kind} outside groupStart/groupEnd")
                fake.local.group.append((self, kind, ptr, count, dtype, peer))

            def send(self, sendbuf, count, datatype, peer, stream):
                self._p2p("send", sendbuf, count, datatype, peer, stream)

            def recv(self, recvbuf, count, datatype, peer, stream):
                self._p2p("recv", recvbuf, count, datatype, peer, stream)

            def allGather(self, sendbuf, recvbuf, count, datatype, stream):
                _check_call("allGather", (sendbuf, recvbuf, count, datatype, stream))
                fake.calls.append("allGather")
                w, t = self.world, fake.DTYPES[datatype]
                w["slots"][self.rank] = _view(sendbuf, count, t).copy()
                w["barrier"].wait()
                _view(recvbuf, count * self.ndev, t)[:] = np.concatenate(w["slots"])
                w["barrier"].wait()

            def bcast(self, buff, count, datatype, root, stream):
                _check_call("bcast", (buff, count, datatype, root, stream))
                w, t = self.world, fake.DTYPES[datatype]
                if self.rank == root:
                    w["slots"][root] = _view(buff, count, t).copy()
                w["barrier"].wait()
                _view(buff, count, t)[:] = w["slots"][root]
                w["barrier"].wait()
        self.NcclCommunicator = NcclCommunicator

    def get_unique_id(self):
        """128 random bytes (CuPy 14: bytes; a tuple of ints before 14.0)."""
        return np.random.default_rng().bytes(128)

    def groupStart(self):
        self.local.group = []

    def groupEnd(self):
        ops, self.local.group = self.local.group, None
        for comm, kind, ptr, count, dtype, peer in ops:
            if kind == "send":
                w = comm.world
                with w["cv"]:
                    w["mail"][(comm.rank, peer)] = _view(ptr, count, self.DTYPES[dtype]).copy()
                    w["cv"].notify_all()
        for comm, kind, ptr, count, dtype, peer in ops:
            if kind == "recv":
                w = comm.world
                with w["cv"]:
                    w["cv"].wait_for(lambda: (peer, comm.rank) in w["mail"], timeout=10)
                    _view(ptr, count, self.DTYPES[dtype])[:] = w["mail"].pop((peer, comm.rank))


def _run_ranks(P, fn):
    """fn(comm) on P threads, each with an NCCL communicator over one FakeNccl; results by rank."""
    fake = FakeNccl()
    uid = fake.get_unique_id()
    results, errors = [None] * P, []

    def rank(r):
        try:
            results[r] = fn(dist.NCCL(r, P, uid, nccl=fake, xp=np))
        except Exception as e:  # surfaced below with its rank
            errors.append((r, e))
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(P)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return results, fake


@pytest.mark.parametrize("P,n,dtype", [(2, 1000, np.float64), (3, 7, np.float32), (4, 1, np.float64)])
def test_nccl_allreduce_is_the_rank_ordered_sum_on_every_rank(P, n, dtype):
    bufs = [np.random.default_rng(r).standard_normal(n).astype(dtype) * 10 ** r for r in range(P)]
    results, fake = _run_ranks(P, lambda c: c.allreduce(bufs[c.rank]))
    expect = dist.ordered_sum(bufs)
    for r in results:
        assert r.dtype == dtype and np.array_equal(r, expect)
    assert fake.calls.count("allGather") == P  # one all-gather per rank per reduction


def test_nccl_broadcast_barrier_and_dtype_error():
    def work(c):
        got = c.broadcast(np.full(5, float(c.rank)), root=1)
        c.barrier()
        with pytest.raises(dist.DistError, match="float32 or float64, got int64"):
            c.allreduce(np.zeros(3, np.int64))
        return got
    results, _ = _run_ranks(3, work)
    assert all(np.array_equal(r, np.ones(5)) for r in results)


def test_nccl_unique_id_travels_as_hex_unchanged():
    uid = FakeNccl().get_unique_id()
    assert isinstance(uid, bytes) and dist._decode_id(dist._encode_id(uid)) == uid
    assert len(dist._encode_id(uid)) == 256
    with pytest.raises(dist.DistError, match="CuPy < 14 is not supported"):
        dist.NCCL(0, 1, tuple(uid), nccl=FakeNccl(), xp=np)  # CuPy 13's id format
    with pytest.raises(dist.DistError, match="IGC_NP_NCCL_ID is not the hex of a 128-byte"):
        dist._decode_id("zz" * 128)
    with pytest.raises(dist.DistError, match="expected 128 bytes, got 3"):
        dist._decode_id("000000")


def test_the_fake_nccl_refuses_what_cupy_14_refuses():
    fake = FakeNccl()
    with pytest.raises(TypeError, match="'commId' has incorrect type \\(expected bytes, got tuple"):
        fake.NcclCommunicator(1, tuple(fake.get_unique_id()), 0)
    with pytest.raises(ValueError, match="commId length 3 != 128"):
        fake.NcclCommunicator(1, b"abc", 0)
    comm = fake.NcclCommunicator(1, fake.get_unique_id(), 0)
    buf = np.zeros(4)
    with pytest.raises(TypeError, match="'buff' \\(intptr_t\\) must be an integer, got ndarray"):
        comm.bcast(buf, 4, fake.NCCL_FLOAT64, 0, 0)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'stream'"):
        comm.bcast(buf.ctypes.data, 4, fake.NCCL_FLOAT64, 0)  # the stream is not optional


def _real_cupy_nccl():
    try:
        from cupy_backends.cuda.libs import nccl  # needs libnccl.so.2 (nvidia-nccl-cu12/cu13)
    except Exception as e:  # not installed, or no libnccl: the pinned signatures stand alone
        pytest.skip(f"CuPy's NCCL module does not import here ({type(e).__name__}: {e}); the fake "
                    "follows CUPY_NCCL_SIGNATURES, read from cupy-cuda12x 14.2.0")
    return nccl


def test_the_fake_nccl_follows_the_installed_cupy():
    """The pinned signatures are CuPy's own (docstrings of the Cython module: no GPU needed), and
    CuPy's get_unique_id / NcclCommunicator take and give what the fake does."""
    nccl = _real_cupy_nccl()
    for name, pinned in CUPY_NCCL_SIGNATURES.items():
        real = nccl.NcclCommunicator if name == "NcclCommunicator" else \
            getattr(nccl.NcclCommunicator, name)
        first = real.__doc__.strip().splitlines()[0]
        assert first == pinned, f"CuPy {name}: {first!r}, the fake pins {pinned!r}"
    for const in ("NCCL_FLOAT32", "NCCL_FLOAT64", "NCCL_SUM"):
        assert getattr(nccl, const) == getattr(FakeNccl, const)
    uid = nccl.get_unique_id()  # works without a GPU
    assert isinstance(uid, bytes) and len(uid) == 128
    with pytest.raises(TypeError, match="'commId' has incorrect type \\(expected bytes, got tuple"):
        nccl.NcclCommunicator(1, tuple(uid), 0)
    with pytest.raises(ValueError, match="commId length 3 != 128"):
        nccl.NcclCommunicator(1, b"abc", 0)


CHILD = """
import json, os, sys
keys = ("IGC_NP_DIST_RANK", "IGC_NP_DIST_SIZE", "IGC_NP_DIST_LOCAL_RANK", "IGC_NP_NCCL_ID",
        "IGC_NP_THREADS")
with open(os.path.join(sys.argv[1], os.environ["IGC_NP_DIST_RANK"] + ".json"), "w") as f:
    json.dump({k: os.environ[k] for k in keys}, f)
sys.exit(int(sys.argv[2]) if os.environ["IGC_NP_DIST_RANK"] == "1" else 0)
"""


def test_several_gpus_spawn_unless_already_a_rank():
    assert dist.should_spawn("auto", "0,1", {})
    assert dist.should_spawn("nccl", [0, 1, 2], {})
    assert not dist.should_spawn("auto", "0", {})          # one GPU: this process trains
    assert not dist.should_spawn("mpi", "0,1", {})         # mpiexec starts the ranks
    assert not dist.should_spawn("auto", "0,1", {dist.ENV_SIZE: "2"})       # a spawned rank
    assert not dist.should_spawn("auto", "0,1", {"PMI_SIZE": "2"})          # an MPI rank
    assert dist.should_spawn("auto", "0,1", {"PMI_SIZE": "1"})  # mpiexec -n 1: spawn from it


def test_spawn_starts_one_rank_per_gpu_with_the_id_and_threads(tmp_path):
    fake = FakeNccl()
    ids = []
    fake.get_unique_id = lambda: ids.append(FakeNccl.get_unique_id(fake)) or ids[-1]
    code = dist.spawn("0,1,2", ["-c", CHILD, str(tmp_path), "0"], nccl=fake)
    assert code == 0
    seen = [json.load(open(tmp_path / f"{r}.json")) for r in range(3)]
    assert [s["IGC_NP_DIST_RANK"] for s in seen] == ["0", "1", "2"]
    assert {s["IGC_NP_DIST_SIZE"] for s in seen} == {"3"}
    assert {dist._decode_id(s["IGC_NP_NCCL_ID"]) for s in seen} == {ids[0]}
    assert {s["IGC_NP_THREADS"] for s in seen} == {str(dist.threads_per_rank(3))}


def test_spawn_returns_the_failing_rank_status_and_stops_the_others(tmp_path):
    hang = "import sys, time\nif sys.argv[1] == '0': time.sleep(60)\nsys.exit(3)"
    env_rank = f"import os, sys\nsys.argv[1] = os.environ['IGC_NP_DIST_RANK']\n{hang}"
    t0 = time.monotonic()
    assert dist.spawn([0, 1], ["-c", env_rank, "x"], nccl=FakeNccl(), grace_s=5) == 3
    assert time.monotonic() - t0 < 30  # rank 0 was terminated, not waited for
    with pytest.raises(dist.DistError, match="an id appears twice"):
        dist.spawn("0,0", ["-c", "pass"], nccl=FakeNccl())


STUCK = """
import os, signal, sys, time
if os.environ["IGC_NP_DIST_RANK"] == "1":
    time.sleep(0.5)
    sys.exit("rank 1: bad batch")
signal.signal(signal.SIGTERM, lambda s, f: None)  # as a trainer blocked in an NCCL collective
time.sleep(120)
"""


def test_a_failing_gpu_rank_ends_the_others_within_seconds(capsys):
    """Rank 1 fails; rank 0 ignores SIGTERM (its handler only sets a flag while it waits in a
    collective): SIGKILL follows after the grace, and the parent names the failed rank once."""
    t0 = time.monotonic()
    assert dist.spawn([0, 1], ["-c", STUCK], nccl=FakeNccl()) == 1
    seconds = time.monotonic() - t0
    assert seconds < 10, f"{seconds:.1f} s"
    err = capsys.readouterr().err
    assert err.count("rank 1 (GPU 1) failed with exit status 1: stopping the other ranks") == 1


def test_an_error_every_rank_knows_of_needs_no_abort(monkeypatch):
    aborted = []

    class Rank0Of2(dist.SingleProcess):
        rank, size = 0, 2

        def allreduce(self, buf):
            return buf

        def abort(self, status=1):
            aborted.append(status)
    monkeypatch.setattr(dist, "_active", Rank0Of2())
    with pytest.raises(OSError) as e:  # root_first: rank 0's error, after the reduction
        dist.root_first(Rank0Of2(), lambda: (_ for _ in ()).throw(OSError("disk full")), (OSError,))
    dist.abort_if_distributed(1, e.value)  # every rank leaves by itself
    dist.abort_if_distributed(1, dist.FollowerError("rank 1: stopping because rank 0 failed"))
    assert aborted == []
    dist.abort_if_distributed(1, ValueError("only here"))  # no other rank knows: abort them all
    assert aborted == [1]


FORWARDED = """
import os, signal, sys, time
out, rank = sys.argv[1], os.environ["IGC_NP_DIST_RANK"]
got = []
signal.signal(signal.SIGINT, lambda s, f: got.append("SIGINT"))
signal.signal(signal.SIGTERM, lambda s, f: got.append("SIGTERM"))
open(os.path.join(out, rank + ".ready"), "w").close()
t0 = time.monotonic()
while not got and time.monotonic() - t0 < 60:
    time.sleep(0.01)
time.sleep(0.5)  # a second, duplicated signal would arrive in this time
open(os.path.join(out, rank + ".got"), "w").write(",".join(got))
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_spawn_forwards_a_signal_to_every_rank_exactly_once(tmp_path, sig):
    parent = ("import sys, types; from igc_np import distributed as d; "
              "fake = types.SimpleNamespace(get_unique_id=lambda: bytes(128)); "
              f"sys.exit(d.spawn([0, 1], ['-c', {FORWARDED!r}, {str(tmp_path)!r}], nccl=fake))")
    p = subprocess.Popen([sys.executable, "-c", parent],
                         env=dict(os.environ, PYTHONPATH=ROOT))
    t0 = time.monotonic()
    while not all((tmp_path / f"{r}.ready").exists() for r in (0, 1)):
        assert time.monotonic() - t0 < 60 and p.poll() is None, "the ranks did not start"
        time.sleep(0.02)
    time.sleep(0.2)  # the parent has installed its forwarding handlers before the children start
    p.send_signal(getattr(signal, sig))
    assert p.wait(60) == 0
    assert [(tmp_path / f"{r}.got").read_text() for r in (0, 1)] == [sig, sig]


def _gpu_count():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


@pytest.mark.skipif(_gpu_count() < 2, reason="needs CuPy with NCCL and at least 2 GPUs; no GPU is "
                                             "lent in this session")
def test_nccl_on_real_gpus_equals_the_micro_batch_twin(tmp_path):  # pragma: no cover - GPU only
    env = dict(os.environ, PYTHONPATH=ROOT)
    code = subprocess.run([sys.executable, "-c",
                           "import sys; from igc_np import distributed as d; "
                           f"sys.exit(d.spawn('0,1', [{WORKER!r}, {str(tmp_path)!r}, '4', "
                           "'--dist', 'nccl', '--gpus', '0,1']))"], env=env, timeout=600).returncode
    assert code == 0
    got = dict(np.load(tmp_path / "state.npz"))
    assert str(got["kind"]) == "nccl" and bool(got["identical"])
    twin = dist_worker.run(dist.SingleProcess(), 4, micro_batches=2, device="cuda")
    assert _equal_states(twin, got) == []


def test_pieces_on_the_cuda_path_match_the_cpu(monkeypatch):
    """dp_step with device "cuda" (CuPy replaced by tests/fake_cupy.py's stand-in): the pieces,
    the flat buffers and the BN averaging run on device arrays and agree with the CPU."""
    import fake_cupy
    fake_cupy.install(monkeypatch)
    xb, yb = _data(steps=1)[0]
    cpu, opt_cpu = _bn_model()
    r_cpu = dist.dp_step(cpu, opt_cpu, xb, yb, dist.SingleProcess(), micro_batches=2)
    gpu, _ = _bn_model()
    gpu.to("cuda")
    opt_gpu = optim.SGD(gpu.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = ig.Tensor(xb, device="cuda"), ig.Tensor(yb, device="cuda")
    r_gpu = dist.dp_step(gpu, opt_gpu, x, y, dist.SingleProcess(), micro_batches=2)
    np.testing.assert_allclose(r_gpu.sums, r_cpu.sums, rtol=1e-12)
    for p, q in zip(gpu.parameters(), cpu.parameters()):
        np.testing.assert_allclose(p.numpy(), q.data, rtol=1e-10, atol=1e-13)
    for (_, m, k), (_, n, l) in zip(gpu.named_buffers(), cpu.named_buffers()):
        assert ig.backend.device_of(getattr(m, k)) == "cuda"
        np.testing.assert_allclose(getattr(m, k).get(), getattr(n, l), rtol=1e-12)


def test_missing_engines_are_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    with pytest.raises(dist.DistError, match=r"--dist mpi needs mpi4py .*pip install -e \"\.\[dist\]\""):
        dist.init("mpi")
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setitem(sys.modules, "cupy.cuda", None)
    with pytest.raises(dist.DistError, match="--dist nccl needs CuPy with NCCL"):
        dist.spawn("0,1", ["-c", "pass"])  # the parent makes the NCCL id: it needs CuPy too
    monkeypatch.setenv(dist.ENV_SIZE, "2")  # a rank started by spawn, on a machine without CuPy
    monkeypatch.setenv(dist.ENV_RANK, "0")
    monkeypatch.setenv(dist.ENV_NCCL_ID, "00" * 128)
    with pytest.raises(RuntimeError, match="needs CuPy"):
        dist.init("auto", gpus="0,1")
    with pytest.raises(dist.DistError, match="--dist nccl needs --gpus, one id per process"):
        dist.init("nccl", gpus="")


# --------------------------------------------------------------------------------------------
# The trainer: mpiexec -n P examples/cifar10_igc.py == --micro-batches P, bit for bit
# --------------------------------------------------------------------------------------------
# resnet_igc-8 L2M2 on 72 digits, batch 16: 5 batches an epoch, the last one of 8
TRAINER = ["--network", "resnet_igc", "--depth", "8", "--primary-partition", "2",
           "--secondary-partition", "2", "--batch-size", "16", "--subset", "72", "--dtype",
           "float64", "--log-iters", "2", "--lr-steps", "1", "--checkpoint-every", "1"]


def _trainer_ranks(P, out, *extra, signal_plan=None):
    """mpiexec -n P of the trainer (through dist_worker.py trainer); returns the exit status."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("IGC_NP_THREADS", None)
    if signal_plan:
        env["IGC_NP_TEST_SIGNAL"] = signal_plan
    p = subprocess.run(["mpiexec", "-n", str(P), sys.executable, WORKER, "trainer", *TRAINER,
                        "--output-dir", str(out), *map(str, extra)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode in (0, 130, 138, 143), f"mpiexec -n {P} failed:\n{p.stdout}\n{p.stderr}"
    return p


def _trainer_here(out, *extra, signal_plan=None, monkeypatch=None):
    """The trainer's main() in this process (the micro-batch twin); returns the exit status."""
    if signal_plan:
        monkeypatch.setenv("IGC_NP_TEST_SIGNAL", signal_plan)
        monkeypatch.setenv("PMI_RANK", signal_plan.split(",")[1])  # "this rank" gets the signal
    try:
        return dist_worker.trainer_main(TRAINER + ["--output-dir", str(out), *map(str, extra)])
    finally:
        if signal_plan:
            monkeypatch.delenv("IGC_NP_TEST_SIGNAL")
            monkeypatch.delenv("PMI_RANK")
            ig.optim.SGD.step = _REAL_STEP


_REAL_STEP = optim.SGD.step


def _same_checkpoints(a, b):
    """Names of the arrays that differ between two checkpoint files (times and paths aside)."""
    with np.load(a) as za, np.load(b) as zb:
        assert sorted(za.files) == sorted(zb.files)
        differ = [k for k in za.files if k not in ("history", "args")
                  and not np.array_equal(za[k], zb[k])]
        untimed = [[{k: v for k, v in r.items() if k not in ("epoch_time", "elapsed")}
                    for r in json.loads(str(z["history"]))] for z in (za, zb)]
    return differ + (["history"] if untimed[0] != untimed[1] else [])


def _files(out):
    return sorted(p.name for p in out.iterdir())


@needs_mpi
def test_trainer_on_two_ranks_equals_two_micro_batches(tmp_path):
    _trainer_ranks(2, tmp_path / "ranks", "--num-epochs", "2")
    assert _trainer_here(tmp_path / "micro", "--num-epochs", "2", "--micro-batches", "2") == 0
    # rank 0 alone wrote: the same files as the one process, no second log, no temp files
    assert _files(tmp_path / "ranks") == _files(tmp_path / "micro")
    for name in ("model-0001.npz", "model-0002.npz"):
        assert _same_checkpoints(tmp_path / "ranks" / name, tmp_path / "micro" / name) == []
    assert (tmp_path / "ranks" / "log.jsonl").read_text().count("\n") == 2


@needs_mpi
def test_trainer_resumes_two_ranks_on_three_exactly(tmp_path):
    _trainer_ranks(2, tmp_path / "ranks", "--num-epochs", "1")
    _trainer_ranks(3, tmp_path / "ranks", "--num-epochs", "2", "--load-epoch", "1")
    assert _trainer_here(tmp_path / "micro", "--num-epochs", "1", "--micro-batches", "2") == 0
    assert _trainer_here(tmp_path / "micro", "--num-epochs", "2", "--load-epoch", "1",
                         "--micro-batches", "3") == 0
    assert _same_checkpoints(tmp_path / "ranks" / "model-0002.npz",
                             tmp_path / "micro" / "model-0002.npz") == []


@needs_mpi
def test_trainer_ranks_stop_together_on_a_signal_to_one_rank(tmp_path, monkeypatch):
    """SIGUSR1 to rank 1 alone after its 7th step (epoch 1, batch 2): the flag is reduced with
    the next step, so every rank stops after batch 3, and rank 0 writes the checkpoint."""
    p = _trainer_ranks(2, tmp_path / "ranks", "--num-epochs", "3", signal_plan="7,1,SIGUSR1")
    assert p.returncode in (130, 138), p.stderr  # 128 + SIGUSR1 on rank 1, 130 on rank 0
    stopped = tmp_path / "ranks" / "model-interrupted.npz"
    with np.load(stopped) as z:
        assert (int(z["epoch"]), int(z["batch"])) == (1, 3)
    assert "--resume" in p.stderr and "mpiexec -n 2" in p.stderr
    status = _trainer_here(tmp_path / "micro", "--num-epochs", "3", "--micro-batches", "2",
                           signal_plan="7,1,SIGUSR1", monkeypatch=monkeypatch)
    assert status == 138
    assert _same_checkpoints(stopped, tmp_path / "micro" / "model-interrupted.npz") == []
    # resumed mid-epoch on 3 ranks == resumed with 3 micro-batches
    _trainer_ranks(3, tmp_path / "ranks", "--resume", stopped)
    assert _trainer_here(tmp_path / "micro", "--resume", tmp_path / "micro" /
                         "model-interrupted.npz", "--micro-batches", "3") == 0
    assert _same_checkpoints(tmp_path / "ranks" / "model-0003.npz",
                             tmp_path / "micro" / "model-0003.npz") == []


@needs_mpi
def test_trainer_rank_failing_mid_run_ends_every_rank(tmp_path):
    env = _worker_env(IGC_NP_TEST_SIGNAL="7,1,RAISE")
    t0 = time.monotonic()
    try:
        p = subprocess.run(["mpiexec", "-n", "2", sys.executable, WORKER, "trainer", *TRAINER,
                            "--num-epochs", "3", "--output-dir", str(tmp_path / "out")],
                           env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the other rank still waited 30 s after rank 1 failed")
    assert p.returncode != 0 and time.monotonic() - t0 < 30
    assert p.stderr.count("rank 1 failed on purpose after step 7") == 1, p.stderr


@needs_mpi
def test_trainer_resume_needs_the_file_on_rank_0_only(tmp_path):
    _trainer_ranks(2, tmp_path / "ranks", "--num-epochs", "1")
    ckpt = str(tmp_path / "ranks" / "model-0001.npz")
    rest = [*TRAINER, "--num-epochs", "2", "--output-dir", str(tmp_path / "ranks")]
    try:
        p = subprocess.run(["mpiexec", "-n", "1", sys.executable, WORKER, "trainer", *rest, "--resume",
                            ckpt, ":", "-n", "1", sys.executable, WORKER, "trainer", *rest, "--resume",
                            str(tmp_path / "not-on-rank-1" / "model-0001.npz")],
                           env=_worker_env(), capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks still waited 40 s after rank 1 could not open its path")
    assert p.returncode == 0, p.stderr
    assert _trainer_here(tmp_path / "micro", "--num-epochs", "1", "--micro-batches", "2") == 0
    assert _trainer_here(tmp_path / "micro", "--num-epochs", "2", "--load-epoch", "1",
                         "--micro-batches", "2") == 0
    assert _same_checkpoints(tmp_path / "ranks" / "model-0002.npz",
                             tmp_path / "micro" / "model-0002.npz") == []


def test_root_first_makes_every_rank_leave_when_rank_0_fails():
    def refuse():
        raise OSError("no space left")
    with pytest.raises(OSError, match="no space left"):
        dist.root_first(dist.SingleProcess(), refuse, (OSError,))
    calls = []
    dist.root_first(dist.SingleProcess(), lambda: calls.append(1))
    assert calls == [1]

    class Rank1SeesRank0Fail(dist.SingleProcess):
        rank, size = 1, 2

        def allreduce(self, buf):  # rank 0 contributed a failure flag of 1
            return buf + 1.0
    with pytest.raises(dist.DistError, match="rank 1: stopping because rank 0 failed"):
        dist.root_first(Rank1SeesRank0Fail(), lambda: calls.append("rank 1 must not run this"))
    assert calls == [1]


def test_trainer_with_several_gpus_starts_one_process_per_gpu(monkeypatch):
    trainer = dist_worker.load_trainer()
    started = []
    monkeypatch.setattr(dist, "spawn", lambda gpus, argv: started.append((gpus, argv)) or 7)
    monkeypatch.delenv(dist.ENV_SIZE, raising=False)
    assert trainer.main(["--gpus", "0,1", "--subset", "64"]) == 7  # the ranks' status
    (gpus, argv), = started
    assert gpus == "0,1" and argv[0].endswith("cifar10_igc.py")
    assert argv[1:] == ["--gpus", "0,1", "--subset", "64"]  # each rank gets the same options
