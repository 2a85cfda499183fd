"""Hypothesis strategies shared by the tests: small shapes that still bite (odd sizes, every divisor)."""
import numpy as np
from hypothesis import strategies as st


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def arrays(draw, shape, dtype=np.float64, scale=1.0):
    """A standard-normal array of `shape` from a drawn seed (fast: no per-element drawing)."""
    seed = draw(st.integers(0, 2**32 - 1))
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


@st.composite
def conv_cases(draw, max_channels=12, max_size=9, kernels=(1, 3)):
    """(x_shape, W_shape, stride, padding, groups) for a valid grouped conv: groups in {1, 2, C, any
    divisor}, stride 1/2, padding 0/1, odd and even spatial sizes."""
    groups = draw(st.integers(1, 4))
    cin = groups * draw(st.integers(1, max(1, max_channels // groups)))
    cout = groups * draw(st.integers(1, max(1, max_channels // groups)))
    groups = draw(st.sampled_from(sorted({1, groups} | ({cin} if cin == cout else set()))))
    k = draw(st.sampled_from(kernels))
    stride = draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from([0, 1])) if k > 1 else 0
    H = draw(st.integers(max(1, k - 2 * padding), max_size))
    W = draw(st.integers(max(1, k - 2 * padding), max_size))
    N = draw(st.integers(1, 3))
    return (N, cin, H, W), (cout, cin // groups, k, k), (stride, stride), (padding, padding), groups
