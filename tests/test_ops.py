"""Every op: forward against an independent reference, backward by float64 finite differences."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import igc_np as ig
from igc_np import functional as F
from igc_np.ops import cpu_conv, reference
from igc_np.ops.permutation import permute_channels_cpu
from strategies import arrays, conv_cases, divisors


def T(a, grad=True):
    return ig.Tensor(a, requires_grad=grad)


@given(conv_cases(), st.data())
def test_conv2d_forward_matches_the_reference_tier(case, data):
    xs, ws, stride, padding, groups = case
    x, W = data.draw(arrays(xs)), data.draw(arrays(ws))
    y = F.conv2d(T(x), T(W), stride=stride, padding=padding, groups=groups)
    np.testing.assert_allclose(y.data, reference.conv2d(x, W, stride, padding, groups), atol=1e-12)


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
    y = reference.conv2d(x, W, stride, padding, groups)
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
    np.testing.assert_allclose(y.data, reference.conv2d(x, W, (1, 1), (1, 1), 2) + b[:, None, None], rtol=1e-4, atol=1e-4)
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
        np.testing.assert_array_equal(y.data, reference.permute_channels(x, b))
        np.testing.assert_array_equal(y.data, x[:, reference.permutation_index(C, b)])
        assert ig.gradcheck(lambda x: F.permute_channels(x, b), [T(x)])


def test_permute_channels_keeps_channel_first_memory():
    x = np.random.default_rng(0).standard_normal((3, 6, 4, 5)).transpose(0, 1, 2, 3)
    chwn = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    y = permute_channels_cpu(chwn, 2)
    np.testing.assert_array_equal(y, reference.permute_channels(x, 2))
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


# ---- silent garbage and API errors (issue 10) -------------------------------------------------
def test_max_pool_propagates_nan_wherever_it_sits_in_the_window():
    """NumPy's max returns NaN when any element is NaN; so must every window, NaN first or not."""
    rng = np.random.default_rng(0)
    for t in range(9):  # NaN at every tap position of a 3x3 window
        x = rng.standard_normal((1, 2, 3, 3))
        x[0, 1, t // 3, t % 3] = np.nan
        for tier in (False, True):
            with ig.backend.use_reference(tier):
                xt = T(x)
                y = F.max_pool2d(xt, 3)
                y.backward(np.ones(y.shape))
            assert np.isnan(y.data[0, 1, 0, 0]) and not np.isnan(y.data[0, 0, 0, 0])
            assert y.data[0, 0, 0, 0] == x[0, 0].max()
            # the gradient goes to the NaN (the window's maximum), nowhere else in that channel
            expected = np.zeros((3, 3))
            expected[t // 3, t % 3] = 1
            np.testing.assert_array_equal(xt.grad[0, 1], expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_])
def test_pooling_refuses_integer_input(dtype):
    x = T(np.full((1, 1, 4, 4), 200, dtype), grad=False)
    for pool in (lambda x: F.avg_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), F.global_avg_pool2d):
        with pytest.raises(ValueError, match=r"pool2d: input must be floating point .* got dtype"):
            pool(x)


def test_linear_refuses_mixed_precision_bias():
    x, W = T(np.zeros((2, 3), np.float32)), T(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="linear: bias dtype float64 != input dtype float32"):
        F.linear(x, W, T(np.zeros(4)))
    assert F.linear(x, W, T(np.zeros(4, np.float32))).dtype == np.float32


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.conv2d(T(np.zeros((2, 2, 4, 4))), T(np.zeros((2, 2, 0, 3)))), ValueError,
     r"conv2d: weight shape \(2, 2, 0, 3\) has a zero-size axis"),
    (lambda: F.conv2d(T(np.zeros((0, 2, 4, 4))), T(np.zeros((2, 2, 3, 3)))), ValueError,
     r"conv2d: input has an empty axis, shape \(0, 2, 4, 4\)"),
    (lambda: F.conv2d(T(np.zeros((1, 2, 4, 4))), T(np.zeros((2, 2, 3, 3))), groups=0), ValueError,
     r"conv2d: groups must be a positive int, got 0"),
    (lambda: F.conv2d(T(np.zeros((1, 2, 4, 4))), T(np.zeros((2, 2, 3, 3))), padding=10**6), ValueError,
     r"conv2d: padding \(1000000, 1000000\) is larger than the kernel 3x3"),
    (lambda: F.conv2d(T(np.zeros((1, 2, 4, 4))), T(np.zeros((2, 2, 3, 3))), stride=1.5), ValueError,
     r"conv2d: stride must be an int or a pair of ints, got 1.5"),
    (lambda: F.max_pool2d(T(np.zeros((0, 2, 4, 4))), 2), ValueError, r"max_pool2d: input has an empty axis"),
    (lambda: F.linear(T(np.zeros((0, 3))), T(np.zeros((2, 3)))), ValueError, r"linear: input has an empty axis"),
    (lambda: F.batch_norm(T(np.zeros((0, 2, 3, 3))), T(np.ones(2)), T(np.zeros(2))), ValueError,
     r"batch_norm: input has an empty axis"),
    (lambda: F.cross_entropy(T(np.zeros((2, 3))), [0, 1]), TypeError,
     r"cross_entropy: labels must be an integer array .* got list"),
    (lambda: F.batch_norm(T(np.zeros((2, 2, 3, 3))), T(np.ones(2)), T(np.zeros(2)), np.zeros(2, np.int64),
                          np.ones(2)), ValueError,
     r"batch_norm: running_mean must be floating point, got dtype int64"),
    (lambda: F.batch_norm(T(np.zeros((2, 2, 3, 3))), T(np.ones(2)), T(np.zeros(2)), [0.0, 0.0], np.ones(2)),
     TypeError, r"batch_norm: running_mean must be a numpy/cupy array .* got list"),
    (lambda: F.permute_channels(T(np.zeros((1, 6, 2, 2))), 0), ValueError,
     r"permute_channels: branch_factor=0 must divide the channel count C=6"),
])
def test_api_errors_name_the_op_and_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_no_op_reads_a_device_array_back_to_the_host(monkeypatch):
    """On 'cuda' (the test-only CuPy stand-in) no op calls int()/float()/bool()/.item()/.get() on a
    device array or assigns through a boolean mask: each is a device->host sync on a real GPU."""
    import fake_cupy
    cp = fake_cupy.install(monkeypatch)

    def sync(self, *args, **kwargs):
        raise AssertionError("device->host sync inside an op")
    for name in ("__int__", "__float__", "__bool__", "item", "get", "tolist"):
        monkeypatch.setattr(cp.ndarray, name, sync)
    setitem = cp.ndarray.__setitem__

    def no_mask(self, key, value):
        if isinstance(key, cp.ndarray) and key.dtype == bool:
            sync(self)
        setitem(self, key, value)
    monkeypatch.setattr(cp.ndarray, "__setitem__", no_mask)
    rng = np.random.default_rng(0)
    x = ig.Tensor(cp.asarray(rng.standard_normal((2, 3, 6, 6))), requires_grad=True, device="cuda")
    g, b = (ig.Tensor(cp.asarray(v), requires_grad=True, device="cuda") for v in (np.ones(3), np.zeros(3)))
    W = ig.Tensor(cp.asarray(rng.standard_normal((4, 3))), requires_grad=True, device="cuda")
    labels = cp.asarray(np.array([1, 3]))
    h = F.batch_norm(x, g, b, cp.zeros(3), cp.ones(3), training=True)
    h = F.global_avg_pool2d(F.avg_pool2d(F.max_pool2d(F.relu(h), 3, 2, 1), 2))
    loss = F.cross_entropy(F.linear(h, W), labels)
    loss.backward()
    assert x.grad is not None and W.grad is not None


# ---- padding='same' / 'valid' and tuple windows (issue 19) ----------------------------------------
@given(st.sampled_from([(1, 1), (2, 2), (3, 3), (4, 4), (2, 3), (5, 2), (1, 4)]), st.integers(1, 3),
       st.integers(2, 7), st.integers(2, 7), st.booleans(), st.data())
def test_conv2d_same_padding_is_pytorchs(kernel, groups, H, W, reference_tier, data):
    """'same' keeps H x W; an even kernel's odd zero row / column goes to the bottom / right (PyTorch:
    left = (k - 1) // 2). Checked against the reference conv of the explicitly padded input, forward
    and both gradients, on both tiers."""
    kh, kw = kernel
    x0 = data.draw(arrays((2, 2 * groups, H, W)))
    W0 = data.draw(arrays((3 * groups, 2, kh, kw)))
    gy = data.draw(arrays((2, 3 * groups, H, W)))
    top, left = (kh - 1) // 2, (kw - 1) // 2
    pads = ((0, 0), (0, 0), (top, kh - 1 - top), (left, kw - 1 - left))
    want = reference.conv2d(np.pad(x0, pads), W0, groups=groups)
    gx_pad, gW_want = reference.conv2d_backward(np.pad(x0, pads), W0, gy, groups=groups)
    gx_want = gx_pad[:, :, top:top + H, left:left + W]
    x, Wt = ig.Tensor(x0, requires_grad=True), ig.Tensor(W0, requires_grad=True)
    with ig.backend.use_reference(reference_tier):
        y = F.conv2d(x, Wt, padding="same", groups=groups)
        y.backward(gy)
    assert y.shape == (2, 3 * groups, H, W)
    scale = np.abs(x0).max() * np.abs(W0).sum() * 1e-12  # bounded by the size of the terms
    np.testing.assert_allclose(y.numpy(), want, rtol=0, atol=scale)
    np.testing.assert_allclose(x.grad, gx_want, rtol=0, atol=np.abs(gy).max() * np.abs(W0).sum() * 1e-12)
    np.testing.assert_allclose(Wt.grad, gW_want, rtol=0, atol=np.abs(gy).sum() * np.abs(x0).max() * 1e-12)


def test_conv2d_valid_padding_and_tuple_windows():
    x = ig.Tensor(np.random.default_rng(0).standard_normal((1, 2, 7, 6)))
    W = ig.Tensor(np.random.default_rng(1).standard_normal((4, 2, 3, 2)))
    np.testing.assert_array_equal(F.conv2d(x, W, padding="valid").numpy(), F.conv2d(x, W, padding=0).numpy())
    y = F.conv2d(x, W, stride=(2, 1), padding=(1, 0))
    assert y.shape == (1, 4, 4, 5)
    np.testing.assert_allclose(y.numpy(), reference.conv2d(x.numpy(), W.numpy(), (2, 1), (1, 0)), atol=1e-12)
    assert F.max_pool2d(x, (2, 3), stride=(1, 2), padding=(1, 1)).shape == (1, 2, 8, 3)
    assert F.avg_pool2d(x, kernel_size=(3, 2), stride=(2, 2)).shape == (1, 2, 3, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"padding": "same", "stride": 2}, r"padding='same' needs stride 1 \(as in PyTorch\), got stride=\(2, 2\)"),
    ({"padding": "full"}, r"padding='full' is not one of \('same', 'valid'\)"),
    ({"padding": -1}, r"padding must be >= 0"),
    ({"stride": (1, 0)}, r"stride must be >= 1, got \(1, 0\)"),
    ({"padding": (1, 2, 3)}, r"padding must be an int or a pair of ints"),
])
def test_conv2d_window_errors_name_the_argument(kwargs, message):
    x, W = ig.Tensor(np.ones((1, 2, 5, 5))), ig.Tensor(np.ones((2, 2, 3, 3)))
    with pytest.raises(ValueError, match="conv2d: " + message):
        F.conv2d(x, W, **kwargs)


def test_conv_window_resolves_what_nn_conv2d_passes():
    from igc_np.ops.checks import conv_window
    assert conv_window("Conv2d", 3) == ((3, 3), (1, 1), ((0, 0), (0, 0)))
    assert conv_window("Conv2d", (3, 4), 1, "same") == ((3, 4), (1, 1), ((1, 1), (1, 2)))
    assert conv_window("Conv2d", (3, 5), (2, 1), (1, 2)) == ((3, 5), (2, 1), ((1, 1), (2, 2)))
    assert conv_window("Conv2d", 2, 2, "valid") == ((2, 2), (2, 2), ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="layer1.conv: kernel_size must be an int or a pair"):
        conv_window("layer1.conv", "3")
    with pytest.raises(TypeError, match="layer1.conv: padding must be an int or a pair"):  # both kinds
        conv_window("layer1.conv", 3, 1, 1.5)
