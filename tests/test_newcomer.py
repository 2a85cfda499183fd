"""What a PyTorch or NumPy user tries in the first ten minutes (issue 11): indexing, reductions with
dim=/keepdim=, max/argmax, comparisons, conversions, softmax, dropout, mse, manual_seed, ModuleList.

Gradients are checked with ig.gradcheck in float64 on hypothesis-drawn shapes and keys.
"""
import copy
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import special

import igc_np as ig
from igc_np import functional as F
from igc_np import nn

import fake_cupy
from strategies import arrays

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


def leaf(a):
    return ig.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


# ---- indexing and slicing -----------------------------------------------------------------------
@st.composite
def index_cases(draw):
    """(shape, key): every kind of NumPy key, including integer arrays with repeats and masks."""
    shape = draw(shapes)
    n = shape[0]
    kind = draw(st.sampled_from(["int", "slice", "ellipsis_none", "int_array", "bool_mask", "mixed"]))
    if kind == "int":
        key = draw(st.integers(-n, n - 1))
    elif kind == "slice":
        key = (slice(draw(st.integers(0, n)), draw(st.integers(0, n)), draw(st.sampled_from([1, 2, -1]))),)
        key += (slice(None),) * (len(shape) - 1)
    elif kind == "ellipsis_none":
        key = (Ellipsis, None)
    elif kind == "int_array":  # repeats allowed: their gradients must accumulate
        key = np.array(draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=6)))
    elif kind == "bool_mask":
        key = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    else:  # an index array on the last axis after a slice on the first
        m = shape[-1]
        key = (slice(None),) * (len(shape) - 1) + (np.array(draw(st.lists(st.integers(0, m - 1),
                                                                           min_size=1, max_size=4))),)
    return shape, key


@given(index_cases(), st.data())
def test_indexing_gradcheck_on_drawn_keys(case, data):
    shape, key = case
    x = ig.Tensor(data.draw(arrays(shape)), requires_grad=True)
    np.testing.assert_array_equal(x[key].data, x.data[key])
    assert ig.gradcheck(lambda x: x[key] * 1.0, [x])


def test_repeated_indices_accumulate_and_common_keys_work():
    x = leaf(np.arange(12.0).reshape(3, 4))
    (x[[0, 0, 2]].sum() + x[:, 1:3].sum() * 10.0).backward()
    np.testing.assert_array_equal(x.grad, [[2, 12, 12, 2], [0, 10, 10, 0], [1, 11, 11, 1]])
    assert x[0].shape == (4,) and x[..., None].shape == (3, 4, 1) and x[None].shape == (1, 3, 4)
    assert x[x.data > 5].shape == (6,)
    idx = ig.Tensor(np.array([2, 1]))  # an index Tensor works as its array
    np.testing.assert_array_equal(x[idx].data, x.data[[2, 1]])
    assert [row.shape for row in x] == [(4,)] * 3  # iteration yields rows in the graph
    assert x[[]].shape == (0, 4) and x[[0, 2], [1, 1]].shape == (2,)  # lists index as arrays


def test_scatter_add_without_add_at_counts_repeats():
    """The fallback for an array module without add.at (older CuPy) sums repeated picks too."""
    from types import SimpleNamespace
    from igc_np.ops.indexing import scatter_add
    old_cupy = SimpleNamespace(add=np.add.__call__, arange=np.arange, bincount=np.bincount, float64=np.float64)
    key = (np.array([0, 0, 2, 0]), slice(1, 3))
    gy = np.arange(8.0, dtype=np.float32).reshape(4, 2)
    want, got = np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32)
    np.add.at(want, key, gy)
    scatter_add(old_cupy, got, key, gy)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_indexing_errors_name_the_shape():
    x = ig.Tensor(np.zeros((2, 3)))
    with pytest.raises(IndexError, match=r"Tensor\[5\] on shape \(2, 3\)"):
        x[5]
    with pytest.raises(TypeError, match="does not support item assignment.*no_grad"):
        x[0] = 1.0


# ---- reductions: axis/dim, keepdims/keepdim ----------------------------------------------------
@given(shapes, st.data())
def test_sum_and_mean_take_dim_and_keepdim(shape, data):
    x = ig.Tensor(data.draw(arrays(shape)), requires_grad=True)
    d = data.draw(st.integers(-len(shape), len(shape) - 1))
    np.testing.assert_allclose(x.sum(dim=d).data, x.data.sum(axis=d))
    np.testing.assert_allclose(x.mean(dim=d, keepdim=True).data, x.data.mean(axis=d, keepdims=True))
    assert x.sum(axis=d, keepdims=True).shape == x.sum(dim=d, keepdim=True).shape
    assert ig.gradcheck(lambda x: x.sum(dim=d, keepdim=True) * x.mean(dim=d, keepdim=True), [x])


def test_axis_and_dim_together_is_an_error():
    x = ig.Tensor(np.ones((2, 3)))
    for op in ("sum", "mean", "max", "min", "argmax"):
        with pytest.raises(TypeError, match=f"{op}: give axis= .* or dim= .*, not both"):
            getattr(x, op)(axis=0, dim=1)


# ---- max / min / argmax ---------------------------------------------------------------------------
@given(shapes, st.data())
def test_max_and_min_gradcheck(shape, data):
    """Drawn normals have no ties: the gradient goes to the arg-max, exactly once."""
    x = ig.Tensor(data.draw(arrays(shape)), requires_grad=True)
    d = data.draw(st.integers(0, len(shape) - 1))
    np.testing.assert_array_equal(x.max(axis=d).data, x.data.max(axis=d))
    np.testing.assert_array_equal(x.min(dim=d, keepdim=True).values.data, x.data.min(axis=d, keepdims=True))
    assert ig.gradcheck(lambda x: x.max(axis=d), [x])
    assert ig.gradcheck(lambda x: x.min(dim=d).values * 2.0 + x.max(), [x])


def test_max_ties_split_the_gradient_equally():
    x = leaf([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    x.grad = None
    x.max().backward()  # over everything: the two 3's tie
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [0, 0, 0]])


def test_max_with_dim_is_pytorchs_values_and_indices():
    x = ig.Tensor(np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]]), requires_grad=True)
    values, indices = x.max(dim=1)
    assert isinstance(values, ig.Tensor) and values.requires_grad
    np.testing.assert_array_equal(values.data, [5.0, 7.0])
    np.testing.assert_array_equal(indices, [1, 0])  # argmax: the first at ties
    assert x.max(dim=1).indices is not None and x.min(dim=0).values.shape == (3,)
    assert isinstance(x.max(axis=1), ig.Tensor)  # NumPy's form: values only
    assert x.max(dim=1, keepdim=True).indices.shape == (2, 1)
    with pytest.raises(TypeError, match="dim must be one int"):
        x.max(dim=(0, 1))


def test_argmax_and_argmin_return_integer_arrays():
    x = ig.Tensor(np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]]), requires_grad=True)
    assert isinstance(x.argmax(1), np.ndarray)
    np.testing.assert_array_equal(x.argmax(dim=1), [1, 0])
    np.testing.assert_array_equal(x.argmin(axis=0, keepdims=True), [[0, 1, 0]])
    assert int(x.argmax()) == 3 and x.argmax(keepdim=True).shape == (1, 1)
    with pytest.raises(ValueError, match=r"max: empty tensor of shape \(0,\)"):
        ig.Tensor(np.zeros(0)).max()


# ---- comparisons and conversions ------------------------------------------------------------------
def test_comparisons_return_arrays_without_a_graph():
    x = ig.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = ig.Tensor(np.array([3.0, 2.0, 1.0]))
    for got, want in ((x < 2, [True, False, False]), (x <= 2, [True, True, False]), (x > y, [False, False, True]),
                      (x >= y, [False, True, True]), (x == y, [False, True, False]), (x != 2.0, [True, False, True]),
                      (2 < x, [False, False, True]), (np.array([0.0, 2.0, 9.0]) == x, [False, True, False])):
        assert type(got) is np.ndarray and got.dtype == bool
        np.testing.assert_array_equal(got, want)
    assert (x.argmax(0) == np.array(2)) and float((x.data > 1).mean()) == pytest.approx(2 / 3)
    assert len({x, y}) == 2  # still hashable (by identity), as graph code needs


def test_python_conversions():
    t = ig.Tensor(np.array([[2.5]]))
    assert float(t) == 2.5 and int(t) == 2 and bool(t) and t.item() == 2.5
    v = ig.Tensor(np.arange(6).reshape(2, 3))
    assert v.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(TypeError, match=r"only a one-element Tensor converts to a Python float, got shape \(2, 3\)"):
        float(v)
    with pytest.raises(TypeError, match="int"):
        int(v)
    with pytest.raises(ValueError, match=r"truth value of a Tensor of shape \(2, 3\) is ambiguous"):
        bool(v)
    with pytest.raises(TypeError, match="len.. of a 0-d Tensor"):
        len(ig.Tensor(np.float64(1.0)))


def test_np_asarray_gives_the_data_with_numpy2_copy():
    data = np.arange(6.0).reshape(2, 3)
    t = ig.Tensor(data, requires_grad=True)
    a = np.asarray(t)
    assert a is t.data and a.dtype == np.float64  # no copy, not a 0-d object array
    b = np.array(t)  # np.array copies by default
    assert b is not t.data and np.shares_memory(b, t.data) is False
    np.testing.assert_array_equal(b, data)
    assert np.asarray(t, dtype=np.float32).dtype == np.float32
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert np.asarray(t, copy=False) is t.data
        assert not np.shares_memory(np.asarray(t, copy=True), t.data)
        with pytest.raises(ValueError, match="a copy is needed"):
            np.asarray(t, dtype=np.float32, copy=False)
    np.testing.assert_allclose(t, data)  # numpy's testing helpers accept Tensors


def test_numpy_functions_refuse_tensors_and_operators_defer():
    x = ig.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(TypeError, match="Tensor"):
        np.exp(x)  # would silently drop the graph
    y = np.array([3.0, 4.0]) * x + np.float64(1.0) * x  # ndarray (op) Tensor -> Tensor, in the graph
    assert isinstance(y, ig.Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [4.0, 5.0])


def test_repr_shows_small_values_and_summarises_big_tensors():
    t = ig.Tensor(np.arange(4.0).reshape(2, 2), requires_grad=True)
    assert repr(t) == ("Tensor([[0., 1.],\n        [2., 3.]], dtype=float64, device='cpu', "
                       "requires_grad=True)")
    assert repr(ig.Tensor(np.zeros((40, 40), np.float32))) == "Tensor(shape=(40, 40), dtype=float32, device='cpu')"


def test_size_is_numpys_count_and_callable_as_pytorchs():
    t = ig.Tensor(np.zeros((3, 4)))
    assert t.size == 12 and isinstance(t.size, int) and t.size * 2 == 24  # NumPy
    assert t.size() == (3, 4) and t.size(1) == 4 and t.size(-2) == 3  # PyTorch
    assert t.numel() == 12 and t.dim() == 2 and t.shape == (3, 4)
    assert pickle.loads(pickle.dumps(t.size)) == 12 and copy.deepcopy(t.size) == 12


def test_view_reshape_transpose_squeeze():
    x = leaf(np.arange(6.0))
    assert x.view(2, 3).shape == x.view((2, 3)).shape == x.reshape([3, 2]).T.shape == (2, 3)
    assert x.view(-1, 1).unsqueeze(0).shape == (1, 6, 1) and x.view(1, 6, 1).squeeze().shape == (6,)
    assert x.unsqueeze(-1).shape == (6, 1) and x.view(1, 6).squeeze(0).shape == (6,)
    assert ig.gradcheck(lambda x: x.view(2, 3).T.unsqueeze(1).squeeze(1) * 2.0, [x])
    with pytest.raises(ValueError, match=r"squeeze: dimension 1 of shape \(1, 6\) has size 6"):
        x.view(1, 6).squeeze(1)


# ---- softmax, log_softmax, mse_loss ---------------------------------------------------------------
@given(shapes, st.data())
def test_softmax_and_log_softmax_match_scipy_and_gradcheck(shape, data):
    x = ig.Tensor(data.draw(arrays(shape, scale=3.0)), requires_grad=True)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    np.testing.assert_allclose(F.softmax(x, axis).data, special.softmax(x.data, axis=axis), atol=1e-12)
    np.testing.assert_allclose(F.log_softmax(x, dim=axis).data, special.log_softmax(x.data, axis=axis), atol=1e-12)
    assert ig.gradcheck(lambda x: F.softmax(x, axis), [x])
    assert ig.gradcheck(lambda x: F.log_softmax(x, axis), [x])


def test_softmax_is_stable_and_validates_its_axis():
    z = ig.Tensor(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(F.log_softmax(z).data).all() and F.softmax(z).data[0, 0] == 1.0
    with pytest.raises(ValueError, match=r"softmax: axis 2 out of range for a tensor of shape \(1, 3\)"):
        F.softmax(z, 2)
    with pytest.raises(TypeError, match="not both"):
        F.log_softmax(z, 0, dim=1)
    # cross_entropy is the mean negative log_softmax of the labels
    rng = np.random.default_rng(0)
    logits, labels = ig.Tensor(rng.standard_normal((5, 4))), rng.integers(0, 4, 5)
    nll = -F.log_softmax(logits, dim=1).data[np.arange(5), labels].mean()
    assert F.cross_entropy(logits, labels).item() == pytest.approx(nll)
    assert nn.CrossEntropyLoss()(logits, labels).item() == pytest.approx(nll)


@given(shapes, st.data())
def test_mse_loss_value_and_gradcheck(shape, data):
    x = ig.Tensor(data.draw(arrays(shape)), requires_grad=True)
    t = ig.Tensor(data.draw(arrays(shape)), requires_grad=True)
    assert F.mse_loss(x, t).item() == pytest.approx(((x.data - t.data) ** 2).mean())
    assert F.mse_loss(x, t, "sum").item() == pytest.approx(((x.data - t.data) ** 2).sum())
    np.testing.assert_allclose(nn.MSELoss("none")(x, t.data).data, (x.data - t.data) ** 2)
    assert ig.gradcheck(lambda x, t: F.mse_loss(x, t), [x, t])


def test_mse_loss_refuses_broadcasting_shapes():
    x = ig.Tensor(np.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"mse_loss: input shape \(4, 1\) != target shape \(4,\)"):
        F.mse_loss(x, np.zeros(4))
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.mse_loss(x, x, reduction="avg")
    assert F.mse_loss(x, 1.0).item() == 1.0  # a number is a constant target


# ---- dropout ------------------------------------------------------------------------------------------
@given(shapes, st.floats(0.0, 0.9), st.data())
def test_dropout_gradcheck_in_training_and_eval(shape, p, data):
    x = ig.Tensor(data.draw(arrays(shape)), requires_grad=True)
    assert F.dropout(x, p, training=False) is x  # off in evaluation
    assert ig.gradcheck(lambda x: F.dropout(x, p, training=False) * 1.0, [x])
    # a fixed mask: a fresh generator from one seed at every call
    assert ig.gradcheck(lambda x: F.dropout(x, p, rng=np.random.default_rng(7)), [x])


def test_dropout_is_inverted_and_keeps_the_mean():
    x = ig.Tensor(np.ones(200_000, np.float32), requires_grad=True)
    y = F.dropout(x, 0.3, rng=np.random.default_rng(0))
    assert y.dtype == np.float32
    assert abs((y.data == 0).mean() - 0.3) < 0.01
    np.testing.assert_allclose(np.unique(y.data), [0.0, 1 / 0.7], rtol=1e-6)
    assert abs(y.data.mean() - 1.0) < 0.01
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, y.data)  # gradient: the same scaled mask
    assert (F.dropout(x, 1.0).data == 0).all() and F.dropout(x, 0.0) is x
    with pytest.raises(ValueError, match=r"dropout: p .* in \[0, 1\], got 1.5"):
        F.dropout(x, 1.5)


def test_dropout_module_follows_train_eval_and_the_global_seed():
    x = ig.Tensor(np.ones((4, 50)))
    drop = nn.Dropout(0.5)
    ig.manual_seed(11)
    a = drop(x).data
    ig.manual_seed(11)
    np.testing.assert_array_equal(drop(x).data, a)
    assert not np.array_equal(drop(x).data, a)  # the generator moved on
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError, match="Dropout: p"):
        nn.Dropout(-0.1)


def test_manual_seed_covers_layer_initialisation():
    def build():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.IGCConv(4, 4, L=2, S=2), nn.Linear(4, 2))
    ig.manual_seed(5)
    a = build().state_dict()
    ig.manual_seed(5)
    b = build().state_dict()
    ig.manual_seed(6)
    c = build().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.weight"], c["0.weight"])
    g = ig.manual_seed(3)
    np.testing.assert_array_equal(g.standard_normal(4), np.random.default_rng(3).standard_normal(4))
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        ig.manual_seed(-1)


# ---- registration of sub-modules -------------------------------------------------------------------
class Blocks(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = blocks

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return x


def test_plain_list_of_modules_is_refused_pointing_at_modulelist():
    with pytest.raises(TypeError, match=r"Blocks.blocks: a plain list of Conv2d.*nn.ModuleList\(\[...\]\)"):
        Blocks([nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)])
    with pytest.raises(TypeError, match=r"plain dict.*nn.ModuleDict"):
        Blocks({"a": nn.ReLU()})
    m = nn.Module()
    with pytest.raises(TypeError, match="ParameterList"):
        m.weights = [nn.Parameter(np.ones(2))]
    m.sizes = [1, 2, 3]  # plain data is fine
    m.empty = []


def test_modulelist_registers_every_parameter():
    net = Blocks(nn.ModuleList([nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)]))
    net.blocks.append(nn.Conv2d(4, 4, 1))
    expected = 4 * 3 * 9 + 4 * 4 * 9 + 2 * 4 + 4 * 4
    assert net.num_parameters() == expected
    assert [n for n, _ in net.named_parameters()][-1] == "blocks.2.weight"
    assert "blocks.1.running_mean" in net.state_dict()
    assert len(net.blocks) == 3 and isinstance(net.blocks[1], nn.BatchNorm2d) and len(net.blocks[:2]) == 2
    net.eval()
    assert not net.blocks[1].training  # train/eval reaches the list's modules
    x = ig.Tensor(np.ones((1, 3, 5, 5), np.float32))
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(TypeError, match="ModuleList.append: expected a Module, got int"):
        net.blocks.append(3)


def test_moduledict_and_parameterlist():
    heads = nn.ModuleDict({"a": nn.Linear(3, 2), "b": nn.Linear(3, 1)})
    assert list(heads) == ["a", "b"] and "a" in heads and heads["b"].out_features == 1
    assert [n for n, _ in heads.named_parameters()] == ["a.weight", "a.bias", "b.weight", "b.bias"]
    ps = nn.ParameterList([nn.Parameter(np.ones(2)), nn.Parameter(np.zeros(3))])
    assert len(ps) == 2 and [n for n, _ in ps.named_parameters()] == ["0", "1"] and ps[1].shape == (3,)
    with pytest.raises(TypeError, match="expected a str key and a Module"):
        heads["c"] = 5
    with pytest.raises(KeyError, match="would hide the attribute 'eval'"):
        heads["eval"] = nn.ReLU()


def test_traversal_children_modules_apply_and_reassignment():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), nn.Identity()), nn.Linear(4, 2))
    assert [k for k, _ in net.named_children()] == ["0", "1", "2"]
    assert len(list(net.children())) == 3 and len(list(net.modules())) == 6
    seen = []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen.index("ReLU") < seen.index("Sequential") and seen[-1] == "Sequential"  # children first
    net.apply(lambda m: isinstance(m, nn.Linear) and m.bias.data.fill(3.0))
    assert (net[2].bias.data == 3.0).all()
    x = ig.Tensor(np.ones((2, 5)))
    assert nn.Identity()(x) is x
    lin = nn.Linear(3, 2)
    lin.bias = None  # reassigning drops the registration
    assert [n for n, _ in lin.named_parameters()] == ["weight"]


# ---- the seed's conventions, made visible ------------------------------------------------------
def test_pytorch_style_batchnorm_momentum_warns():
    with pytest.warns(UserWarning, match=r"BatchNorm2d 'g0_bn'\(momentum=0.1\): momentum here is MXNet's.*"
                                         r"PyTorch's momentum=0.1 is momentum=0.9 here"):
        nn.BatchNorm2d(8, momentum=0.1, name="g0_bn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.BatchNorm2d(8)  # the reference's 0.9 is silent
        nn.BatchNorm2d(8, momentum=0.99)
    assert "OLD" in nn.BatchNorm2d.__doc__ and "No bias by default" in nn.Conv2d.__doc__


def test_batchnorm1d_normalises_over_the_batch():
    rng = np.random.default_rng(0)
    bn = nn.BatchNorm1d(3)
    x = ig.Tensor(rng.standard_normal((16, 3)) * 4 + 2, requires_grad=True)
    bn.to(dtype=np.float64)
    y = bn(x).data
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(y, (x.data - x.data.mean(0)) / np.sqrt(x.data.var(0) + bn.eps))
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.data.mean(0))  # MXNet momentum 0.9
    assert ig.gradcheck(lambda x: bn(x), [x])
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): expected input \(N, 3\), got shape \(16, 4\)"):
        bn(ig.Tensor(np.ones((16, 4))))


# ---- the same habits on device 'cuda' (the CuPy stand-in of tests/fake_cupy.py) -----------------
def test_habits_on_the_cuda_path(monkeypatch):
    fake_cupy.install(monkeypatch)
    rng = np.random.default_rng(0)
    host = rng.standard_normal((3, 4))
    x = ig.Tensor(host, requires_grad=True, device="cuda")
    assert ig.backend.device_of(x.data) == "cuda"
    a = np.asarray(x)  # copied from the device
    assert isinstance(a, np.ndarray) and np.array_equal(a, host)
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        with pytest.raises(ValueError, match="a copy is needed .*device 'cuda'"):
            np.asarray(x, copy=False)
    assert float(x[1, 2]) == host[1, 2] and x.tolist() == host.tolist()
    loss = (F.softmax(x[:, 1:], dim=1) * x[0, 1:]).sum() + F.mse_loss(x, 0.0) + x.max(axis=1).sum()
    loss = loss + F.dropout(x, 0.5, rng=np.random.default_rng(1)).sum()
    loss.backward()
    assert ig.backend.device_of(x.grad) == "cuda"
    ref = ig.Tensor(host, requires_grad=True)
    ((F.softmax(ref[:, 1:], dim=1) * ref[0, 1:]).sum() + F.mse_loss(ref, 0.0) + ref.max(axis=1).sum()
     + F.dropout(ref, 0.5, rng=np.random.default_rng(1)).sum()).backward()
    np.testing.assert_allclose(x.grad.get(), ref.grad, atol=1e-12)
    assert ig.backend.device_of(x > 0) == "cuda"  # comparisons stay on the device
