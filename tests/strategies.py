"""Hypothesis strategies shared by the tests: small shapes that still bite (odd sizes, every divisor)."""
import numpy as np
from hypothesis import strategies as st

from igc_np.ops.checks import divisors  # noqa: F401  (re-exported for the tests)


@st.composite
def arrays(draw, shape, dtype=np.float64, scale=1.0):
    """A standard-normal array of `shape` from a drawn seed (fast: no per-element drawing)."""
    seed = draw(st.integers(0, 2**32 - 1))
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


@st.composite
def conv_cases(draw, max_channels=12, max_size=9, kernels=(1, 3)):
    """(x_shape, W_shape, stride, padding, groups) for a valid grouped conv: groups in {1, 2, C, any
    divisor}, strides 1/2 (also different in h and w), padding 0..min(2, k) (also more than k//2,
    which exercises the cropping in the backward pass; F.conv2d refuses padding > k), odd and even
    spatial sizes."""
    groups = draw(st.integers(1, 4))
    cin = groups * draw(st.integers(1, max(1, max_channels // groups)))
    cout = groups * draw(st.integers(1, max(1, max_channels // groups)))
    groups = draw(st.sampled_from(sorted({1, groups, cin} if cout % cin == 0 else {1, groups})))
    k = draw(st.sampled_from(kernels))
    stride = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])))
    padding = (draw(st.integers(0, min(2, k))), draw(st.integers(0, min(2, k))))
    H = draw(st.integers(max(1, k - 2 * padding[0]), max_size))
    W = draw(st.integers(max(1, k - 2 * padding[1]), max_size))
    N = draw(st.integers(1, 3))
    return (N, cin, H, W), (cout, cin // groups, k, k), stride, padding, groups


# ---- IGC configurations (tests/test_igc_properties.py) -----------------------------------------
@st.composite
def igc_cases(draw, max_L=4, max_M=4, max_size=7, general_S=True):
    """A small IGC conv: dict with L, M, S, C_in, C_out = L*M, k, stride, and x's shape.

    C_in is any multiple of L (C_in != C_out too); S is M (the paper's choice, fused path) or, with
    general_S, any divisor of C_out (the unfused permute -> group conv -> permute path).
    """
    L = draw(st.integers(1, max_L))
    M = draw(st.integers(1, max_M))
    C_out = L * M
    C_in = L * draw(st.integers(1, max_M))
    S = draw(st.sampled_from(divisors(C_out))) if general_S and draw(st.booleans()) else M
    k = draw(st.sampled_from([1, 3]))
    stride = draw(st.sampled_from([1, 2]))
    H = draw(st.integers(k, max_size))
    W = draw(st.integers(k, max_size))
    N = draw(st.integers(1, 2))
    return dict(L=L, M=M, S=S, C_in=C_in, C_out=C_out, k=k, stride=stride, x_shape=(N, C_in, H, W))


@st.composite
def channels_and_factor(draw, max_channels=24):
    """(C, b): a channel count and a branch factor b dividing it (1 and C included)."""
    C = draw(st.integers(1, max_channels))
    return C, draw(st.sampled_from(divisors(C)))
