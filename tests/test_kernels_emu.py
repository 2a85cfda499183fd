"""Every hand-written kernel, run by the CPU emulator, against the reference tier (igc_np/ops/reference.py).

The check_* helpers take the device, so tests/test_kernels_cuda.py runs the same comparisons on
a GPU. The reference tier is the specification; direct_conv below is a tiny independent loop
version (one output element at a time) that cross-checks one case.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from igc_np.kernels import conv, interleaved_secondary, permutation
from igc_np.ops import reference

# float64 runs the same arithmetic as NumPy up to the order of the sums; float32 also rounds.
TOL = {np.float64: dict(rtol=1e-11, atol=1e-11), np.float32: dict(rtol=2e-5, atol=2e-5)}
DTYPES = [np.float64, np.float32]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def conv_cases(draw):
    """(x shape, W shape, stride, padding, groups): N<=3, C<=12, H,W<=9, kernel 1 or 3."""
    C_in = draw(st.integers(1, 12))
    G = draw(st.sampled_from(divisors(C_in)))
    C_out = G * draw(st.integers(1, 12 // G))
    k = draw(st.sampled_from([1, 3]))
    kh, kw = k, draw(st.sampled_from([1, k]))  # occasionally non-square
    stride = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])))
    padding = (draw(st.sampled_from([0, 1])), draw(st.sampled_from([0, 1])))
    H = draw(st.integers(max(1, kh - 2 * padding[0]), 9))
    W = draw(st.integers(max(1, kw - 2 * padding[1]), 9))
    N = draw(st.integers(1, 3))
    return (N, C_in, H, W), (C_out, C_in // G, kh, kw), stride, padding, G


@st.composite
def interleaved_cases(draw):
    """(x shape, L, S) with C = L*M <= 12 and any divisors L, S of C."""
    C = draw(st.integers(1, 12))
    L = draw(st.sampled_from(divisors(C)))
    S = draw(st.sampled_from(divisors(C)))
    N, H, W = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    return (N, C, H, W), L, S


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _close(actual, expected, dtype):
    assert actual.shape == expected.shape and actual.dtype == dtype
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


# ---- checks shared with the CUDA tests (to_device, to_host move arrays; identity on "emu") ----

# A float32 kernel is compared with the float64 reference on the same (float32-representable)
# inputs: the error of a sum of K rounded terms grows with K, so an element-wise bound fails on
# large layers while the kernel is right; the norm of the whole error against the norm of the
# result does not (bug 4). float64 kernels only differ from NumPy in the order of the sums.
NORM_TOL = {np.float64: 1e-12, np.float32: 1e-5}


def assert_norm_close(actual, expected64, dtype, what=""):
    """||actual - expected|| <= NORM_TOL[dtype] * ||expected|| (Frobenius norms), and same shape/dtype."""
    assert actual.shape == expected64.shape and actual.dtype == dtype, (what, actual.shape, actual.dtype)
    err = np.linalg.norm(actual.astype(np.float64) - expected64)
    scale = np.linalg.norm(expected64)
    assert err <= NORM_TOL[dtype] * max(scale, 1e-300), f"{what}: |error| {err:.3g} vs |reference| {scale:.3g}"


def check_conv(case, dtype, device, to_device=lambda a: a, to_host=lambda a: a, seed=0, version=None):
    """Forward, backward-data and backward-weight of kernel `version` (None: the selected one)
    against the float64 NumPy reference on the same inputs."""
    x_shape, W_shape, stride, padding, G = case
    rng = np.random.default_rng(seed)
    x, W = _rand(rng, x_shape, dtype), _rand(rng, W_shape, dtype)
    x64, W64 = x.astype(np.float64), W.astype(np.float64)
    y_ref = reference.conv2d(x64, W64, stride, padding, G)
    y = to_host(conv.conv2d_forward(to_device(x), to_device(W), stride, padding, G, device, version=version))
    assert_norm_close(y, y_ref, dtype, f"forward v{version} {case}")
    gy = _rand(rng, y_ref.shape, dtype)
    gx_ref, gW_ref = reference.conv2d_backward(x64, W64, gy.astype(np.float64), stride, padding, G)
    gx = to_host(conv.conv2d_backward_data(to_device(gy), to_device(W), x_shape, stride, padding, G, device,
                                          version=version))
    assert_norm_close(gx, gx_ref, dtype, f"backward-data v{version} {case}")
    gW = to_host(conv.conv2d_backward_weight(to_device(x), to_device(gy), W_shape, stride, padding, G, device,
                                            version=version))
    assert_norm_close(gW, gW_ref, dtype, f"backward-weight v{version} {case}")


def check_permutation(x_shape, b, dtype, device, to_device=lambda a: a, to_host=lambda a: a):
    x = _rand(np.random.default_rng(1), x_shape, dtype)
    y = to_host(permutation.permute_channels(to_device(x), b, device))
    np.testing.assert_array_equal(y, reference.permute_channels(x, b))  # a copy: bit-exact
    back = to_host(permutation.permute_channels(to_device(y), x_shape[1] // b, device))
    np.testing.assert_array_equal(back, x)


def check_interleaved(case, dtype, device, to_device=lambda a: a, to_host=lambda a: a):
    """The fused kernels equal the unfused chain permute(L) -> 1x1 conv (S groups) -> permute(S)."""
    x_shape, L, S = case
    C = x_shape[1]
    rng = np.random.default_rng(2)
    x, W2 = _rand(rng, x_shape, dtype), _rand(rng, (C, C // S, 1, 1), dtype)
    xp = reference.permute_channels(x, L)
    y_ref = reference.permute_channels(reference.conv2d(xp, W2, groups=S), S)
    y = to_host(interleaved_secondary.interleaved_secondary_forward(to_device(x), to_device(W2), L, S, device))
    _close(y, y_ref, dtype)
    gy = _rand(rng, x_shape, dtype)
    gv = reference.permute_channels_backward(gy, S)  # backward of the last permutation
    gxp_ref, gW_ref = reference.conv2d_backward(xp, W2, gv, groups=S)
    gx_ref = reference.permute_channels_backward(gxp_ref, L)
    gx = to_host(interleaved_secondary.interleaved_secondary_backward_data(to_device(gy), to_device(W2), L, S, device))
    _close(gx, gx_ref, dtype)
    gW = to_host(interleaved_secondary.interleaved_secondary_backward_weight(to_device(x), to_device(gy), W2.shape, L, S, device))
    _close(gW, gW_ref, dtype)


# ---- the emulator tests ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, **SETTINGS)
@given(case=conv_cases())
def test_conv_emu(case, dtype):
    check_conv(case, dtype, "emu")


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30, **SETTINGS)
@given(x_shape=interleaved_cases().map(lambda c: c[0]), data=st.data())
def test_permutation_emu(x_shape, data, dtype):
    b = data.draw(st.sampled_from(divisors(x_shape[1])))
    check_permutation(x_shape, b, dtype, "emu")


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, **SETTINGS)
@given(case=interleaved_cases())
def test_interleaved_secondary_emu(case, dtype):
    check_interleaved(case, dtype, "emu")


def direct_conv(x, W, stride, padding, G):
    """Grouped conv by its definition, one output element at a time."""
    N, C_in, H, Wd = x.shape
    C_out, Cg, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (Wd + 2 * pw - kw) // sw + 1
    y = np.zeros((N, C_out, Ho, Wo))
    for n, co, ho, wo in np.ndindex(y.shape):
        g = co // (C_out // G)
        for c, i, j in np.ndindex(Cg, kh, kw):
            h, w = ho * sh - ph + i, wo * sw - pw + j
            if 0 <= h < H and 0 <= w < Wd:
                y[n, co, ho, wo] += W[co, c, i, j] * x[n, g * Cg + c, h, w]
    return y


def test_conv_against_direct_loops():
    rng = np.random.default_rng(3)
    x, W = rng.standard_normal((2, 6, 7, 5)), rng.standard_normal((9, 2, 3, 3))
    y = conv.conv2d_forward(x, W, (2, 1), (1, 0), 3, "emu")
    np.testing.assert_allclose(y, direct_conv(x, W, (2, 1), (1, 0), 3), rtol=1e-12, atol=1e-12)


def test_igc_shape_cifar_stage():
    """One full-size IGC-L24M2 case from the CIFAR nets (batch 1 to keep it quick)."""
    check_conv(((1, 48, 8, 8), (48, 2, 3, 3), (1, 1), (1, 1), 24), np.float32, "emu")
    check_interleaved(((1, 48, 8, 8), 24, 2), np.float32, "emu")


def test_non_contiguous_inputs_are_accepted():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5, 2)).transpose(3, 0, 1, 2)  # (2, 3, 4, 5), not C-contiguous
    W = rng.standard_normal((6, 3, 1, 1))
    np.testing.assert_allclose(conv.conv2d_forward(x, W, (1, 1), (0, 0), 1, "emu"),
                               reference.conv2d(np.ascontiguousarray(x), W), rtol=1e-12)


@pytest.mark.parametrize("call,message", [
    (lambda: conv.conv2d_forward(np.zeros((1, 6, 4, 4)), np.zeros((4, 3, 3, 3)), (1, 1), (1, 1), 4, "emu"),
     r"conv2d_forward: groups=4 must divide C_in=6 \(x shape \(1, 6, 4, 4\)\)"),
    (lambda: conv.conv2d_forward(np.zeros((1, 6, 4, 4)), np.zeros((4, 2, 3, 3)), (1, 1), (1, 1), 2, "emu"),
     r"conv2d_forward: W shape \(4, 2, 3, 3\) needs W.shape\[1\] = C_in/groups = 3"),
    (lambda: conv.conv2d_forward(np.zeros((1, 2, 4, 4)), np.zeros((2, 2, 3, 3), np.float32), (1, 1), (1, 1), 1, "emu"),
     r"conv2d_forward: W has dtype float32 but x has float64"),
    (lambda: conv.conv2d_forward(np.zeros((1, 2, 2, 2)), np.zeros((2, 2, 5, 5)), (1, 1), (0, 0), 1, "emu"),
     r"conv2d_forward: kernel 5x5 is larger than the padded input 2x2"),
    (lambda: conv.conv2d_backward_data(np.zeros((1, 2, 3, 3)), np.zeros((2, 2, 3, 3)), (1, 2, 4, 4), (1, 1), (1, 1), 1, "emu"),
     r"conv2d_backward_data: gy shape \(1, 2, 3, 3\) must be the output shape \(1, 2, 4, 4\)"),
    (lambda: permutation.permute_channels(np.zeros((1, 6, 2, 2)), 4, "emu"),
     r"permute_channels: b=4 must divide the channel count C=6"),
    (lambda: interleaved_secondary.interleaved_secondary_forward(np.zeros((1, 6, 2, 2)), np.zeros((6, 2, 1, 1)), 2, 2, "emu"),
     r"interleaved_secondary_forward: W2 shape \(6, 2, 1, 1\) must be \(C, C/S, 1, 1\) = \(6, 3, 1, 1\)"),
    (lambda: interleaved_secondary.interleaved_secondary_forward(np.zeros((1, 6, 2, 2)), np.zeros((6, 3, 1, 1)), 4, 2, "emu"),
     r"interleaved_secondary_forward: L=4 must divide the channel count C=6"),
    (lambda: conv.conv2d_forward(np.zeros((1, 2, 4, 4)), np.zeros((2, 2, 3, 3)), (0, 1), (1, 1), 1, "emu"),
     r"conv2d_forward: stride must be >= 1"),
    (lambda: permutation.permute_channels(np.zeros((1, 6, 2, 2)), 2, "tpu"), r"device must be 'cuda' or 'emu'"),
])
def test_invalid_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_wrong_array_kind_is_a_type_error():
    with pytest.raises(TypeError, match="must be a numpy.ndarray on device 'emu'"):
        permutation.permute_channels([[[[1.0]]]], 1, "emu")
