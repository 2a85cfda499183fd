"""The engine itself: graph walk, accumulation, no_grad, memory release, errors."""
import sys

import numpy as np
import pytest

from hypothesis import given, strategies as st

import igc_np as ig
from igc_np import functional as F
from strategies import arrays


def test_scalar_backward_and_accumulation_across_uses():
    x = ig.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = (x * x + x * 3.0).sum()  # x used three times
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 3.0)


def test_grad_accumulates_over_two_backward_calls():
    x = ig.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    (x * 2.0).sum().backward()
    (x * 5.0).sum().backward()
    np.testing.assert_allclose(x.grad, [7.0, 7.0])


def test_broadcasting_gradients_sum_back_to_shape():
    a = ig.Tensor(np.ones((2, 3, 4)), requires_grad=True)
    b = ig.Tensor(np.arange(3.0).reshape(1, 3, 1), requires_grad=True)
    ((a * b) + b).sum().backward()
    assert b.grad.shape == (1, 3, 1)
    np.testing.assert_allclose(b.grad.ravel(), 2 * 4 * 1 + 2 * 4 * np.ones(3))
    np.testing.assert_allclose(a.grad, np.broadcast_to(b.data, (2, 3, 4)))


def test_arithmetic_ops_gradcheck():
    rng = np.random.default_rng(1)
    a = ig.Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = ig.Tensor(rng.standard_normal((4,)) + 3.0, requires_grad=True)
    c = ig.Tensor(rng.standard_normal((4, 2)), requires_grad=True)
    assert ig.gradcheck(lambda a, b: (a - b) / b * a + (-a) ** 2, [a, b])
    assert ig.gradcheck(lambda a, c: (a @ c).reshape(2, 3).transpose().mean(axis=0), [a, c])
    assert ig.gradcheck(lambda b: (b.exp() + 1.0).log().sum(axis=0, keepdims=True), [b])
    assert ig.gradcheck(lambda a: 2.0 - a.sum(axis=1) * 3.0 + 1.0 / (a * a + 1.0).sum(), [a])


def test_dtype_is_preserved():
    x = ig.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    y = ((x * 2.5 + 1) / 3.0 - x).mean()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32


def test_no_grad_records_nothing():
    x = ig.Tensor(np.ones(3), requires_grad=True)
    with ig.no_grad():
        y = x * 2.0
    assert y.creator is None and not y.requires_grad
    assert ig.is_grad_enabled()


def test_deep_graph_does_not_hit_recursion_limit():
    x = ig.Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(3 * sys.getrecursionlimit()):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0, 1.0])


def test_graph_is_freed_after_backward():
    x = ig.Tensor(np.ones(4), requires_grad=True)
    y = x * 3.0
    loss = y.sum()
    loss.backward()
    # the saved arrays and the inputs of every function are dropped once used
    assert y.creator.inputs is None and not hasattr(y.creator, "a")
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_backward_needs_scalar_or_grad():
    x = ig.Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match="scalar"):
        (x * 2.0).backward()
    y = x * 2.0
    y.backward(np.ones(3))
    np.testing.assert_allclose(x.grad, 2.0)


def test_mixing_devices_is_a_clear_error():
    a = ig.Tensor(np.ones(2), device="cpu")
    b = ig.Tensor(np.ones(2), device="emu")
    with pytest.raises(ValueError, match="different devices"):
        a + b


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device"):
        ig.Tensor(np.ones(2)).to("tpu")


def test_gradcheck_catches_a_wrong_backward():
    class WrongSquare(ig.Function):
        def forward(self, xp, x):
            self.x = x
            return x * x

        def backward(self, xp, gy):
            return gy * self.x  # should be 2 * x

    x = ig.Tensor(np.random.default_rng(0).standard_normal(5), requires_grad=True)
    with pytest.raises(AssertionError, match="analytic"):
        ig.gradcheck(lambda x: WrongSquare().apply(x), [x])


def test_gradcheck_refuses_float32():
    x = ig.Tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="float64"):
        ig.gradcheck(lambda x: x * 2.0, [x])


def test_memory_does_not_grow_with_steps():
    import tracemalloc
    rng = np.random.default_rng(0)
    model = ig.nn.Sequential(ig.nn.Conv2d(3, 8, 3, padding=1), ig.nn.BatchNorm2d(8), ig.nn.ReLU(),
                             ig.nn.GlobalAvgPool2d(), ig.nn.Linear(8, 4))
    opt = ig.optim.SGD(model.parameters(), lr=0.01)
    x = ig.Tensor(rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    labels = np.array([0, 1, 2, 3])

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        opt.step()
    for _ in range(3):
        step()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(20):
        step()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 200_000, f"memory grew by {grown} bytes over 20 steps"


def test_arithmetic_errors_name_the_op_and_shapes():
    a = ig.Tensor(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\) do not broadcast"):
        a + ig.Tensor(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="mul: operand dtypes differ, float32"):
        a * ig.Tensor(np.ones(3, np.float64))
    assert (a * 2.0).dtype == np.float32  # Python numbers take the tensor's dtype


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast: b drops leading axes of a and sets some of a's axes to 1."""
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    keep = draw(st.integers(0, len(shape)))
    b = [1 if draw(st.booleans()) else n for n in shape[len(shape) - keep:]]
    return tuple(shape), tuple(b)


@given(broadcast_pair(), st.data())
def test_elementwise_and_reductions_gradcheck_on_drawn_shapes(shapes, data):
    sa, sb = shapes
    a = ig.Tensor(data.draw(arrays(sa)), requires_grad=True)
    b = ig.Tensor(data.draw(arrays(sb)) ** 2 + 0.5, requires_grad=True)  # positive: safe to divide / log
    assert ig.gradcheck(lambda a, b: a + b, [a, b])
    assert ig.gradcheck(lambda a, b: a - b * a, [a, b])
    assert ig.gradcheck(lambda a, b: a / b + (b ** 3).log(), [a, b])
    axis = data.draw(st.integers(0, len(sa) - 1))
    assert ig.gradcheck(lambda a: a.sum(axis=axis) + a.mean(), [a])
    assert ig.gradcheck(lambda a: a.mean(axis=axis, keepdims=True).exp(), [a])
    assert ig.gradcheck(lambda a: a.reshape(-1).transpose(), [a])


@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.data())
def test_matmul_and_transpose_gradcheck(n, k, m, data):
    a = ig.Tensor(data.draw(arrays((n, k))), requires_grad=True)
    b = ig.Tensor(data.draw(arrays((k, m))), requires_grad=True)
    assert ig.gradcheck(lambda a, b: (a @ b).T, [a, b])


def test_leaves_never_share_a_gradient_array():
    """add hands the same gradient to both inputs; scaling one leaf's .grad in place (gradient
    clipping) must not change the other's."""
    a = ig.Tensor(np.ones(3), requires_grad=True)
    c = ig.Tensor(np.ones(3), requires_grad=True)
    (a + c).sum().backward()
    assert a.grad is not c.grad
    a.grad *= 10
    np.testing.assert_array_equal(c.grad, [1.0, 1.0, 1.0])


def test_integer_constants_take_the_float_type():
    a = ig.Tensor(np.ones(3, np.float32))
    assert (a * np.array([1, 2, 3])).dtype == np.float32
    assert (a + np.arange(3)).dtype == np.float32
    with pytest.raises(ValueError, match="dtypes differ"):
        a + ig.Tensor(np.arange(3))


class _Tiered(ig.Function):
    """A toy tiered op that records which tier ran: y = 2x on every tier."""

    tiers = {"reference": ("forward_reference", "backward_reference"),
             "cpu": ("forward_cpu", "backward_cpu"),
             "gpu": ("forward_gpu", "backward_gpu")}

    def __init__(self, log):
        self.log = log

    def forward_reference(self, xp, x):
        self.log.append("forward_reference")
        return 2 * x

    def backward_reference(self, xp, gy):
        self.log.append("backward_reference")
        return 2 * gy

    def forward_cpu(self, xp, x):
        self.log.append("forward_cpu")
        return 2 * x

    def backward_cpu(self, xp, gy):
        self.log.append("backward_cpu")
        return 2 * gy

    def forward_gpu(self, xp, x):
        self.log.append(f"forward_gpu {xp.__name__}")
        return 2 * x

    def backward_gpu(self, xp, gy):
        self.log.append(f"backward_gpu {xp.__name__}")
        return 2 * gy


@pytest.mark.parametrize("device, reference, expected", [
    ("cpu", False, ["forward_cpu", "backward_cpu"]),
    ("cpu", True, ["forward_reference", "backward_reference"]),
    ("emu", False, ["forward_gpu numpy", "backward_gpu numpy"]),  # 'emu': GPU kernels, NumPy arrays
])
def test_function_apply_picks_one_tier_and_backward_stays_on_it(device, reference, expected):
    log = []
    x = ig.Tensor(np.ones(3), requires_grad=True, device=device)
    with ig.backend.use_reference(reference):
        y = _Tiered(log).apply(x)
    with ig.backend.use_reference(not reference):  # the switch flipped: backward keeps its tier
        y.backward(np.ones(3))
    assert log == expected
    np.testing.assert_array_equal(x.grad, [2, 2, 2])


def test_a_tier_table_naming_a_missing_method_fails_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"Half.tiers\['reference'\] names 'forward_reference', which Half "
                                        "does not define"):
        class Half(ig.Function):
            tiers = {"reference": ("forward_reference", "backward_reference"),
                     "cpu": ("forward_cpu", "backward_cpu"), "gpu": ("forward_cpu", "backward_cpu")}

            def forward_cpu(self, xp, x):
                return x

            def backward_cpu(self, xp, gy):
                return gy
    with pytest.raises(TypeError, match="must map each tier"):
        class NoGpu(ig.Function):
            tiers = {"reference": ("forward", "backward"), "cpu": ("forward", "backward")}


def test_a_plain_function_serves_every_tier_with_forward_and_backward():
    class Double(ig.Function):
        def forward(self, xp, x):
            return 2 * x

        def backward(self, xp, gy):
            return 2 * gy
    for device, reference in (("cpu", False), ("cpu", True), ("emu", False)):
        x = ig.Tensor(np.ones(2), requires_grad=True, device=device)
        with ig.backend.use_reference(reference):
            Double()(x).sum().backward()
        np.testing.assert_array_equal(x.grad, [2, 2])
    with pytest.raises(NotImplementedError, match="NoBackward defines no backward"):
        class NoBackward(ig.Function):
            def forward(self, xp, x):
                return x
        NoBackward()(ig.Tensor(np.ones(2), requires_grad=True)).sum().backward()
