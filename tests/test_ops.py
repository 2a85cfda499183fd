"""Every op: forward against an independent reference, backward by float64 finite differences."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import igc_np as ig
from igc_np import functional as F
from igc_np.ops import cpu_conv, reference
from igc_np.ops.permutation import permute_channels_cpu
from reference import conv2d_direct, permute_by_formula
from strategies import arrays, conv_cases, divisors


def T(a, grad=True):
    return ig.Tensor(a, requires_grad=grad)


@given(conv_cases(), st.data())
def test_conv2d_forward_matches_direct_definition(case, data):
    xs, ws, stride, padding, groups = case
    x, W = data.draw(arrays(xs)), data.draw(arrays(ws))
    y = F.conv2d(T(x), T(W), stride=stride, padding=padding, groups=groups)
    np.testing.assert_allclose(y.data, conv2d_direct(x, W, stride, padding, groups), atol=1e-12)
    np.testing.assert_allclose(reference.conv2d(x, W, stride, padding, groups), y.data, atol=1e-12)


@given(conv_cases(), st.data())
def test_conv2d_gradients(case, data):
    xs, ws, stride, padding, groups = case
    x, W = T(data.draw(arrays(xs))), T(data.draw(arrays(ws)))
    assert ig.gradcheck(lambda x, W: F.conv2d(x, W, stride=stride, padding=padding, groups=groups), [x, W])


@given(conv_cases(), st.data())
def test_conv2d_cpu_engine_backward_functions_are_the_adjoints(case, data):
    """<conv(x, W), gy> == <x, backward_data(gy)> == <W, backward_weight(gy)>: exact adjoints."""
    xs, ws, stride, padding, groups = case
    x, W = data.draw(arrays(xs)), data.draw(arrays(ws))
    y = conv2d_direct(x, W, stride, padding, groups)
    gy = data.draw(arrays(y.shape))
    _, x_pad = cpu_conv.conv2d_forward(x, W, stride, padding, groups)
    gx = cpu_conv.conv2d_backward_data(gy, W, xs, stride, padding, groups)
    gW = cpu_conv.conv2d_backward_weight(x_pad, gy, ws, stride, groups)
    inner = (y * gy).sum()
    np.testing.assert_allclose((gx * x).sum(), inner, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose((gW * W).sum(), inner, rtol=1e-10, atol=1e-10)


def test_conv2d_with_bias_and_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 7)).astype(np.float32)
    W = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    y = F.conv2d(T(x), T(W), T(b), padding=1, groups=2)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data, conv2d_direct(x, W, (1, 1), (1, 1), 2) + b[:, None, None], rtol=1e-4, atol=1e-4)
    xb, Wb, bb = T(x.astype(np.float64)), T(W.astype(np.float64)), T(b.astype(np.float64))
    assert ig.gradcheck(lambda x, W, b: F.conv2d(x, W, b, padding=1, groups=2), [xb, Wb, bb])


@pytest.mark.parametrize("bad, message", [
    (dict(x=(2, 5, 6, 6), W=(6, 2, 3, 3), groups=2), "not divisible by groups=2"),
    (dict(x=(2, 4, 6, 6), W=(6, 3, 3, 3), groups=2), "expects C_in/groups=3"),
    (dict(x=(4, 6, 6), W=(6, 4, 3, 3), groups=1), "must be 4-D"),
    (dict(x=(2, 4, 2, 2), W=(6, 4, 5, 5), groups=1), "does not fit"),
])
def test_conv2d_bad_shapes_name_the_problem(bad, message):
    x, W = T(np.zeros(bad["x"])), T(np.zeros(bad["W"]))
    with pytest.raises(ValueError, match=message) as e:
        F.conv2d(x, W, groups=bad["groups"])
    assert "conv2d" in str(e.value)


def test_conv2d_dtype_mismatch():
    with pytest.raises(ValueError, match="dtype"):
        F.conv2d(T(np.zeros((1, 2, 3, 3), np.float32)), T(np.zeros((2, 2, 1, 1))))


@given(st.sampled_from([1, 2, 3, 4, 6, 8, 12]), st.data())
def test_permute_channels_every_divisor(C, data):
    x = data.draw(arrays((2, C, 3, 2)))
    for b in divisors(C):
        y = F.permute_channels(T(x), b)
        np.testing.assert_array_equal(y.data, permute_by_formula(x, b))
        np.testing.assert_array_equal(y.data, x[:, reference.permutation_index(C, b)])
        assert ig.gradcheck(lambda x: F.permute_channels(x, b), [T(x)])


def test_permute_channels_keeps_channel_first_memory():
    x = np.random.default_rng(0).standard_normal((3, 6, 4, 5)).transpose(0, 1, 2, 3)
    chwn = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    y = permute_channels_cpu(chwn, 2)
    np.testing.assert_array_equal(y, permute_by_formula(x, 2))
    assert y.transpose(1, 2, 3, 0).flags.c_contiguous


def test_permute_channels_bad_factor():
    with pytest.raises(ValueError, match=r"must divide the channel count C=6.*\[1, 2, 3, 6\]"):
        F.permute_channels(T(np.zeros((1, 6, 2, 2))), 4)


@given(st.sampled_from([(2, 2), (3, 2), (4, 3), (6, 2), (1, 5), (5, 1)]), st.data())
def test_interleaved_secondary_equals_the_unfused_chain(LM, data):
    L, M = LM
    C = L * M
    x = data.draw(arrays((2, C, 3, 3)))
    W2 = data.draw(arrays((C, L, 1, 1)))
    fused = F.interleaved_secondary(T(x), T(W2), L)
    chain = F.permute_channels(F.conv2d(F.permute_channels(T(x), L), T(W2), groups=M), M)
    np.testing.assert_allclose(fused.data, chain.data, atol=1e-12)
    assert ig.gradcheck(lambda x, W: F.interleaved_secondary(x, W, L), [T(x), T(W2)])


@given(st.integers(1, 3), st.integers(1, 5), st.integers(2, 6), st.data())
def test_batch_norm_train_and_eval(N, C, H, data):
    x = T(data.draw(arrays((N, C, H, H))))
    gamma, beta = T(data.draw(arrays((C,))) + 2.0), T(data.draw(arrays((C,))))
    y = F.batch_norm(x, gamma, beta, training=True)
    xhat = (x.data - x.data.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(x.data.var(axis=(0, 2, 3), keepdims=True) + 2e-5)
    np.testing.assert_allclose(y.data, xhat * gamma.data[:, None, None] + beta.data[:, None, None], atol=1e-10)
    assert ig.gradcheck(lambda x, g, b: F.batch_norm(x, g, b, training=True), [x, gamma, beta])
    rm, rv = np.full(C, 0.5), np.full(C, 2.0)
    assert ig.gradcheck(lambda x, g, b: F.batch_norm(x, g, b, rm, rv, training=False), [x, gamma, beta])


def test_batch_norm_running_statistics_update():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 5)) * 3 + 1
    rm, rv = np.zeros(3), np.ones(3)
    F.batch_norm(T(x), T(np.ones(3)), T(np.zeros(3)), rm, rv, training=True, momentum=0.9)
    np.testing.assert_allclose(rm, 0.1 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(rv, 0.9 + 0.1 * x.var(axis=(0, 2, 3)))
    with pytest.raises(ValueError, match=r"gamma shape \(2,\) != \(C,\) = \(3,\)"):
        F.batch_norm(T(x), T(np.ones(2)), T(np.zeros(3)))


@given(st.sampled_from([(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)]), st.integers(2, 7), st.data())
def test_pooling(cfg, size, data):
    k, s, p = cfg
    assume(size + 2 * p >= k)
    x = data.draw(arrays((2, 3, size, size)))
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    Ho = (size + 2 * p - k) // s + 1
    ref = np.array([[[[xpad[n, c, h * s:h * s + k, w * s:w * s + k].max() for w in range(Ho)] for h in range(Ho)]
                     for c in range(3)] for n in range(2)])
    np.testing.assert_allclose(F.max_pool2d(T(x), k, s, p).data, ref)
    assert ig.gradcheck(lambda x: F.max_pool2d(x, k, s, p), [T(x)])
    xz = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    ref = np.array([[[[xz[n, c, h * s:h * s + k, w * s:w * s + k].mean() for w in range(Ho)] for h in range(Ho)]
                     for c in range(3)] for n in range(2)])
    np.testing.assert_allclose(F.avg_pool2d(T(x), k, s, p).data, ref, atol=1e-12)
    assert ig.gradcheck(lambda x: F.avg_pool2d(x, k, s, p), [T(x)])
    np.testing.assert_allclose(F.global_avg_pool2d(T(x)).data, x.mean(axis=(2, 3)))
    assert ig.gradcheck(lambda x: F.global_avg_pool2d(x), [T(x)])


def test_relu_linear_cross_entropy():
    rng = np.random.default_rng(0)
    x = T(rng.standard_normal((5, 4)))
    W, b = T(rng.standard_normal((3, 4))), T(rng.standard_normal(3))
    labels = np.array([0, 2, 1, 1, 0])
    logits = F.linear(F.relu(x), W, b)
    np.testing.assert_allclose(logits.data, np.maximum(x.data, 0) @ W.data.T + b.data)
    z = logits.data
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(F.cross_entropy(logits, labels).item(), -np.log(p[np.arange(5), labels]).mean())
    assert ig.gradcheck(lambda x, W, b: F.cross_entropy(F.linear(F.relu(x), W, b), labels), [x, W, b])
    assert ig.gradcheck(lambda x, W: F.linear(x, W), [x, W])


def test_cross_entropy_bad_labels():
    logits = T(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        F.cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match="labels shape"):
        F.cross_entropy(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integers"):
        F.cross_entropy(logits, np.array([0.0, 1.0]))


def test_linear_bad_shape():
    with pytest.raises(ValueError, match=r"linear: weight shape \(3, 5\) does not fit input shape \(2, 4\)"):
        F.linear(T(np.zeros((2, 4))), T(np.zeros((3, 5))))


def channel_first(a):
    """The same values in the (C, H, W, N) memory the CPU conv produces (an NCHW view)."""
    return np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


@given(st.integers(2, 4), st.integers(1, 6), st.integers(1, 5), st.booleans(), st.data())
def test_batch_norm_channel_first_path_equals_generic(N, C, H, training, data):
    """The cache-blocked path (taken for (C, H, W, N) memory) computes the same values and gradients."""
    x = data.draw(arrays((N, C, H, H)))
    gamma, beta = data.draw(arrays((C,))) + 2.0, data.draw(arrays((C,)))
    gy = data.draw(arrays((N, C, H, H)))
    results = []
    for layout in (np.ascontiguousarray, channel_first):
        rm, rv = np.full(C, 0.5), np.full(C, 2.0)
        xt, gt, bt = T(layout(x)), T(gamma), T(beta)
        y = F.batch_norm(xt, gt, bt, rm, rv, training=training)
        y.backward(layout(gy))
        results.append((y.data, xt.grad, gt.grad, bt.grad, rm, rv))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    xt = T(channel_first(x))
    assert ig.gradcheck(lambda x, g, b: F.batch_norm(x, g, b, training=True), [xt, T(gamma), T(beta)])


def test_more_error_messages():
    x32 = T(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="batch_norm: gamma dtype float64 != input dtype float32"):
        F.batch_norm(x32, T(np.ones(4)), T(np.zeros(4, np.float32)))
    with pytest.raises(ValueError, match="conv2d: input and weight must be floating point"):
        F.conv2d(T(np.zeros((1, 2, 3, 3), np.int64), False), T(np.zeros((2, 2, 1, 1), np.int64), False))
    with pytest.raises(ValueError, match="L=0 must be a positive divisor of C=4"):
        F.interleaved_secondary(x32, T(np.zeros((4, 1, 1, 1), np.float32)), 0)
    with pytest.raises(ValueError, match="dtype float32 and weight dtype float64"):
        F.interleaved_secondary(x32, T(np.zeros((4, 2, 1, 1))), 2)


def test_batch_norm_eval_keeps_the_input_dtype_with_float64_statistics():
    x = T(np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32))
    y = F.batch_norm(x, T(np.ones(3, np.float32)), T(np.zeros(3, np.float32)), np.zeros(3), np.ones(3),
                     training=False)
    assert y.dtype == np.float32


def test_max_pool_with_more_than_127_taps():
    x = np.random.default_rng(0).standard_normal((1, 2, 12, 12))
    y = F.max_pool2d(T(x), 12)
    np.testing.assert_array_equal(y.data[:, :, 0, 0], x.max(axis=(2, 3)))
    assert ig.gradcheck(lambda x: F.max_pool2d(x, 12), [T(x)])


def test_threaded_relu_writes_every_element():
    """ReLU splits large arrays over threads (ops/parallel.elementwise); every slice must be written."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = channel_first(rng.standard_normal((8, 16, 24, 24)).astype(np.float32))
        xt = T(x)
        y = F.relu(xt)
        np.testing.assert_array_equal(y.data, np.maximum(x, 0))
        gy = channel_first(rng.standard_normal(x.shape).astype(np.float32))
        y.backward(gy)
        np.testing.assert_array_equal(xt.grad, gy * (x > 0))
