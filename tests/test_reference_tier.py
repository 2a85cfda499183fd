"""The fast CPU tier equals the reference tier (igc_np/ops/reference.py), forward and every gradient.

Each case runs one F.* call twice on the same float64 arrays: on the CPU tier, then inside
ig.backend.use_reference(); output and the gradient of every input must agree. Drawn shapes are
small and odd (hypothesis); the "large" cases are big enough that the CPU engine really takes its
threaded paths (ops/parallel.py: matmul columns >= 4096, reductions >= 4096, elementwise >= 1<<16
elements) and splits a conv into several TILE_BYTES tiles. Other cases shrink TILE_BYTES so that
small shapes cross tile boundaries too.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import igc_np as ig
from igc_np import functional as F
from igc_np.ops import cpu_conv, layout, parallel, reference
from strategies import arrays, conv_cases, divisors

TOL = dict(rtol=1e-10, atol=1e-10)
LARGE = settings(max_examples=4, deadline=None)


def run_tier(fn, inputs, gy_seed, reference_tier, device="cpu"):
    """(output, [grad of each input]) of fn(*Tensors) with a random output gradient."""
    tensors = [ig.Tensor(a, requires_grad=True, device=device) for a in inputs]
    with ig.backend.use_reference(reference_tier):
        y = fn(*tensors)
        gy = np.random.default_rng(gy_seed).standard_normal(y.shape)
        y.backward(gy)
    return y.numpy(), [ig.backend.to_device(t.grad, "cpu") for t in tensors]


def assert_tiers_equal(fn, *inputs, seed=0, device="cpu"):
    """The fast tier on `device` ('cpu'; 'emu': the CUDA kernels in the emulator) == the reference tier."""
    fast, ref = run_tier(fn, inputs, seed, False, device), run_tier(fn, inputs, seed, True)
    np.testing.assert_allclose(fast[0], ref[0], **TOL, err_msg="forward")
    for k, (a, b) in enumerate(zip(fast[1], ref[1])):
        np.testing.assert_allclose(a, b, **TOL, err_msg=f"gradient of input {k}")


def chwn(a):
    """The same values in the (C, H, W, N) memory a CPU conv produces: the layout the fast paths
    of BatchNorm, ReLU and the permutation are written for."""
    return layout.from_chwn(layout.to_chwn(a))


def threaded(mp):
    """Three threads whatever the machine (odd splits; threaded code even on one core); returns the
    list of task counts handed to parallel.run, to prove the work really was split."""
    mp.setattr(parallel, "THREADS", 3)
    counts, run = [], parallel.run
    mp.setattr(parallel, "run", lambda tasks: counts.append(len(tasks)) or run(tasks))
    return counts


# ---- the switch itself ---------------------------------------------------------------------------
def test_use_reference_runs_the_reference_functions(monkeypatch):
    calls = []
    real = reference.conv2d
    monkeypatch.setattr(reference, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, W = ig.Tensor(np.ones((1, 2, 3, 3))), ig.Tensor(np.ones((2, 2, 1, 1)))
    F.conv2d(x, W)
    assert calls == []
    with ig.backend.use_reference():
        assert ig.backend.reference_enabled()
        F.conv2d(x, W)
    assert calls == [1] and not ig.backend.reference_enabled()


def test_use_reference_refuses_device_arrays():
    x = ig.Tensor(np.ones((1, 2, 3, 3)), device="emu")
    with ig.backend.use_reference(), pytest.raises(ValueError, match="reference tier is NumPy code for device 'cpu'"):
        F.relu(x)


def test_every_tiered_function_has_a_reference_tier_apart_from_its_fast_code():
    """Every op declares its tiers in one table (autograd.Function checks the names when the class
    is defined); an op with a CPU engine must have a reference tier and a GPU tier of its own, or
    the switch would silently run the fast path."""
    from igc_np.autograd import Function
    from igc_np.ops import fused  # noqa: F401 - defines BatchNormReLUFunction
    seen = {}
    stack = list(Function.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("igc_np.") and cls.tiers is not Function.tiers:
            seen[cls.__name__] = cls.tiers
    assert {"Conv2dFunction", "BatchNormFunction", "PermuteChannelsFunction", "ReLUFunction",
            "InterleavedSecondaryFunction", "MaxPool2dFunction", "AvgPool2dFunction",
            "BatchNormReLUFunction"} <= set(seen)
    for name, tiers in seen.items():
        assert tiers["reference"] != tiers["cpu"] and tiers["reference"] != tiers["gpu"], name


def test_no_op_calls_another_functions_tier_methods():
    """A composed op runs its parts through run_forward/run_backward (the table), never their tier
    methods or private helpers by name (issue 17)."""
    import pathlib
    import re
    ops = pathlib.Path(ig.__file__).parent / "ops"
    for path in sorted(ops.glob("*.py")):
        text = path.read_text()
        calls = re.findall(r"\w+\._?(?:forward|backward)_\w+\(|getattr\([^)]*\"(?:forward|backward)_", text)
        calls = [c for c in calls if not c.startswith("self.")]
        assert not calls, f"{path.name}: {calls}"


def test_ops_import_project_modules_at_the_top():
    """No igc_np module imported inside a function of the engine's files (issue 17: ops/fused.py
    and ops/normalization.py imported the kernels lazily); optional third-party ones may be."""
    import ast
    import pathlib
    root = pathlib.Path(ig.__file__).parent
    files = sorted((root / "ops").glob("*.py")) + [root / n for n in ("autograd.py", "backend.py",
                                                                      "functional.py", "gradcheck.py", "random.py")]
    def project(node):  # `from .x import y`, `from igc_np... import`, `import igc_np...`
        if isinstance(node, ast.ImportFrom):
            return node.level > 0 or (node.module or "").startswith("igc_np")
        return isinstance(node, ast.Import) and any(a.name.startswith("igc_np") for a in node.names)
    late = [f"{path.name}:{node.lineno}" for path in files for fn in ast.walk(ast.parse(path.read_text()))
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in ast.walk(fn) if project(node)]
    assert not late


# ---- conv ------------------------------------------------------------------------------------------
@given(conv_cases(), st.data())
def test_conv2d(case, data):
    xs, ws, stride, padding, groups = case
    assert_tiers_equal(lambda x, W: F.conv2d(x, W, stride=stride, padding=padding, groups=groups),
                       data.draw(arrays(xs)), data.draw(arrays(ws)))


@given(conv_cases(max_channels=8, max_size=9), st.data())
def test_conv2d_in_many_small_tiles(case, data):
    """TILE_BYTES shrunk to one im2col row: every tile boundary (groups, output rows) is crossed."""
    xs, ws, stride, padding, groups = case
    x, W = data.draw(arrays(xs)), data.draw(arrays(ws))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu_conv, "TILE_BYTES", 64)
        threaded(mp)
        assert_tiers_equal(lambda x, W: F.conv2d(x, W, stride=stride, padding=padding, groups=groups), x, W)


@st.composite
def large_conv_cases(draw):
    """Ho*Wo*N well above 4096 (threaded matmuls) and im2col blocks over TILE_BYTES (several tiles)."""
    groups = draw(st.sampled_from([1, 2, 4]))
    Cg = draw(st.integers(2, 4))
    s = draw(st.sampled_from([1, 2]))
    # a 1x1 conv at stride 2 is a single small tile: nothing to split, so it is left to the small cases
    k = draw(st.sampled_from([1, 3])) if s == 1 else 3
    N, H, W = draw(st.integers(10, 12)), draw(st.integers(30, 36)), draw(st.integers(30, 36))
    return (N, groups * Cg, H, W), (groups * draw(st.integers(1, 3)), Cg, k, k), (s, s), (k // 2,) * 2, groups


@LARGE
@given(large_conv_cases(), st.data())
def test_conv2d_large_threaded(case, data):
    xs, ws, stride, padding, groups = case
    N, C, H, W = xs
    assert H * W * N >= 2 * 4096
    with pytest.MonkeyPatch.context() as mp:
        counts = threaded(mp)
        assert_tiers_equal(lambda x, W: F.conv2d(x, W, stride=stride, padding=padding, groups=groups),
                           chwn(data.draw(arrays(xs))), data.draw(arrays(ws)))
    assert max(counts) > 1  # the work was split over threads


def test_the_large_conv_shape_spans_several_tiles_at_the_real_tile_size():
    """An IGC-sized conv at the default TILE_BYTES: the engine splits it into several tiles over
    threads, and the result is still the reference's."""
    rng = np.random.default_rng(5)
    x, W = chwn(rng.standard_normal((12, 16, 36, 36))), rng.standard_normal((16, 4, 3, 3))
    assert 4 * 9 * 36 * 12 * 8 * 36 > 2 * cpu_conv.TILE_BYTES  # one group's im2col alone is > 2 tiles
    with pytest.MonkeyPatch.context() as mp:
        counts = threaded(mp)
        assert_tiers_equal(lambda x, W: F.conv2d(x, W, padding=1, groups=4), x, W)
        assert_tiers_equal(lambda x, W: F.conv2d(x, W, stride=2, padding=1, groups=4), x, W)
    assert max(counts) == 3


# ---- permutation, fused secondary ------------------------------------------------------------------
@given(st.sampled_from([1, 2, 4, 6, 12]), st.data())
def test_permute_channels(C, data):
    b = data.draw(st.sampled_from(divisors(C)))
    x = data.draw(arrays((2, C, 3, 4)))
    for layout_ in (np.ascontiguousarray, chwn):
        assert_tiers_equal(lambda x: F.permute_channels(x, b), layout_(x))


@given(st.sampled_from([(2, 2), (3, 2), (4, 3), (1, 5), (5, 1)]), st.booleans(), st.data())
def test_interleaved_secondary(LM, large, data):
    L, M = LM
    N, H = (8, 24) if large else (2, 3)  # large: H*W*N = 4608 columns, threaded matmul and reduction
    x, W_d = data.draw(arrays((N, L * M, H, H))), data.draw(arrays((L * M, L, 1, 1)))
    with pytest.MonkeyPatch.context() as mp:
        counts = threaded(mp)
        assert_tiers_equal(lambda x, W: F.interleaved_secondary(x, W, L), chwn(x), W_d)
    assert (max(counts, default=1) > 1) == large


# ---- BatchNorm, ReLU ---------------------------------------------------------------------------------
@given(st.integers(2, 4), st.integers(1, 6), st.integers(1, 5), st.booleans(), st.booleans(), st.data())
def test_batch_norm(N, C, H, training, channel_first, data):
    x = data.draw(arrays((N, C, H, H)))
    x = chwn(x) if channel_first else x
    gamma, beta = data.draw(arrays((C,))) + 2.0, data.draw(arrays((C,)))
    stats = []

    def fn(x, g, b):
        rm, rv = np.full(C, 0.5), np.full(C, 2.0)
        stats.append((rm, rv))
        return F.batch_norm(x, g, b, rm, rv, training=training)
    assert_tiers_equal(fn, x, gamma, beta)
    (m0, v0), (m1, v1) = stats
    np.testing.assert_allclose(m0, m1, **TOL)
    np.testing.assert_allclose(v0, v1, **TOL)


@LARGE
@given(st.booleans(), st.data())
def test_batch_norm_and_relu_large_threaded(training, data):
    """C*H*W*N = 12*24*24*10 > 1<<16: several slabs per thread in BatchNorm, threaded ReLU."""
    x = chwn(data.draw(arrays((10, 12, 24, 24))))
    gamma, beta = data.draw(arrays((12,))) + 2.0, data.draw(arrays((12,)))
    with pytest.MonkeyPatch.context() as mp:
        counts = threaded(mp)
        mp.setattr(ig.ops.normalization, "SLAB_BYTES", 1 << 14)
        assert_tiers_equal(lambda x, g, b: F.relu(F.batch_norm(x, g, b, np.zeros(12), np.ones(12),
                                                               training=training)), x, gamma, beta)
    assert max(counts) > 1


def _no_relu_op(*args):
    raise AssertionError("the fused cpu tier of batch_norm_relu ran the separate ReLU op")


@LARGE
@given(st.booleans(), st.sampled_from([(True, True), (True, False), (False, True)]), st.data())
def test_batch_norm_relu_fused_large_threaded(training, relu_residual, data):
    """ops/fused.py's cpu tier in one slab pass (x and residual in (C, H, W, N) memory) == the
    reference tier's BN, add, ReLU: output, the gradients of x, gamma, beta, residual and the running
    statistics, with several slabs per thread; the unfused ReLU op is never called."""
    from igc_np.ops import activation
    from igc_np.ops.fused import batch_norm_relu
    relu, with_residual = relu_residual
    x, r = (chwn(data.draw(arrays((10, 12, 24, 24)))) for _ in range(2))
    gamma, beta = data.draw(arrays((12,))) + 2.0, data.draw(arrays((12,)))
    stats = []

    def fn(x, g, b, *r):
        rm, rv = np.full(12, 0.5), np.full(12, 2.0)
        stats.append((rm, rv))
        y = batch_norm_relu(x, g, b, rm, rv, training, relu=relu, residual=r[0] if r else None)
        assert ig.backend.reference_enabled() or layout.is_chwn(y.data)  # the next conv's layout
        return y
    with pytest.MonkeyPatch.context() as mp:
        counts = threaded(mp)
        mp.setattr(ig.ops.normalization, "SLAB_BYTES", 1 << 14)
        mp.setattr(activation.ReLUFunction, "forward_cpu", _no_relu_op)
        assert_tiers_equal(fn, x, gamma, beta, *((r,) if with_residual else ()))
    assert max(counts) > 1
    (m0, v0), (m1, v1) = stats
    np.testing.assert_allclose(m0, m1, **TOL)
    np.testing.assert_allclose(v0, v1, **TOL)


@given(st.booleans(), st.data())
def test_relu(channel_first, data):
    x = data.draw(arrays((2, 3, 4, 5)))
    assert_tiers_equal(F.relu, chwn(x) if channel_first else x)


# ---- pooling, linear, loss ---------------------------------------------------------------------------
@given(st.sampled_from([(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)]), st.integers(3, 7), st.data())
def test_pooling(cfg, size, data):
    k, s, p = cfg
    x = data.draw(arrays((2, 3, size, size)))
    assert_tiers_equal(lambda x: F.max_pool2d(x, k, s, p), x)
    assert_tiers_equal(lambda x: F.avg_pool2d(x, k, s, p), x)
    assert_tiers_equal(F.global_avg_pool2d, x)


def test_linear_and_cross_entropy():
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    labels = np.array([0, 2, 1, 1, 0])
    assert_tiers_equal(lambda x, W, b: F.cross_entropy(F.linear(x, W, b), labels), x, W, b)


# ---- the GPU tier, its kernels run by the emulator ('emu'): small cases, the emulator is slow ------
def test_every_tiered_op_on_emu_equals_the_reference_tier():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 5, 4))
    W_p, W_d = rng.standard_normal((6, 2, 3, 3)), rng.standard_normal((6, 3, 1, 1))
    g, b = rng.standard_normal(6) + 2, rng.standard_normal(6)
    emu = dict(device="emu")
    assert_tiers_equal(lambda x, W: F.conv2d(x, W, stride=(2, 1), padding=1, groups=3), x, W_p, **emu)
    assert_tiers_equal(lambda x, W: F.interleaved_secondary(x, W, 3), x, W_d, **emu)
    assert_tiers_equal(lambda x: F.permute_channels(x, 2), x, **emu)
    assert_tiers_equal(lambda x, g, b: F.relu(F.batch_norm(x, g, b, np.zeros(6), np.ones(6))), x, g, b, **emu)
    assert_tiers_equal(lambda x: F.avg_pool2d(F.max_pool2d(x, 3, 2, 1), 2, 1), x, **emu)


# ---- the reference tier is itself right: finite differences on it ---------------------------------
@given(conv_cases(max_channels=6, max_size=6), st.data())
def test_reference_conv_gradients_by_finite_differences(case, data):
    xs, ws, stride, padding, groups = case
    x = ig.Tensor(data.draw(arrays(xs)), requires_grad=True)
    W = ig.Tensor(data.draw(arrays(ws)), requires_grad=True)
    with ig.backend.use_reference():
        assert ig.gradcheck(lambda x, W: F.conv2d(x, W, stride=stride, padding=padding, groups=groups), [x, W])


def test_reference_ops_gradients_by_finite_differences():
    rng = np.random.default_rng(1)
    T = lambda a: ig.Tensor(a, requires_grad=True)  # noqa: E731
    x = T(rng.standard_normal((2, 6, 5, 5)))
    W_d, g, b = T(rng.standard_normal((6, 3, 1, 1))), T(rng.standard_normal(6) + 2), T(rng.standard_normal(6))
    with ig.backend.use_reference():
        assert ig.gradcheck(lambda x, W: F.interleaved_secondary(x, W, 3), [x, W_d])
        assert ig.gradcheck(lambda x, g, b: F.batch_norm(x, g, b, training=True), [x, g, b])
        assert ig.gradcheck(lambda x: F.max_pool2d(F.relu(x), 3, 2, 1), [x])
        assert ig.gradcheck(lambda x: F.avg_pool2d(F.permute_channels(x, 2), 3, 2, 1), [x])


# ---- a whole network, trained on both tiers ---------------------------------------------------------
def small_igc_net():
    """Stem, a fused IGC conv (S = C/L), a general one (S != C/L) with stride 2, BN, ReLU, pools, FC."""
    rng = np.random.default_rng(0)
    nn = ig.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, rng=rng), nn.BatchNorm2d(8), nn.ReLU(),
        nn.IGCConv(8, 8, L=4, S=2, rng=rng), nn.BatchNorm2d(8), nn.ReLU(),
        nn.IGCConv(8, 12, L=4, S=6, stride=2, rng=rng), nn.BatchNorm2d(12), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1), nn.GlobalAvgPool2d(), nn.Linear(12, 5, rng=rng)).to(dtype=np.float64)


def train(reference_tier, steps=3):
    rng = np.random.default_rng(1)
    net = small_igc_net()
    opt = ig.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    with ig.backend.use_reference(reference_tier):
        for _ in range(steps):
            x, labels = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 5, 4)
            opt.zero_grad()
            loss = F.cross_entropy(net(ig.Tensor(x)), labels)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses, net.state_dict()


def test_a_small_network_trains_to_the_same_result_on_both_tiers():
    (l0, s0), (l1, s1) = train(False), train(True)
    np.testing.assert_allclose(l0, l1, **TOL)
    assert l0[0] != l0[-1]  # it did learn something: the steps changed the weights
    assert s0.keys() == s1.keys()
    for name in s0:
        np.testing.assert_allclose(s0[name], s1[name], **TOL, err_msg=name)


def test_environment_variable_turns_the_reference_tier_on():
    import subprocess
    import sys
    code = "import igc_np as ig; print(ig.backend.reference_enabled(), ig.backend.tier('cpu'))"
    for value, expected in (("1", "True reference"), ("0", "False cpu")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, "IGC_NP_REFERENCE": value})
        assert out.stdout.split() == expected.split()


# ---- the reference conv against its definition, one output element at a time ---------------------
@settings(max_examples=10, deadline=None)
@given(conv_cases(max_channels=4, max_size=5), st.data())
def test_reference_conv2d_is_the_definition(case, data):
    xs, ws, (sh, sw), (ph, pw), G = case
    x, W = data.draw(arrays(xs)), data.draw(arrays(ws))
    y = reference.conv2d(x, W, (sh, sw), (ph, pw), G)
    N, C, H, Wi = xs
    Co, Cg, kh, kw = ws
    for n, o, h, w in np.ndindex(y.shape):
        g = o // (Co // G)
        total = 0.0
        for c, i, j in np.ndindex(Cg, kh, kw):
            r, q = sh * h - ph + i, sw * w - pw + j
            if 0 <= r < H and 0 <= q < Wi:
                total += W[o, c, i, j] * x[n, g * Cg + c, r, q]
        assert abs(y[n, o, h, w] - total) < 1e-10
