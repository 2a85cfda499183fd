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


# ---- versions: a tensor changed after an op used it (issue 18) ---------------------------------
def _mul_graph():
    x = ig.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    w = ig.Tensor(np.array([4.0, 5.0, 6.0]), requires_grad=True)
    return x, w, (x * w).sum()


@pytest.mark.parametrize("change", [
    lambda w: setattr(w, "data", np.zeros(3)),          # w.data = other
    lambda w: setattr(w, "data", w.data + 1),            # w.data = w.data + 1
    lambda w: w.__setattr__("data", w.data.__iadd__(1)),  # what `w.data += 1` does
])
def test_backward_refuses_an_input_changed_after_the_forward_pass(change):
    x, w, y = _mul_graph()
    change(w)
    with pytest.raises(RuntimeError, match=r"backward through Mul: its input 1 \(shape \(3,\), a leaf\) was "
                                           r"changed after the forward pass used it \(version 0 -> 1"):
        y.backward()


def test_in_place_augmented_assignment_is_seen():
    x, w, y = _mul_graph()
    w.data += 1  # changes the very array Mul saved: the gradient of x would be 5, 6, 7
    with pytest.raises(RuntimeError, match="Mul"):
        y.backward()
    assert x.grad is None


def test_a_changed_op_output_names_the_op_that_made_it():
    x = ig.Tensor(np.array([-1.0, 2.0]), requires_grad=True)
    y = F.relu(x)
    y.data = y.data * 3
    with pytest.raises(RuntimeError, match=r"its input 0 \(shape \(2,\), made by ReLUFunction\)"):
        y.sum().backward()
    y = F.relu(x)
    y.data -= 1
    with pytest.raises(RuntimeError, match=r"backward through ReLUFunction: its output"):
        y.backward(np.ones(2))


def test_detach_shares_the_version_counter():
    x, w, y = _mul_graph()
    d = w.detach()
    d.data += 1
    assert w._version == d._version == 1
    with pytest.raises(RuntimeError, match="Mul"):
        y.backward()


def test_changes_after_backward_are_normal_training():
    """SGD writes param.data after backward: the next forward uses (and saves) the new version."""
    model = ig.nn.Linear(3, 2, rng=np.random.default_rng(0))
    opt = ig.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = ig.Tensor(np.ones((4, 3), np.float32))
    for _ in range(3):
        loss = (model(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.weight._version == 3


# ---- float16 (issue 18): refused, not computed wrong -------------------------------------------
def test_float16_is_refused_with_the_way_out():
    with pytest.raises(TypeError, match=r"float16 is not supported .*use float32"):
        ig.Tensor(np.full((2, 3, 4, 4), 300, np.float16))
    t = ig.Tensor(np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"Mul: Tensor: float16 is not supported"):
        t * np.ones(3, np.float16)
    with pytest.raises(TypeError, match=r"Tensor.data: float16 is not supported"):
        t.data = np.ones(3, np.float16)
    model = ig.nn.Conv2d(3, 4, 3)
    with pytest.raises(TypeError, match="float16 is not supported"):
        model.to(dtype=np.float16)


def test_float16_running_statistics_are_refused():
    x = ig.Tensor(np.ones((2, 3, 4, 4), np.float32))
    g, b = ig.Tensor(np.ones(3, np.float32)), ig.Tensor(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="running_mean is float16"):
        F.batch_norm(x, g, b, np.zeros(3, np.float16), np.ones(3, np.float32))


# ---- PyTorch habits (issue 19) ----------------------------------------------------------------
def test_clone_copies_and_keeps_the_gradient_flowing():
    x = ig.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = x.clone()
    assert repr(c).endswith("grad_fn=<Clone>)")
    assert not np.shares_memory(c.data, x.data)
    np.testing.assert_array_equal(c.numpy(), [1.0, 2.0])
    (c * c).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    with ig.no_grad():
        assert x.clone().creator is None


def test_requires_grad_in_place():
    w = ig.Tensor(np.ones(2))
    assert w.requires_grad_() is w and w.requires_grad
    (w * 3).sum().backward()
    np.testing.assert_array_equal(w.grad, [3.0, 3.0])
    assert not w.requires_grad_(False).requires_grad
    with pytest.raises(TypeError, match="floating point"):
        ig.Tensor(np.arange(3)).requires_grad_()
    y = ig.Tensor(np.ones(2), requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="made by Mul .*detach"):
        y.requires_grad_(False)


def test_backward_takes_pytorchs_gradient_keyword():
    for kwargs in ({"gradient": np.array([1.0, 10.0])}, {"grad": np.array([1.0, 10.0])}):
        x = ig.Tensor(np.array([1.0, 2.0]), requires_grad=True)
        (x * x).backward(**kwargs)
        np.testing.assert_array_equal(x.grad, [2.0, 40.0])
    x = ig.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(TypeError, match="not both"):
        (x * x).backward(gradient=np.ones(2), grad=np.ones(2))
    with pytest.raises(ValueError, match="gradient shape"):
        (x * x).backward(gradient=np.ones(3))


def test_repr_names_the_op_that_made_the_tensor():
    x = ig.Tensor(np.ones((1, 2, 3, 3), np.float32), requires_grad=True)
    W = ig.Tensor(np.ones((2, 2, 1, 1), np.float32))
    y = F.conv2d(x, W)
    assert repr(y).startswith("Tensor([[[[2., 2., 2.],")
    assert repr(y).endswith("dtype=float32, device='cpu', grad_fn=<Conv2dFunction>)")
    assert y.grad_fn is y.creator and not y.is_leaf and x.is_leaf
    big = F.relu(ig.Tensor(np.ones((64, 3, 32, 32), np.float32), requires_grad=True))
    assert repr(big) == "Tensor(shape=(64, 3, 32, 32), dtype=float32, device='cpu', grad_fn=<ReLUFunction>)"
    with ig.no_grad():
        assert "grad_fn" not in repr(F.conv2d(x, W))


def test_cuda_without_cupy_says_how_to_install_it(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    monkeypatch.setattr(ig.backend, "_cupy", None)
    with pytest.raises(RuntimeError, match=r'needs CuPy, which is not installed: pip install -e "\.\[cuda\]" '
                                           r'for CUDA 12, or pip install -e "\.\[cuda13\]" for CUDA 13'):
        ig.backend.cupy_module()
    with pytest.raises(RuntimeError, match=r"pip install -e"):
        ig.Tensor(np.ones(2), device="cuda")


def test_to_dtype_float_double_cpu_as_pytorch():
    """t.to(np.float64) / t.to(dtype=...) / .double() / .float() cast in the graph; .cpu() moves; .half() refused."""
    w = ig.Tensor(np.array([1.5, -2.0], np.float32), requires_grad=True)
    for make in (lambda: w.to(np.float64), lambda: w.to(dtype="float64"), lambda: w.double(),
                 lambda: w.to("cpu", np.float64)):
        w.grad = None
        d = make()
        assert d.dtype == np.float64 and d.grad_fn is not None
        (d * d).sum().backward()
        assert w.grad.dtype == np.float32
        np.testing.assert_array_equal(w.grad, 2 * w.data)
    assert w.float() is w and w.cpu() is w and w.to(np.float32) is w
    i = w.to(np.int64)  # an integer copy is a constant, as PyTorch's
    assert i.dtype == np.int64 and not i.requires_grad and i.tolist() == [1, -2]
    with pytest.raises(TypeError, match=r"\.half\(\): float16 is not supported.*use float32: \.float\(\)"):
        w.half()


def test_flatten_defaults_are_pytorchs():
    x = ig.Tensor(np.zeros((2, 3, 4, 5)))
    assert x.flatten().shape == (120,)  # Tensor.flatten: all axes, as torch.Tensor.flatten
    assert x.flatten(1).shape == (2, 60) and x.flatten(1, 2).shape == (2, 12, 5)
    assert x.flatten(0, -2).shape == (24, 5)
    assert F.flatten(x).shape == (2, 60)  # the functional keeps the batch axis (MXNet's Flatten)
    with pytest.raises(ValueError, match="start_dim 2 comes after end_dim 1"):
        x.flatten(2, 1)


@pytest.mark.parametrize("kwargs, name", [({"retain_graph": True}, "retain_graph=True"),
                                          ({"create_graph": True}, "create_graph=True")])
def test_backward_refuses_retain_and_create_graph_naming_the_way(kwargs, name):
    w = ig.Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(NotImplementedError, match=rf"backward\({name}\): igc_np frees the graph.*run the "
                                                  "forward pass again"):
        (w * 2).sum().backward(**kwargs)
    (w * 2).sum().backward(retain_graph=False)  # PyTorch's defaults are accepted
    np.testing.assert_array_equal(w.grad, [2, 2, 2])


def test_backward_gradient_takes_the_tensors_dtype():
    """A float64 seed (a Tensor or an array) for a float32 graph: float32 gradients, as PyTorch."""
    w = ig.Tensor(np.ones(3, np.float32), requires_grad=True)
    for seed in (ig.Tensor(np.full(3, 0.5)), np.full(3, 0.5), [0.5, 0.5, 0.5]):
        w.grad = None
        (w * 2).backward(gradient=seed)
        assert w.grad.dtype == np.float32
        np.testing.assert_array_equal(w.grad, [1, 1, 1])
    with pytest.raises(ValueError, match=r"gradient shape \(2,\) != tensor shape \(3,\)"):
        (w * 2).backward(gradient=ig.Tensor(np.ones(2, np.float32)))
