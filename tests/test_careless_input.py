"""What a user coming from PyTorch, DeZero or MXNet tries first, and what a careless one gets wrong.

Each test states one habit or one slip and the behaviour igc_np must show for it: the habit works,
or the slip is refused with an error that names the op, layer, argument, shape or file, before
anything is changed or written.
"""
import os

import numpy as np
import pytest

import igc_np as ig
from igc_np import mxnet_io, nn
from igc_np.serialization import SerializationError


def f32(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- the package -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mxnet_io", "imagenet", "distributed", "training", "serialization",
                                  "nets", "data", "igc"])
def test_submodules_reachable_as_attributes(name):
    """``ig.mxnet_io.load_params(...)`` after a bare ``import igc_np as ig``."""
    import importlib
    assert getattr(ig, name) is importlib.import_module(f"igc_np.{name}")


def test_unknown_attribute_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'mxnet'"):
        ig.mxnet  # noqa: B018


# ---- Tensor ------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", ["abc", None, np.array([1, "a"], dtype=object), [1j, 2j]])
def test_tensor_refuses_non_numbers(data):
    with pytest.raises(TypeError, match="Tensor: data must be numbers"):
        ig.Tensor(data)


@pytest.mark.parametrize("data", [[1, 2], np.array([True, False])])
def test_requires_grad_needs_floats(data):
    with pytest.raises(TypeError, match=r"requires_grad=True needs floating point.*np.asarray"):
        ig.Tensor(data, requires_grad=True)
    assert ig.Tensor(data).dtype.kind in "bi"  # without a gradient an int Tensor is fine (labels)


def test_item_of_a_non_scalar_names_the_shape():
    with pytest.raises(ValueError, match=r"item\(\): only a one-element Tensor.*shape \(2, 3\)"):
        ig.Tensor(f32(2, 3)).item()
    assert ig.Tensor(np.float32(2.5)).item() == 2.5


def test_transpose_permute_and_swapaxes():
    x = ig.Tensor(f32(2, 3, 4, 5), requires_grad=True)
    assert x.permute(0, 2, 3, 1).shape == (2, 4, 5, 3)            # PyTorch's permute
    assert x.transpose((0, 2, 1, 3)).shape == (2, 4, 3, 5)        # NumPy's transpose
    y = x.swapaxes(1, -1)                                          # PyTorch's transpose(1, -1)
    assert y.shape == (2, 5, 4, 3)
    np.testing.assert_array_equal(y.numpy(), np.swapaxes(x.numpy(), 1, -1))
    (y * ig.Tensor(f32(2, 5, 4, 3, seed=1))).sum().backward()
    np.testing.assert_array_equal(x.grad, np.swapaxes(f32(2, 5, 4, 3, seed=1), 1, -1))
    with pytest.raises(ValueError, match=r"transpose: axes \(1, 2\) are not a permutation.*"
                                         r"x.swapaxes\(1, 2\)"):
        x.transpose(1, 2)
    with pytest.raises(ValueError, match=r"axes \(0, 0, 1, 2\) are not a permutation"):
        x.transpose(0, 0, 1, 2)
    with pytest.raises(ValueError, match=r"swapaxes: axes \(1, 7\).*shape \(2, 3, 4, 5\)"):
        x.swapaxes(1, 7)


def test_gradcheck_takes_one_tensor_and_refuses_nothing_to_check():
    x = ig.Tensor(np.random.default_rng(0).standard_normal(3), requires_grad=True)
    assert ig.gradcheck(lambda a: (a * a).sum(), x)
    # a check with no gradient to compare used to pass whatever backward did
    with pytest.raises(ValueError, match="no input is a Tensor with requires_grad=True"):
        ig.gradcheck(lambda a: (a * a).sum(), [np.ones(3)])
    with pytest.raises(TypeError, match="gradcheck: inputs must be a Tensor or a tuple/list"):
        ig.gradcheck(lambda a: a, np.ones(3))


def test_gradcheck_still_catches_a_wrong_backward():
    class Wrong(ig.Function):
        def forward(self, xp, a):
            return a * a

        def backward(self, xp, gy):
            return gy  # should be 2 a gy

    x = ig.Tensor(np.random.default_rng(0).standard_normal(4) + 3, requires_grad=True)
    with pytest.raises(AssertionError, match="analytic directional derivative"):
        ig.gradcheck(lambda a: Wrong().apply(a), x)


# ---- layers: errors name the layer -------------------------------------------------------------
def test_forward_error_names_the_innermost_named_layer():
    net = ig.nets.get_network("resnet_igc", 8, primary_partition=4, secondary_partition=4)
    with pytest.raises(ValueError, match=r"^in layer Conv2d 'g0_conv': conv2d: weight shape \(16, 3, 3, 3\)"):
        net(ig.Tensor(f32(2, 1, 8, 8)))
    igc = nn.IGCConv(16, 16, L=4, S=4, name="g1_b1")
    with pytest.raises(ValueError, match=r"in layer Conv2d 'g1_b1_conv1': conv2d"):
        igc(ig.Tensor(f32(2, 8, 4, 4)))
    with pytest.raises(ValueError, match=r"in layer BatchNorm2d 'bn': batch_norm: gamma shape \(4,\)"):
        nn.BatchNorm2d(4, name="bn")(ig.Tensor(f32(2, 8, 4, 4)))


def test_forward_error_names_an_unnamed_layer_by_its_repr():
    with pytest.raises(ValueError, match=r"^in layer Linear\(in_features=5, out_features=3, bias=True\): "
                                         r"linear: weight shape"):
        nn.Sequential(nn.Flatten(), nn.Linear(5, 3))(ig.Tensor(f32(2, 4)))
    try:
        nn.Linear(5, 3)(ig.Tensor(f32(2, 4)))
    except ValueError as e:
        assert e.layer == "Linear(in_features=5, out_features=3, bias=True)" and str(e).count("in layer") == 1


def test_sequential_refuses_what_it_would_skip():
    with pytest.raises(TypeError, match=r"Sequential: layer 1 must be a Module, got int 3"):
        nn.Sequential(nn.ReLU(), 3)  # used to be stored as a plain attribute and never run
    with pytest.raises(TypeError, match=r"Sequential\(\*layers\), not one list of 2 layers"):
        nn.Sequential([nn.ReLU(), nn.ReLU()])


@pytest.mark.parametrize("make", [lambda: nn.Sequential(nn.ReLU(), nn.Identity()),
                                  lambda: nn.ModuleList([nn.ReLU(), nn.Identity()]),
                                  lambda: nn.ParameterList([nn.Parameter(f32(2)), nn.Parameter(f32(3))])])
def test_container_index_errors_name_the_container(make):
    c = make()
    assert c[-1] is list(c)[-1]
    with pytest.raises(IndexError, match=rf"{type(c).__name__}\[5\]: index out of range for 2 items"):
        c[5]
    with pytest.raises(TypeError, match=r"an index must be an int or a slice"):
        c["a"]


def test_module_dict_missing_key_lists_the_keys():
    with pytest.raises(KeyError, match=r"ModuleDict\['b'\]: no such key; keys: \['a'\]"):
        nn.ModuleDict({"a": nn.ReLU()})["b"]


def test_module_to_refuses_a_dtype_as_device_and_integer_dtypes():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"that is a dtype, not a device; write .to\(dtype='float64'\)"):
        lin.to("float64")
    with pytest.raises(ValueError, match=r"parameters must be floating point"):
        lin.to(dtype=np.int32)
    assert lin.weight.dtype == np.float32  # nothing changed
    assert lin.to(dtype="float64").weight.dtype == np.float64


def test_load_state_dict_refuses_a_path_and_non_arrays(tmp_path):
    m = nn.Sequential(nn.Conv2d(3, 4, 3, name="c"))
    ig.save(m.state_dict(), tmp_path / "m.npz")
    before = m.state_dict()["c_weight"].copy()
    with pytest.raises(TypeError, match=r"got str; load the file first: model.load_state_dict\(ig.load"):
        m.load_state_dict(str(tmp_path / "m.npz"))
    with pytest.raises(TypeError, match=r"c_weight: expected a numeric array, got list"):
        m.load_state_dict({"c_weight": [[1.0]]})
    np.testing.assert_array_equal(m.state_dict()["c_weight"], before)
    m.load_state_dict(ig.load(tmp_path / "m.npz"))


# ---- files ---------------------------------------------------------------------------------------
def test_save_into_a_missing_folder_or_onto_a_folder(tmp_path):
    state = nn.Linear(2, 3, name="fc").state_dict()
    with pytest.raises(SerializationError, match=r"the folder .*nodir does not exist"):
        ig.save(state, tmp_path / "nodir" / "m.npz")
    with pytest.raises(SerializationError, match=r"is a folder; give a file name"):
        ig.save(state, tmp_path)
    assert os.listdir(tmp_path) == []  # no temporary file left behind


def test_mxnet_params_argument_order_and_folders(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, name="g0_conv"))
    with pytest.raises(TypeError, match=r"save_params\(model, path\): model must be an igc_np Module, "
                                        r"got str \(the arguments are swapped\?\)"):
        mxnet_io.save_params(str(tmp_path / "a.params"), net)
    with pytest.raises(TypeError, match=r"load_params\(model, path\).*swapped"):
        mxnet_io.load_params(str(tmp_path / "a.params"), net)
    with pytest.raises(SerializationError, match=r"save_params: cannot write .*nodir does not exist"):
        mxnet_io.save_params(net, tmp_path / "nodir" / "a-0001.params")
    mxnet_io.save_params(net, tmp_path / "a-0001.params")
    assert sorted(os.listdir(tmp_path)) == ["a-0001.params"]
    from igc_np.serialization import _UMASK  # a saved model is 0666 - umask, as open() makes it
    assert (tmp_path / "a-0001.params").stat().st_mode & 0o777 == 0o666 & ~_UMASK
    other = nn.Sequential(nn.Conv2d(3, 4, 3, name="g0_conv"))
    mxnet_io.load_params(other, tmp_path / "a-0001.params")
    np.testing.assert_array_equal(other[0].weight.numpy(), net[0].weight.numpy())


def test_recordio_refuses_mxnet_flag_and_folders(tmp_path):
    rec = tmp_path / "a.rec"
    rec.write_bytes(b"")
    with pytest.raises(ValueError, match=r"second argument is the path of the .idx, not MXNet's 'r'/'w'"):
        mxnet_io.RecordIO(rec, "r")
    with pytest.raises(OSError, match=r"is a folder, not a file"):
        mxnet_io.RecordIO(tmp_path)
    assert len(mxnet_io.RecordIO(rec)) == 0


# ---- examples/evaluate.py ------------------------------------------------------------------------
def _evaluator():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("igc_evaluate_user", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_weights_file_checked_before_the_data(tmp_path, capsys):
    ev = _evaluator()
    # no ImageNet under tmp_path either: the missing weights must be what is reported (exit 1)
    assert ev.main(["--model", "igc_l4m32", "--weights", str(tmp_path / "nope.params"),
                    "--data-dir", str(tmp_path)]) == 1
    assert f"--weights {tmp_path / 'nope.params'}: no such file" in capsys.readouterr().err
    assert ev.main(["--model", "igc_l4m32", "--weights", str(tmp_path)]) == 1
    assert "is a folder, not a file" in capsys.readouterr().err


def test_evaluate_params_given_as_checkpoint_says_what_to_use(tmp_path, capsys):
    ev = _evaluator()
    params = tmp_path / "seed-0001.params"
    mxnet_io.save_params(nn.Sequential(nn.Conv2d(3, 4, 3, name="g0_conv")), params)
    assert ev.main(["--checkpoint", str(params)]) == 1
    err = capsys.readouterr().err
    assert "an MXNet .params file; evaluate it with --model NAME --weights FILE" in err
    assert "igc_l4m32" in err and "Traceback" not in err


def test_evaluate_device_error_does_not_print_gpus_none(tmp_path, capsys, monkeypatch):
    ev = _evaluator()
    monkeypatch.setattr(ig.backend, "get_array_module",
                        lambda device: (_ for _ in ()).throw(RuntimeError("no CuPy here")))
    args = ev.parse_args(["--checkpoint", "x.npz", "--device", "cuda"])
    with pytest.raises(ig.training.OptionError, match=r"^--device cuda: no CuPy here$"):
        ev._device(args)


# ---- igc.py helpers --------------------------------------------------------------------------------
def test_compose_takes_an_igc_layer():
    from igc_np import functional as F
    from igc_np import igc
    conv = nn.IGCConv(8, 8, L=2, S=4, rng=np.random.default_rng(0))
    W = igc.compose(conv)
    np.testing.assert_array_equal(W, igc.compose(conv.primary.weight, conv.secondary.weight, 2, 4))
    x = ig.Tensor(f32(2, 8, 5, 5))
    np.testing.assert_allclose(F.conv2d(x, ig.Tensor(W), padding=1).numpy(), conv(x).numpy(), atol=1e-5)
    with pytest.raises(TypeError, match=r"compose\(igc_conv\) takes the layer alone"):
        igc.compose(conv, L=2)
    with pytest.raises(TypeError, match=r"compose: give an nn.IGCConv, or W_primary, W_secondary, L and S"):
        igc.compose(conv.primary.weight)


@pytest.mark.parametrize("call, message", [
    (lambda igc: igc.permutation_matrix(8, 0), r"interleave_permutation: b must be a positive int, got 0"),
    (lambda igc: igc.igc_params(-2, 4), r"igc_params: L must be a positive int, got -2"),
    (lambda igc: igc.igc_params(2.5, 4), r"igc_params: L must be a positive int, got 2.5"),
    (lambda igc: igc.regular_params(0), r"regular_params: C must be a positive int, got 0"),
    (lambda igc: igc.connectivity(np.ones((4, 4))), r"connectivity: W must be a 4-D conv weight.*\(4, 4\)"),
    (lambda igc: igc.block_diagonal(np.ones((8, 2, 3, 3)), 0), r"block_diagonal: groups must be a positive int"),
    (lambda igc: igc.four_branch(np.ones((8, 8, 3, 3)), 0), r"four_branch: G must be a positive int"),
])
def test_igc_helpers_refuse_sizes_that_make_no_network(call, message):
    from igc_np import igc
    with pytest.raises(ValueError, match=message):
        call(igc)


def test_anatomy_output_dir_that_is_a_file(tmp_path, capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "igc_anatomy.py"
    spec = importlib.util.spec_from_file_location("igc_anatomy_user", path)
    anatomy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anatomy)
    (tmp_path / "f").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        anatomy.main(["--output-dir", str(tmp_path / "f")])
    assert e.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "keep me"
    with pytest.raises(SystemExit):
        anatomy.main(["--L", "100", "--M", "100"])
    assert "--primary-partition 100 x --secondary-partition 100 = C = 10000" in capsys.readouterr().err


# ---- reductions and shapes -----------------------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda x: x.sum(dim=5), r"sum: axis/dim 5 is not an axis of shape \(2, 3\)"),
    (lambda x: x.mean(dim="a"), r"mean: axis/dim 'a' is not an axis of shape \(2, 3\)"),
    (lambda x: x.max(dim=2), r"max: axis/dim 2 is not an axis"),
    (lambda x: x.argmax(axis=(0, 3)), r"argmax: axis/dim 3 is not an axis"),
    (lambda x: x.unsqueeze(5), r"unsqueeze: dim 5 is out of range for shape \(2, 3\)"),
    (lambda x: x.unsqueeze(-4), r"unsqueeze: dim -4 is out of range"),
])
def test_axis_out_of_range_names_op_and_shape(call, message):
    with pytest.raises(ValueError, match=message):
        call(ig.Tensor(f32(2, 3)))


def test_axes_in_range_still_work():
    x = ig.Tensor(f32(2, 3))
    assert x.unsqueeze(2).shape == (2, 3, 1) and x.unsqueeze(-3).shape == (1, 2, 3)
    assert x.sum(dim=(0, -1)).shape == () and x.mean(axis=[0]).shape == (3,)
    np.testing.assert_array_equal(x.max(dim=-1).indices, x.numpy().argmax(axis=-1))


def test_backward_without_any_gradient_is_an_error():
    """A loss built from tensors none of which requires a gradient used to return silently."""
    with pytest.raises(RuntimeError, match=r"does not require a gradient and has no graph"):
        ig.Tensor(f32(3)).sum().backward()
    with ig.no_grad():
        y = (ig.Tensor(f32(3), requires_grad=True) * 2).sum()
    with pytest.raises(RuntimeError, match=r"inside ig.no_grad\(\)"):
        y.backward()
    leaf = ig.Tensor(np.ones(2), requires_grad=True)
    leaf.backward(np.ones(2))
    np.testing.assert_array_equal(leaf.grad, np.ones(2))


# ---- nets.describe / count_macs ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 8), (3, 0, 8), "abc", (3, 8.5, 8), (0, 3, 8, 8), 7])
def test_count_macs_refuses_shapes_that_are_not_images(shape):
    net = ig.nets.get_network("resnet_igc", 8, primary_partition=4, secondary_partition=4)
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\) or \(N, C, H, W\)"):
        ig.nets.count_macs(net, shape)


def test_describe_a_small_sequential_and_a_too_small_input():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.1), nn.Identity(), nn.MaxPool2d(4))
    text = ig.nets.describe(m, (3, 8, 8))
    header, *rows, total = text.splitlines()
    assert header.split()[:2] == ["layer", "kind"]          # the header's columns stay apart
    assert [r.split()[1] for r in rows] == ["Conv3x3/1", "Dropout", "Identity", "MaxPool4x4/4"]
    assert total.split() == ["total", "108", "3,888"]       # 4*3*9 weights, each used 6*6 times
    with pytest.raises(ValueError, match=r"3: window 4x4 does not fit input shape \(4, 2, 2\)"):
        ig.nets.describe(m, (3, 4, 4))
    with pytest.raises(ValueError, match=r"0: kernel 3x3 does not fit input shape \(3, 2, 2\)"):
        ig.nets.count_macs(m, (3, 2, 2))


# ---- layers refuse bad sizes when built, not at the first batch ---------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: nn.MaxPool2d(0), r"MaxPool2d\(kernel_size=0, padding=0\): kernel_size must be >= 1"),
    (lambda: nn.AvgPool2d(2, stride=0), r"AvgPool2d\(.*stride=0\): stride must be >= 1"),
    (lambda: nn.MaxPool2d(2.5), r"kernel_size must be an int or a pair of ints"),
    (lambda: nn.PermuteChannels(0), r"PermuteChannels\(branch_factor=0\): branch_factor must be >= 1"),
    (lambda: nn.MSELoss("avg"), r"MSELoss: reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"),
])
def test_layer_arguments_checked_at_construction(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_pooling_layers_still_pool():
    x = ig.Tensor(f32(1, 2, 4, 4))
    assert nn.MaxPool2d(2)(x).shape == (1, 2, 2, 2)
    np.testing.assert_allclose(nn.AvgPool2d(4)(x).numpy()[..., 0, 0], x.numpy().mean(axis=(2, 3)), rtol=1e-6)


def test_load_refuses_a_non_path():
    with pytest.raises(TypeError, match=r"igc_np.load: path must be a str or Path, got NoneType"):
        ig.load(None)



# ---- a bad IGC_NP_* environment variable: every command-line tool prints one line, exit 2 -------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = [["examples/cifar10_igc.py"], ["examples/evaluate.py"],
                ["examples/minimal_train.py"],
                ["examples/igc_anatomy.py"], ["-m", "igc_np"], ["-m", "igc_np", "predict", "x.png"],
                ["-m", "igc_np.imagenet"], ["-m", "igc_np.app.imagenet"], ["-m", "igc_np.data"]]


@pytest.mark.parametrize("variable", ["IGC_NP_KERNELS=conv2d_forward=9", "IGC_NP_THREADS=abc"])
def test_bad_environment_is_one_line_and_exit_2_for_every_command(variable, tmp_path):
    import subprocess
    import sys
    name, value = variable.split("=", 1)
    env = dict(os.environ, PYTHONPATH=ROOT, **{name: value})
    for args in ENTRY_POINTS:
        argv = [sys.executable] + [os.path.join(ROOT, a) if a.endswith(".py") else a for a in args]
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and name in r.stderr, (args, r.stderr[-2000:])
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    # from Python the error stays an exception (a library never exits its caller)
    r = subprocess.run([sys.executable, "-c", "import igc_np"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "ValueError" in r.stderr and name in r.stderr
