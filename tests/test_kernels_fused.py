"""The kernels of the cuda branch's ladder on the CPU emulator, against float64 NumPy references:
every version of the permutation and of the fused interleaved secondary conv, the fused
BatchNorm(+ReLU, +residual) and the fused SGD; plus the version switch on these ops
(kernels/versions.py; tests/test_conv_ladder.py tests it on the conv ops, and its errors).

The check_* helpers take the device, so tests/test_kernels_cuda_fused.py runs them on a GPU.
Errors are measured norm-relative against a float64 reference: ||ours - ref|| <= tol * ||ref||,
tol 1e-12 for float64 and 1e-5 for float32 (a sum of K float32 products has a relative error of
about sqrt(K) * 6e-8 at these sizes; an indexing bug gives errors of order 1).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import igc_np as ig
from igc_np.kernels import batch_norm, interleaved_secondary, launch, permutation, sgd, use_version, versions
from igc_np.ops import reference
from igc_np.optim import SGD

from strategies import divisors

DTYPES = [np.float64, np.float32]
NORM_TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
SETTINGS = dict(deadline=None)
EMU = dict(device="emu", to_device=lambda a: a, to_host=lambda a: a)


def assert_close(actual, ref64, dtype, what="", scale=None):
    """Norm-relative error of `actual` (dtype) against the float64 reference: relative to ||ref64||,
    or to `scale` (for a sum that cancels: the norm of the sums of the terms' magnitudes)."""
    actual = np.asarray(actual)
    assert actual.shape == ref64.shape and actual.dtype == dtype, (what, actual.shape, actual.dtype)
    err = np.linalg.norm((actual.astype(np.float64) - ref64).ravel())
    scale = max(np.linalg.norm(ref64.ravel()) if scale is None else scale, 1e-30)
    assert err <= NORM_TOL[np.dtype(dtype)] * scale, f"{what}: relative error {err / scale:.3g}"


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ---- permutation (versions 0 = the shape rule, 1, 2) ---------------------------------------------------------------
def check_permutation(x_shape, b, dtype, version, device, to_device, to_host):
    x = _rand(np.random.default_rng(1), x_shape, dtype)
    y = to_host(permutation.permute_channels(to_device(x), b, device, version=version))
    np.testing.assert_array_equal(y, reference.permute_channels(x, b))  # a copy: bit-exact
    back = to_host(permutation.permute_channels(to_device(y), x_shape[1] // b, device, version=version))
    np.testing.assert_array_equal(back, x)


@st.composite
def interleaved_cases(draw, max_C=24):
    """(x shape, L, S): C <= max_C, any divisors L and S of C, odd sizes, H*W from 1 to 80."""
    C = draw(st.integers(1, max_C))
    L, S = draw(st.sampled_from(divisors(C))), draw(st.sampled_from(divisors(C)))
    return (draw(st.integers(1, 3)), C, draw(st.integers(1, 8)), draw(st.integers(1, 10))), L, S


@pytest.mark.parametrize("version", sorted(versions.versions("permute_channels")))
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=15, **SETTINGS)
@given(case=interleaved_cases(), data=st.data())
def test_permutation_versions_emu(case, data, dtype, version):
    x_shape = case[0]
    check_permutation(x_shape, data.draw(st.sampled_from(divisors(x_shape[1]))), dtype, version, **EMU)


# ---- interleaved secondary conv (versions 1, 2) --------------------------------------------------------
def interleaved_reference(x, W2, gy, L, S):
    """float64 y, gx, gW2 of the unfused chain permute(L) -> 1x1 conv with S groups -> permute(S)."""
    x, W2, gy = (a.astype(np.float64) for a in (x, W2, gy))
    xp = reference.permute_channels(x, L)
    y = reference.permute_channels(reference.conv2d(xp, W2, groups=S), S)
    gv = reference.permute_channels_backward(gy, S)
    gxp, gW = reference.conv2d_backward(xp, W2, gv, groups=S)
    return y, reference.permute_channels_backward(gxp, L), gW


def check_interleaved(case, dtype, version, device, to_device, to_host, seed=2):
    x_shape, L, S = case
    C = x_shape[1]
    rng = np.random.default_rng(seed)
    x, W2, gy = _rand(rng, x_shape, dtype), _rand(rng, (C, C // S, 1, 1), dtype), _rand(rng, x_shape, dtype)
    y_ref, gx_ref, gW_ref = interleaved_reference(x, W2, gy, L, S)
    dx, dW2, dgy = to_device(x), to_device(W2), to_device(gy)
    kw = dict(device=device, version=version)
    assert_close(to_host(interleaved_secondary.interleaved_secondary_forward(dx, dW2, L, S, **kw)), y_ref, dtype, "forward")
    assert_close(to_host(interleaved_secondary.interleaved_secondary_backward_data(dgy, dW2, L, S, **kw)), gx_ref, dtype, "bwd-data")
    gW = to_host(interleaved_secondary.interleaved_secondary_backward_weight(dx, dgy, W2.shape, L, S, **kw))
    assert_close(gW, gW_ref, dtype, "bwd-weight")
    again = to_host(interleaved_secondary.interleaved_secondary_backward_weight(dx, dgy, W2.shape, L, S, **kw))
    np.testing.assert_array_equal(again, gW)  # deterministic: no atomics, fixed reduction order


@pytest.mark.parametrize("version", sorted(versions.versions("interleaved_secondary")))
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=20, **SETTINGS)
@given(case=interleaved_cases())
def test_interleaved_versions_emu(case, dtype, version):
    check_interleaved(case, dtype, version, **EMU)


@pytest.mark.parametrize("version", sorted(versions.versions("interleaved_secondary")))
@pytest.mark.parametrize("case", [
    ((1, 48, 6, 6), 24, 2),    # CIFAR IGC-L24M2 stage 1 (S = M)
    ((2, 96, 3, 3), 24, 2),    # stage 2, first conv of a block: S = C_in/L, K = 48 > one 32-row tile
    ((1, 200, 2, 3), 100, 2),  # ImageNet IGC-L100M2: K = 100, four row tiles, a ragged last one
    ((3, 8, 7, 11), 2, 4),     # H*W = 77: a ragged pixel tile
])
def test_interleaved_igc_shapes_emu(case, version):
    check_interleaved(case, np.float32, version, **EMU)


@pytest.mark.parametrize("TR", interleaved_secondary.TILE_ROWS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    ((2, 12, 5, 7), 3, 4),     # K = 3: a partial tile of every height
    ((1, 40, 9, 9), 4, 2),     # K = 20: several 4- and 8-row tiles, a ragged last one
    ((1, 8, 16, 17), 2, 2),    # K = 4, H*W = 272: two pixel tiles of every width (32, 128, 256)
])
def test_interleaved_v2_every_tile_height_emu(case, dtype, TR, monkeypatch):
    """v2 forward/backward-data in tiles of TR = 32, 8 and 4 rows, whichever the shape rule picks."""
    monkeypatch.setattr(interleaved_secondary, "tile_rows", lambda K, HW: TR)
    check_interleaved(case, dtype, 2, **EMU)


def test_small_groups_get_small_tiles():
    """IGC-L4M32 (K = C/S = 4 at 56x56): 32-row tiles did 4/32 rows x 4/16 reduction steps of
    useful FMAs (3%); the rule takes 4-row tiles. Wide groups keep 32-row tiles."""
    assert interleaved_secondary.tile_rows(4, 56 * 56) == 4
    assert interleaved_secondary.tile_rows(16, 56 * 56) == 8      # IGC-L16M16
    assert interleaved_secondary.tile_rows(24, 8 * 8) == 32       # CIFAR stage 3: 8-row tiles would idle half the pixels
    assert interleaved_secondary.tile_rows(100, 56 * 56) == 8     # IGC-L100M2: 96% useful in 8-row tiles, 4x fewer input reads than 4-row
    (geometry,) = interleaved_secondary.interleaved_plan("interleaved_secondary_forward", 2, (256, 128, 56, 56), 4, 32, 4)
    assert geometry.targs == (4,) and geometry.blocks == min(256 * 32 * 1 * 13, launch.MAX_BLOCKS)


def test_interleaved_v2_weight_chunks():
    """Pass 1 of the v2 backward-weight splits the N*HW terms in chunks of whole 32-term steps."""
    for terms in (1, 31, 32, 33, 2047, 2048, 64 * 1024, 64 * 3136):
        chunk_len, n = interleaved_secondary.weight_chunks(terms)
        assert chunk_len % 32 == 0 and (n - 1) * chunk_len < terms <= n * chunk_len and n <= 64


# ---- fused BatchNorm + ReLU (+ residual) ---------------------------------------------------------
def bn_reference(x, gamma, beta, rmean, rvar, gy, training, momentum, eps, relu, residual):
    """float64 y, gx, ggamma, gbeta, gresidual and the new running statistics, by the formulas."""
    x64, mean, invstd = _bn_normalise(x, rmean, rvar, training, eps)
    xhat = (x64 - _ch(mean)) * _ch(invstd)
    z = xhat * _ch(gamma.astype(np.float64)) + _ch(beta.astype(np.float64))
    if residual is not None:
        z = z + residual.astype(np.float64)
    g = gy.astype(np.float64) * (z > 0) if relu else gy.astype(np.float64)
    if training:
        var = x64.var(axis=(0, 2, 3))
        rmean, rvar = rmean * momentum + (1 - momentum) * mean, rvar * momentum + (1 - momentum) * var
    y = np.maximum(z, 0) if relu else z
    return (y,) + bn_reference_grads(x, gamma, rmean, rvar, g, training, eps, (mean, invstd)) + (g, rmean, rvar)


def _ch(v):
    return v.reshape(1, -1, 1, 1)


def _bn_normalise(x, rmean, rvar, training, eps):
    """x in float64, and the mean and 1/sqrt(var + eps) that normalise it."""
    x = x.astype(np.float64)
    mean, var = (x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))) if training else \
        (rmean.astype(np.float64), rvar.astype(np.float64))
    return x, mean, 1 / np.sqrt(var + eps)


def bn_reference_grads(x, gamma, rmean, rvar, g, training, eps, stats=None):
    """(gx, ggamma, gbeta) in float64 from the gradient g reaching the BN output; stats: the
    (mean, invstd) of the forward (else found again from x or the running statistics)."""
    x64, mean, invstd = _bn_normalise(x, rmean, rvar, training, eps)
    if stats is not None:
        mean, invstd = stats
    xhat = (x64 - _ch(mean)) * _ch(invstd)
    gbeta, ggamma = g.sum(axis=(0, 2, 3)), (g * xhat).sum(axis=(0, 2, 3))
    m = x.size // x.shape[1]
    gx = (g - _ch(gbeta) / m - xhat * _ch(ggamma) / m if training else g) * _ch(gamma.astype(np.float64) * invstd)
    return gx, ggamma, gbeta


def check_batch_norm(shape, dtype, training, relu, with_residual, device, to_device, to_host, seed=3,
                     version=None, slices=None):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (_rand(rng, shape, np.float64) * 2 + 0.5).astype(dtype)
    gamma, beta = _rand(rng, C, dtype), _rand(rng, C, dtype)
    rmean, rvar = _rand(rng, C, dtype), (rng.random(C) + 0.5).astype(dtype)
    res = _rand(rng, shape, dtype) if with_residual else None
    gy = _rand(rng, shape, dtype)
    momentum, eps = 0.9, 2e-5
    ref = bn_reference(x, gamma, beta, rmean, rvar, gy, training, momentum, eps, relu, res)
    d_rmean, d_rvar = to_device(rmean), to_device(rvar)
    kw = dict(version=version, slices=slices)
    y, mean, stat = batch_norm.batch_norm_forward(
        to_device(x), to_device(gamma), to_device(beta), d_rmean, d_rvar, training, momentum, eps, device,
        relu=relu, residual=None if res is None else to_device(res), **kw)
    assert_close(to_host(y), ref[0], dtype, "y")
    assert_close(to_host(d_rmean), ref[5].astype(np.float64), dtype, "running_mean")
    assert_close(to_host(d_rvar), ref[6].astype(np.float64), dtype, "running_var")
    gx, ggamma, gbeta, gres = batch_norm.batch_norm_backward(
        to_device(gy), y, to_device(x), mean, stat, to_device(gamma), training, eps, device,
        relu=relu, has_residual=with_residual, **kw)
    # the ReLU's mask is taken from the kernel's own y: where the float32 z rounds to the other side
    # of 0 the reference differs, so compare the masked gradient with the kernel's mask
    if relu and dtype == np.float32:
        keep = to_host(y) > 0
        ref = list(ref)
        ref[4] = gy.astype(np.float64) * keep
        ref[1:4] = bn_reference_grads(x, gamma, rmean, rvar, ref[4], training, eps)  # the pre-step statistics
    # gx, ggamma and gbeta may cancel (e.g. gx of 2 values per channel in training is about 0): a
    # float32 result is accurate relative to the magnitude of its terms, not to its value, so
    # measure against that. gx = (g - mean(g) - xhat * mean(g * xhat)) * gamma * invstd: the two
    # subtracted terms are projections of g, no larger than g.
    x64, mean, invstd = _bn_normalise(x, rmean, rvar, training, eps)
    xhat = (x64 - _ch(mean)) * _ch(invstd)
    magnitude = lambda t: np.linalg.norm(np.abs(t).sum(axis=(0, 2, 3)))  # noqa: E731
    assert_close(to_host(gx), ref[1], dtype, "gx",
                 scale=np.linalg.norm(ref[4] * _ch(gamma.astype(np.float64) * invstd)))
    assert_close(to_host(ggamma), ref[2], dtype, "ggamma", scale=magnitude(ref[4] * xhat))
    assert_close(to_host(gbeta), ref[3], dtype, "gbeta", scale=magnitude(ref[4]))
    if with_residual:
        assert_close(to_host(gres), ref[4], dtype, "gresidual")
    else:
        assert gres is None


@st.composite
def bn_shapes(draw):
    """(N, C, H, W) with N*H*W >= 2, from 2 up to 600 values per channel (several 256-thread strides)."""
    N, C = draw(st.integers(1, 4)), draw(st.integers(1, 7))
    H, W = draw(st.integers(1, 12)), draw(st.integers(1, 13))
    return (N if N * H * W >= 2 else 2, C, H, W)


@pytest.mark.parametrize("version", sorted(versions.versions("batch_norm")))
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=20, **SETTINGS)
@given(shape=bn_shapes(), training=st.booleans(), relu=st.booleans(), with_residual=st.booleans(),
       slices=st.integers(1, 7))
def test_batch_norm_fused_emu(shape, dtype, training, relu, with_residual, slices, version):
    """v2 with 1 to 7 blocks per channel (slices of 0 values too, when N*H*W < 7)."""
    slices = min(slices, shape[0] * shape[2] * shape[3]) if version == 2 else None
    check_batch_norm(shape, dtype, training, relu, with_residual, **EMU, version=version, slices=slices)


def test_batch_norm_v2_slices():
    assert batch_norm.bn_slices(48, 64 * 1024) == 22 and batch_norm.bn_slices(192, 64 * 64) == 2
    assert batch_norm.bn_slices(16, 10) == 1 and batch_norm.bn_slices(1, 10**7) == 64
    with pytest.raises(ValueError, match=r"batch_norm_forward: slices=9 must lie in \[1, N\*H\*W = 8\]"):
        batch_norm.batch_norm_forward(np.zeros((2, 1, 2, 2)), np.ones(1), np.zeros(1), None, None, True, 0.9,
                                     2e-5, "emu", version=2, slices=9)


CPU_TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-6}


def check_batch_norm_relu_cpu(shape, dtype, training, relu, with_residual, seed=9):
    """The op's cpu tier on x and residual in (C, H, W, N) memory (its one-pass slab path) against
    the float64 formulas (bn_reference): y, every gradient and the running statistics within
    CPU_TOL norm-relative (float32: with the op's own ReLU mask, as check_batch_norm)."""
    from igc_np.ops import layout
    from igc_np.ops.fused import batch_norm_relu
    rng = np.random.default_rng(seed)
    C = shape[1]
    chwn = lambda a: layout.from_chwn(layout.to_chwn(a))  # noqa: E731 - the conv's output memory
    x0 = chwn((_rand(rng, shape, np.float64) * 2 + 0.5).astype(dtype))
    r0 = chwn(_rand(rng, shape, dtype)) if with_residual else None
    gamma0, beta0 = _rand(rng, C, dtype), _rand(rng, C, dtype)
    rmean, rvar = _rand(rng, C, dtype), (rng.random(C) + 0.5).astype(dtype)
    gy = _rand(rng, shape, dtype)
    ref = list(bn_reference(x0, gamma0, beta0, rmean, rvar, gy, training, 0.9, 2e-5, relu, r0))
    x, gamma, beta = (ig.Tensor(a, requires_grad=True) for a in (x0, gamma0, beta0))
    r = ig.Tensor(r0, requires_grad=True) if with_residual else None
    rm, rv = rmean.copy(), rvar.copy()
    y = batch_norm_relu(x, gamma, beta, rm, rv, training, 0.9, 2e-5, relu=relu, residual=r)
    y.backward(gy)
    assert layout.is_chwn(y.data) and layout.is_chwn(x.grad)  # stays in the next conv's memory
    if relu and dtype == np.float32:
        ref[4] = gy.astype(np.float64) * (y.numpy() > 0)
        ref[1:4] = bn_reference_grads(x0, gamma0, rmean, rvar, ref[4], training, 2e-5)

    def close(actual, ref64, what, scale=0.0):
        actual = np.asarray(actual)
        assert actual.dtype == dtype, (what, actual.dtype)
        err, scale = np.linalg.norm((actual.astype(np.float64) - ref64).ravel()), max(np.linalg.norm(ref64), scale)
        assert err <= CPU_TOL[np.dtype(dtype)] * max(scale, 1e-30), f"{what}: relative error {err / scale:.3g}"
    # Every result is bounded by the size of its terms, never by its value, which may cancel:
    # gx = (g - its parts along 1 and xhat) * gamma * invstd (to 0 when N*H*W = 2): the terms are
    # g * gamma * invstd; gbeta = sum g and ggamma = sum g * xhat (shape (1, 1, 4, 9), float32: gbeta
    # of 36 terms cancelled to 1.9e-6 relative to its value): the per-channel sums of |terms|;
    # y = xhat * gamma + beta (+ r) and the running mean 0.9 r + 0.1 mean likewise.
    x64, mean, invstd = _bn_normalise(x0, rmean, rvar, training, 2e-5)
    xhat = (x64 - _ch(mean)) * _ch(invstd)
    magnitude = lambda t: np.linalg.norm(np.abs(t).sum(axis=(0, 2, 3)))  # noqa: E731
    gx_terms = np.linalg.norm(ref[4] * _ch(gamma0 * invstd))
    y_terms = np.abs(xhat * _ch(gamma0)) + np.abs(_ch(beta0)) + (np.abs(r0) if with_residual else 0)
    batch_mean = x64.mean(axis=(0, 2, 3))
    close(y.numpy(), ref[0], "y", np.linalg.norm(y_terms))
    close(gamma.grad, ref[2], "ggamma", magnitude(ref[4] * xhat))
    close(beta.grad, ref[3], "gbeta", magnitude(ref[4]))
    close(rm, ref[5], "running_mean", np.linalg.norm(0.9 * np.abs(rmean) + 0.1 * np.abs(batch_mean) * training))
    close(rv, ref[6], "running_var")  # a sum of positive terms: no cancellation
    close(x.grad, ref[1], "gx", gx_terms)
    if with_residual:
        close(r.grad, ref[4], "gresidual")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu, with_residual", [(True, True), (True, False), (False, True)])
def test_batch_norm_relu_op_cpu_one_pass(dtype, training, relu, with_residual, monkeypatch):
    """Threaded slabs (3 threads, slabs of 16 KiB: several per thread; 12 channels of 5760 values)."""
    from igc_np.ops import activation, normalization, parallel
    monkeypatch.setattr(parallel, "THREADS", 3)
    monkeypatch.setattr(normalization, "SLAB_BYTES", 1 << 14)
    monkeypatch.setattr(activation.ReLUFunction, "forward_cpu", None)  # the one pass never calls it
    check_batch_norm_relu_cpu((10, 12, 24, 24), dtype, training, relu, with_residual)


@settings(max_examples=15, **SETTINGS)
@given(shape=bn_shapes(), dtype=st.sampled_from(DTYPES), training=st.booleans(),
       relu_residual=st.sampled_from([(True, True), (True, False), (False, True)]))
def test_batch_norm_relu_op_cpu_one_pass_small(shape, dtype, training, relu_residual):
    check_batch_norm_relu_cpu(shape, dtype, training, *relu_residual)


def test_batch_norm_relu_op_cpu_falls_back_to_unfused_ops():
    """x in (C, H, W, N) memory but the residual in NCHW memory: the unfused ops, bit for bit."""
    from igc_np import functional as F
    from igc_np.ops import layout
    from igc_np.ops.fused import batch_norm_relu
    rng = np.random.default_rng(10)
    x0, r0 = layout.from_chwn(layout.to_chwn(rng.standard_normal((3, 4, 5, 5)))), rng.standard_normal((3, 4, 5, 5))
    out = {}
    for fused in (False, True):
        x, r = ig.Tensor(x0, requires_grad=True), ig.Tensor(r0, requires_grad=True)
        gamma, beta = ig.Tensor(np.full(4, 1.5), requires_grad=True), ig.Tensor(np.full(4, 0.1), requires_grad=True)
        if fused:
            y = batch_norm_relu(x, gamma, beta, None, None, True, residual=r)
        else:
            y = F.relu(F.batch_norm(x, gamma, beta, None, None, True) + r)
        (y * y).sum().backward()
        out[fused] = [y.numpy(), x.grad, r.grad, gamma.grad, beta.grad]
    for a, b in zip(out[False], out[True]):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_relu_refuses_a_residual_of_another_dtype():
    from igc_np.ops.fused import batch_norm_relu
    x, r = ig.Tensor(np.zeros((2, 3, 2, 2))), ig.Tensor(np.zeros((2, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"batch_norm_relu: residual dtype float32 != input dtype float64 "
                                         r"\(shape \(2, 3, 2, 2\)\); make them the same"):
        batch_norm_relu(x, ig.Tensor(np.ones(3)), ig.Tensor(np.zeros(3)), residual=r)


def test_batch_norm_relu_op_cpu_equals_unfused_ops():
    """On "cpu" with NCHW memory the fused op is the unfused ops' maths: same values and gradients,
    bit for bit."""
    from igc_np import functional as F
    from igc_np.ops.fused import batch_norm_relu
    rng = np.random.default_rng(4)
    x0, r0 = rng.standard_normal((3, 4, 5, 5)), rng.standard_normal((3, 4, 5, 5))
    out = {}
    for fused in (False, True):
        x, r = ig.Tensor(x0, requires_grad=True), ig.Tensor(r0, requires_grad=True)
        gamma = ig.Tensor(rng.standard_normal(4) * 0 + 1.5, requires_grad=True)
        beta = ig.Tensor(np.full(4, 0.1), requires_grad=True)
        rm, rv = np.zeros(4), np.ones(4)
        if fused:
            y = batch_norm_relu(x, gamma, beta, rm, rv, True, 0.9, 2e-5, residual=r)
        else:
            y = F.relu(F.batch_norm(x, gamma, beta, rm, rv, True, 0.9, 2e-5) + r)
        (y * y).sum().backward()
        out[fused] = [y.numpy(), x.grad, r.grad, gamma.grad, beta.grad, rm, rv]
    for a, b in zip(out[False], out[True]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("residual", [False, True])
def test_batch_norm_relu_gradcheck_emu(training, residual):
    from igc_np.ops.fused import batch_norm_relu
    rng = np.random.default_rng(5)
    x = ig.Tensor(rng.standard_normal((2, 3, 4, 5)), requires_grad=True).to("emu")
    r = ig.Tensor(rng.standard_normal((2, 3, 4, 5)), requires_grad=True).to("emu")
    gamma = ig.Tensor(rng.standard_normal(3), requires_grad=True).to("emu")
    beta = ig.Tensor(rng.standard_normal(3), requires_grad=True).to("emu")
    rm, rv = np.zeros(3), np.ones(3)
    if residual:
        assert ig.gradcheck(lambda x, g, b, r: batch_norm_relu(x, g, b, rm, rv, training, residual=r),
                            [x, gamma, beta, r])
    else:
        assert ig.gradcheck(lambda x, g, b: batch_norm_relu(x, g, b, rm, rv, training), [x, gamma, beta])


def test_batch_norm_float64_input_float32_running_statistics_emu():
    """Buffers of another dtype than x are updated outside the kernel, with the CPU's maths."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 4))
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    batch_norm.batch_norm_forward(x, np.ones(3), np.zeros(3), rm, rv, True, 0.9, 2e-5, "emu")
    np.testing.assert_allclose(rm, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * x.var(axis=(0, 2, 3)), rtol=1e-6)


# ---- fused SGD -------------------------------------------------------------------------------------
def sgd_reference(ws, gs, vs, lr, momentum, nesterov, wd):
    """optim.SGD's maths, float64, one step, on copies; returns (weights, velocities)."""
    ws, vs = [w.astype(np.float64) for w in ws], [v.astype(np.float64) for v in vs]
    for i, g in enumerate(gs):
        g = g.astype(np.float64) + wd * ws[i]
        if momentum:
            vs[i] = momentum * vs[i] + g
            g = g + momentum * vs[i] if nesterov else vs[i]
        ws[i] = ws[i] - lr * g
    return ws, vs


def check_sgd(shapes, dtype, momentum, nesterov, wd, version, device, to_device, to_host, steps=3):
    rng = np.random.default_rng(7)
    ws = [_rand(rng, s, dtype) for s in shapes]
    vs = [_rand(rng, s, dtype) for s in shapes]
    dws, dvs = [to_device(w) for w in ws], [to_device(v) for v in vs]
    for _ in range(steps):
        gs = [_rand(rng, s, dtype) for s in shapes]
        ws, vs = sgd_reference(ws, gs, vs, 0.05, momentum, nesterov, wd)
        sgd.sgd_step(dws, [to_device(g) for g in gs], dvs, 0.05, momentum, nesterov, wd, device,
                           version=version)
        for w, dw in zip(ws, dws):
            assert_close(to_host(dw), w, dtype, "weight")
        if momentum:
            for v, dv in zip(vs, dvs):
                assert_close(to_host(dv), v, dtype, "velocity")
        ws = [to_host(dw).copy() for dw in dws]  # the next step starts where the kernel ended
        vs = [to_host(dv).copy() for dv in dvs]


@pytest.mark.parametrize("version", sorted(versions.versions("sgd")))
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=15, **SETTINGS)
@given(shapes=st.lists(st.sampled_from([(1,), (7,), (4097,), (3, 5), (16, 2, 3, 3), (10, 300)]),
                       min_size=1, max_size=5),
       momentum=st.sampled_from([0.0, 0.9]), nesterov=st.booleans(), wd=st.sampled_from([0.0, 1e-4]))
def test_sgd_versions_emu(shapes, dtype, momentum, nesterov, wd, version):
    check_sgd(shapes, dtype, momentum, nesterov, wd, version, **EMU)


@pytest.mark.parametrize("version", sorted(versions.versions("sgd")))
def test_sgd_optimizer_on_emu_matches_cpu(version):
    """optim.SGD on "emu" (the fused kernel) ends where the CPU's array-op step ends, including
    the first step (velocity None on the CPU, zeros on the device) and a parameter with no grad."""
    rng = np.random.default_rng(8)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(6, 3, 3, 3), (6,), (4, 6), (5,)]]
    grads = [[rng.standard_normal(w.shape).astype(np.float32) for w in init] for _ in range(3)]
    final = {}
    with use_version(sgd=version):
        for dev in ("cpu", "emu"):
            params = [ig.nn.Parameter(w.copy()).to(dev) for w in init]
            opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
            for step in grads:
                for i, (p, g) in enumerate(zip(params, step)):
                    p.grad = None if i == 3 else g.copy()  # the last parameter never gets a gradient
                opt.step()
            final[dev] = [p.numpy() for p in params], opt.state_dict()
    for a, b in zip(final["cpu"][0], final["emu"][0]):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(final["emu"][0][3], init[3])
    for k, v in final["cpu"][1].items():
        np.testing.assert_allclose(final["emu"][1][k], v, rtol=1e-6, atol=1e-7, err_msg=k)


def test_sgd_step_rejects_mismatched_arrays():
    w = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"sgd_step: grads\[0\] \(shape \(3, 2\), float32\) must be a C-contiguous "
                                         r"float32 array of weights\[0\]'s shape \(2, 3\)"):
        sgd.sgd_step([w], [np.zeros((3, 2), np.float32)], [w.copy()], 0.1, 0.9, True, 0, "emu")
    with pytest.raises(TypeError, match=r"grads\[0\] must be a numpy.ndarray on device 'emu'"):
        sgd.sgd_step([w], [[0.0] * 6], [w.copy()], 0.1, 0.9, True, 0, "emu")
    with pytest.raises(ValueError, match=r"sgd_step: sgd has versions \[1, 2\], not 9"):
        sgd.sgd_step([w], [w.copy()], [w.copy()], 0.1, 0.9, True, 0, "emu", version=9)


# ---- the version switch ------------------------------------------------------------------------------
def test_version_switch_of_these_ops(monkeypatch):
    """One registry and one switch for these ops and the conv's: $IGC_NP_KERNELS names both kinds,
    use_version nests, the innermost choice wins, and leaving it restores the environment's."""
    monkeypatch.delenv(versions.ENV, raising=False)
    assert sorted(versions.versions("interleaved_secondary")) == [1, 2] == versions.kernels("sgd")
    assert sorted(versions.versions("permute_channels")) == [0, 1, 2] and versions.kernels("permute_channels") == [1, 2]
    assert [versions.default(op) for op in ("permute_channels", "interleaved_secondary", "batch_norm", "sgd")] \
        == [0, 2, 2, 2]
    monkeypatch.setenv(versions.ENV, "sgd=1, permute_channels=2, conv2d_forward=1")
    assert [versions.selected(op) for op in ("sgd", "permute_channels", "conv2d_forward", "batch_norm")] == [1, 2, 1, 2]
    with use_version(sgd=2, batch_norm=1):
        with use_version(sgd=1, interleaved_secondary=1):
            assert [versions.selected(op) for op in ("sgd", "batch_norm", "interleaved_secondary")] == [1, 1, 1]
        assert [versions.selected(op) for op in ("sgd", "batch_norm", "interleaved_secondary")] == [2, 1, 2]
    assert versions.selected("sgd") == 1 and versions.selected("batch_norm") == 2


@pytest.fixture
def kernels_run(monkeypatch):
    """The names of the kernels that launchers fetch from their compiled modules, in order."""
    names, real = [], permutation.get_module

    class Spy:
        def __init__(self, module):
            self.module = module

        def get_function(self, name, *args):
            names.append(name)
            return self.module.get_function(name, *args)

    monkeypatch.setattr(permutation, "get_module", lambda *a, **k: Spy(real(*a, **k)))
    monkeypatch.delenv(versions.ENV, raising=False)
    return names


@pytest.mark.parametrize("H,W,kernel", [(4, 8, "permute_channels_rows"), (4, 7, "permute_channels"),
                                        (1, 1, "permute_channels"), (7, 7, "permute_channels_rows")])
def test_permutation_rule_picks_by_row_length(kernels_run, H, W, kernel):
    """Version 0 (the default) runs version 2's one block per row from H*W >= 32 pixels on, else
    version 1's one thread per element; an explicit version runs that kernel whatever the shape."""
    x = np.arange(2 * 6 * H * W, dtype=np.float32).reshape(2, 6, H, W)
    y = permutation.permute_channels(x, 3, "emu")
    np.testing.assert_array_equal(y, reference.permute_channels(x, 3))
    assert permutation.permute_version(0, H, W) == (2 if kernel.endswith("rows") else 1)
    for version in (1, 2):
        with use_version(permute_channels=version):
            permutation.permute_channels(x, 3, "emu")
    assert kernels_run == [kernel, "permute_channels", "permute_channels_rows"]
