"""Modules, state dicts, devices, optimizer and schedule."""
import math

import numpy as np
import pytest

import igc_np as ig
from igc_np import functional as F


def small_net():
    return ig.nn.Sequential(
        ig.nn.Conv2d(3, 8, 3, padding=1, name="g0_conv"), ig.nn.BatchNorm2d(8, name="g0_bn"), ig.nn.ReLU(),
        ig.nn.IGCConv(8, 8, L=4, S=2, name="g1_b1"), ig.nn.BatchNorm2d(8), ig.nn.ReLU(),
        ig.nn.MaxPool2d(2), ig.nn.GlobalAvgPool2d(), ig.nn.Linear(8, 5, name="fc_score"))


def test_parameter_names_follow_the_authors_code():
    names = [n for n, _ in small_net().named_parameters()]
    assert names[:3] == ["g0_conv_weight", "g0_bn_gamma", "g0_bn_beta"]
    assert "g1_b1_conv1_weight" in names and "g1_b1_conv2_weight" in names
    assert "4.gamma" in names  # unnamed layers fall back to the attribute path
    assert names[-2:] == ["fc_score_weight", "fc_score_bias"]
    state = small_net().state_dict()
    assert "g0_bn_moving_mean" in state and "g0_bn_moving_var" in state


def test_state_dict_round_trip_and_errors():
    a, b = small_net(), small_net()
    for p in b.parameters():
        p.data = p.data + 1.0
    b.load_state_dict(a.state_dict())
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    state = a.state_dict()
    state["g0_conv_weight"] = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"g0_conv_weight: shape \(1, 2, 3, 3\)"):
        b.load_state_dict(state)
    del state["g0_conv_weight"]
    with pytest.raises(KeyError, match="missing.*g0_conv_weight"):
        b.load_state_dict(state)


def test_train_eval_switch_changes_batch_norm():
    net = small_net()
    x = ig.Tensor(np.random.default_rng(0).standard_normal((4, 3, 6, 6)).astype(np.float32))
    y_train = net(x).data
    net.eval()
    assert not net[1].training
    y_eval = net(x).data
    assert not np.allclose(y_train, y_eval)
    net.train()
    assert net[1].training


def test_igc_conv_is_primary_permute_secondary_permute():
    """Both paths of IGCConv (fused when S = C/L, explicit otherwise) equal the written-out chain."""
    rng = np.random.default_rng(0)
    x = ig.Tensor(rng.standard_normal((2, 12, 5, 5)))
    for L, S in ((4, 3), (4, 2), (3, 6)):
        igc = ig.nn.IGCConv(12, 12, L=L, S=S).to(dtype=np.float64)
        assert igc.fused == (L * S == 12)
        chain = F.permute_channels(igc.secondary(F.permute_channels(igc.primary(x), L)), S)
        np.testing.assert_allclose(igc(x).data, chain.data, atol=1e-12)
        # its own modules are the paper's chain: primary -> P -> secondary -> P_S
        modules = igc.unpermute(igc.secondary(igc.permute(igc.primary(x))))
        np.testing.assert_allclose(modules.data, chain.data, atol=1e-12)
        assert (igc.permute.branch_factor, igc.unpermute.branch_factor) == (L, S)
    with pytest.raises(ValueError, match="divisible by L=5"):
        ig.nn.IGCConv(12, 12, L=5, S=2)


def test_sgd_nesterov_matches_the_formula():
    w = ig.nn.Parameter(np.array([1.0, -2.0]))
    opt = ig.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    v = np.zeros(2)
    ref = w.data.copy()
    for step in range(3):
        grad = np.array([0.5, 0.25]) * (step + 1)
        w.grad = grad.copy()
        opt.step()
        g = grad + 0.01 * ref
        v = 0.9 * v + g
        ref = ref - 0.1 * (g + 0.9 * v)
        np.testing.assert_allclose(w.data, ref)


def test_sgd_state_round_trip():
    w = ig.nn.Parameter(np.ones(3, np.float32))
    opt = ig.optim.SGD([w], lr=0.05)
    w.grad = np.ones(3, np.float32)
    opt.step()
    state = opt.state_dict()
    opt2 = ig.optim.SGD([w], lr=1.0)
    opt2.load_state_dict(state)
    assert opt2.lr == 0.05
    np.testing.assert_array_equal(opt2.velocity[0], opt.velocity[0])


def test_multistep_schedule():
    opt = ig.optim.SGD([ig.nn.Parameter(np.ones(1))], lr=0.1)
    sched = ig.optim.MultiStepLR(opt, [200, 300, 350])
    assert [round(sched.lr_at(e), 6) for e in (0, 199, 200, 300, 349, 350)] == [0.1, 0.1, 0.01, 0.001, 0.001, 0.0001]
    sched.step(300)
    assert abs(opt.lr - 0.001) < 1e-12


def test_small_network_learns():
    rng = np.random.default_rng(0)
    net = small_net()
    x = ig.Tensor(rng.standard_normal((10, 3, 6, 6)).astype(np.float32))
    labels = rng.integers(0, 5, 10)
    opt = ig.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_module_to_emu_keeps_values():
    net = small_net()
    before = net.state_dict()
    net.to("emu")
    assert all(p.device == "emu" for p in net.parameters())
    for n, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[n])


def test_initialisation_follows_the_authors_code():
    """Conv weights N(0, 2/fan_in) (He), FC weights U(+-sqrt(1/fan_in)) (MXNet Xavier uniform, factor 'in',
    magnitude 1, as the authors' code), BN gamma 1 / beta 0, running var 1."""
    rng = np.random.default_rng(0)
    conv = ig.nn.Conv2d(64, 128, 3, groups=4, rng=rng)
    fan_in = 64 // 4 * 9
    assert abs(conv.weight.data.std() - np.sqrt(2 / fan_in)) < 0.03 * np.sqrt(2 / fan_in)
    assert abs(conv.weight.data.mean()) < 0.01
    fc = ig.nn.Linear(300, 200, rng=rng)
    bound = np.sqrt(1 / 300)  # 0.0577; the old sqrt(3 / 300) = 0.1 fails both checks below
    assert fc.weight.data.min() >= -bound and fc.weight.data.max() <= bound
    assert fc.weight.data.max() > 0.99 * bound and fc.weight.data.min() < -0.99 * bound  # the bound, not less
    assert abs(fc.weight.data.std() - bound / np.sqrt(3)) < 0.02 * bound
    np.testing.assert_array_equal(fc.bias.data, 0)
    bn = ig.nn.BatchNorm2d(5)
    assert (bn.gamma.data == 1).all() and (bn.beta.data == 0).all()
    assert (bn.running_mean == 0).all() and (bn.running_var == 1).all()


@pytest.mark.parametrize("build, error, message", [
    (lambda: ig.nn.IGCConv(8, 8, L=0, S=2, name="g1_b1"), ValueError,
     r"IGCConv 'g1_b1'\(in_channels=8, out_channels=8, L=0, S=2, .*\): L must be >= 1, got 0"),
    (lambda: ig.nn.IGCConv(8, 8, L=4, S=0), ValueError, r"IGCConv\(.*S=0.*\): S must be >= 1, got 0"),
    (lambda: ig.nn.Linear(0, 10, name="fc"), ValueError,
     r"Linear 'fc'\(in_features=0, out_features=10\): in_features must be >= 1"),
    (lambda: ig.nn.Linear(2.5, 10), TypeError, "in_features must be an int, got 2.5"),
    (lambda: ig.nn.BatchNorm2d(-1, name="g0_bn"), ValueError,
     r"BatchNorm2d 'g0_bn'\(num_features=-1\): num_features must be >= 1, got -1"),
    (lambda: ig.nn.BatchNorm2d(4, momentum=1.5), ValueError, r"momentum must lie in \[0, 1\], got 1.5"),
    (lambda: ig.nn.Conv2d(4, 8, 3, groups=0, name="g0_conv"), ValueError,
     r"Conv2d 'g0_conv'\(in_channels=4, out_channels=8, kernel_size=3, .*groups=0\): groups must be >= 1"),
    (lambda: ig.nn.Conv2d(4, 8, 0), ValueError, "kernel_size must be >= 1, got 0"),
    (lambda: ig.nn.Conv2d(4, 8, (3, 0)), ValueError, r"kernel_size must be >= 1, got \(3, 0\)"),
    (lambda: ig.nn.Conv2d(4, 8, 3, stride=(1, 0)), ValueError, r"stride=\(1, 0\).*: stride must be >= 1, got \(1, 0\)"),
    (lambda: ig.nn.Conv2d(4, 8, 3, padding=-1), ValueError, "padding must be >= 0, got -1"),
    (lambda: ig.nn.Conv2d(4, 8, "3"), TypeError, "kernel_size must be an int or a pair of ints, got '3'"),
    (lambda: ig.nn.Conv2d(4, 8, 3, padding=(1, 2, 3)), TypeError, r"padding must be an int or a pair of ints"),
    (lambda: ig.nn.Conv2d(4, 8, 3, dilation=2), ValueError, r"dilation=2: a dilated conv is not implemented"),
    (lambda: ig.nn.Conv2d(4, 8, 3, padding_mode="reflect"), ValueError, r"only zero padding.*padding_mode='zeros'"),
    (lambda: ig.nn.MaxPool2d(2, ceil_mode=True), ValueError, r"ceil_mode=True: the output size rounds down"),
    (lambda: ig.nn.Conv2d(True, 8, 3), TypeError, "in_channels must be an int, got True"),
])
def test_layer_arguments_are_validated_with_the_layer_and_sizes_named(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_valid_layer_arguments_still_build():
    assert ig.nn.Conv2d(4, 8, (3, 1), stride=(2, 1), padding=(1, 0), groups=2).weight.shape == (8, 2, 3, 1)
    assert ig.nn.Conv2d(np.int64(4), 4, 1).weight.shape == (4, 4, 1, 1)  # NumPy integers are ints
    assert ig.nn.IGCConv(8, 8, L=1, S=8).secondary.weight.shape == (8, 1, 1, 1)


def test_sgd_says_what_it_takes():
    import numpy as np
    import pytest
    import igc_np as ig
    net = ig.nn.Linear(3, 2)
    with pytest.raises(TypeError, match="pass model.parameters"):
        ig.optim.SGD(net)
    with pytest.raises(TypeError, match="parameter 0 is a ndarray"):
        ig.optim.SGD([np.ones(3)])
    with pytest.raises(TypeError, match="without requires_grad"):
        ig.optim.SGD([ig.Tensor(np.ones(3))])
    ig.optim.SGD(net.parameters())  # the right call still works


# ---- print(model): the layer tree, as PyTorch prints it ------------------------------------------
def test_repr_is_pytorchs_layer_tree():
    net = ig.nn.Sequential(ig.nn.Conv2d(3, 16, 3, padding=1), ig.nn.BatchNorm2d(16), ig.nn.ReLU(),
                           ig.nn.Sequential(ig.nn.MaxPool2d(2), ig.nn.Flatten()), ig.nn.Linear(16, 10))
    assert repr(net) == (
        "Sequential(\n"
        "  (0): Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)\n"
        "  (1): BatchNorm2d(16, eps=2e-05, momentum=0.9)\n"
        "  (2): ReLU()\n"
        "  (3): Sequential(\n"
        "    (0): MaxPool2d(kernel_size=2, stride=2, padding=0)\n"
        "    (1): Flatten(start_dim=1, end_dim=-1)\n"
        "  )\n"
        "  (4): Linear(in_features=16, out_features=10, bias=True)\n"
        ")")
    assert repr(ig.nn.Conv2d(8, 16, (3, 1), stride=2, groups=4, bias=True)) == \
        "Conv2d(8, 16, kernel_size=(3, 1), stride=(2, 2), groups=4)"
    assert repr(ig.nn.Conv2d(8, 8, 3, padding="same")) == \
        "Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding='same', bias=False)"
    assert repr(ig.nn.AdaptiveAvgPool2d((1, 1))) == "AdaptiveAvgPool2d(output_size=(1, 1))"
    assert repr(ig.nn.Dropout(0.2)) == "Dropout(p=0.2)" and repr(ig.nn.Identity()) == "Identity()"


def test_igc_conv_repr_shows_L_M_and_both_convs():
    text = repr(ig.nn.IGCConv(16, 32, L=4, S=4, stride=2))
    assert text.splitlines() == [
        "IGCConv(",
        "  16, 32, L=4, M=8, S=4",  # S differs from M = C_out/L here: shown
        "  (primary): Conv2d(16, 32, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), groups=4, bias=False)",
        "  (permute): PermuteChannels(branch_factor=4)",
        "  (secondary): Conv2d(32, 32, kernel_size=(1, 1), stride=(1, 1), groups=4, bias=False)",
        "  (unpermute): PermuteChannels(branch_factor=4)",
        ")"]
    assert repr(ig.nn.IGCConv(8, 8, L=4, S=2)).splitlines()[1] == "  8, 8, L=4, M=2"


def test_network_repr_is_the_tree():
    net = ig.nets.get_network("resnet_igc", 8, primary_partition=4, secondary_partition=2)
    lines = repr(net).splitlines()
    assert lines[:4] == ["Network(",
                         f"  name='resnet_igc-8 (L=4, M=2)', parameters={ig.nets.count_params(net):,}",
                         "  (stem): ConvBN(",
                         "    relu=True"]
    assert "      (0): ResidualBlock(" in lines and "        shortcut=identity" in lines
    assert "  (fc): Linear(in_features=32, out_features=10, bias=True)" in lines and lines[-1] == ")"
    plain = ig.nets.get_network("resnet", 8, primary_partition=4, secondary_partition=2)
    assert repr(plain).splitlines()[1].startswith("  name='resnet-8 (C=8)'")  # no L, M without IGC blocks


# ---- PyTorch's layer arguments: padding 'same'/'valid', tuples, adaptive pooling, Flatten ---------
def test_conv_padding_same_and_valid_shapes():
    for k, pad, out in ((3, "same", (4, 9, 7)), ((3, 5), "same", (4, 9, 7)), (2, "same", (4, 9, 7)),
                        (3, "valid", (4, 7, 5)), ((3, 1), (1, 0), (4, 9, 7))):
        conv = ig.nn.Conv2d(2, 4, k, padding=pad)
        assert conv.padding == pad  # kept as given
        assert conv.output_shape((2, 9, 7)) == out, (k, pad)
    # the layer's window errors are F.conv2d's (checks.conv_window), prefixed with the layer and its sizes
    with pytest.raises(ValueError, match=r"Conv2d 'c'\(.*stride=2.*\): padding='same' needs stride 1 \(as in "
                                         r"PyTorch\), got stride=\(2, 2\); give the padding as numbers, e.g. padding=1"):
        ig.nn.Conv2d(2, 4, 3, stride=2, padding="same", name="c")
    with pytest.raises(ValueError, match=r"padding='full' is not one of \('same', 'valid'\) \(or an int or a pair"):
        ig.nn.Conv2d(2, 4, 3, padding="full")


@pytest.mark.parametrize("k, stride, padding", [((1, 3), 1, (0, 1)), (3, (1, 2), (1, 2)), ((2, 4), 1, "same"),
                                                ((4, 1), (2, 1), "valid"), (3, 2, [2, 0]), ((1, 1), (3, 2), 0)])
def test_conv_layer_walk_matches_its_forward(k, stride, padding):
    """output_shape / describe (walk) use the resolved window: (H + top + bottom - kh) // sh + 1."""
    x = ig.Tensor(np.random.default_rng(0).standard_normal((1, 2, 9, 8)).astype(np.float32))
    conv = ig.nn.Conv2d(2, 3, k, stride=stride, padding=padding)
    assert (1,) + conv.output_shape((2, 9, 8)) == conv(x).shape
    assert conv.macs((2, 9, 8)) == conv.weight.size * math.prod(conv(x).shape[2:])


@pytest.mark.parametrize("k", [3, (3, 5), 2])
def test_conv_padding_same_forward(k):
    x = ig.Tensor(np.random.default_rng(0).standard_normal((2, 2, 9, 7)).astype(np.float32))
    for pad in ("same", "valid"):
        conv = ig.nn.Conv2d(2, 4, k, padding=pad)
        assert conv(x).shape == (2,) + conv.output_shape((2, 9, 7))
    if k == 3:  # an odd kernel: 'same' is padding k // 2
        same, explicit = ig.nn.Conv2d(2, 4, 3, padding="same"), ig.nn.Conv2d(2, 4, 3, padding=1)
        explicit.weight.data = same.weight.data.copy()
        np.testing.assert_array_equal(same(x).data, explicit(x).data)


def test_pooling_takes_tuples():
    x = ig.Tensor(np.random.default_rng(0).standard_normal((2, 3, 8, 9)).astype(np.float32))
    pool = ig.nn.MaxPool2d((2, 3), stride=(2, 1), padding=(1, 0))
    y = pool(x)
    assert y.shape == (2,) + pool.output_shape((3, 8, 9)) == (2, 3, 5, 7)
    np.testing.assert_array_equal(y.data, F.max_pool2d(x, (2, 3), (2, 1), (1, 0)).data)
    assert ig.nn.AvgPool2d((2, 3))(x).shape == (2, 3, 4, 3)


@pytest.mark.parametrize("size", [1, (1, 1)])
def test_adaptive_avg_pool_to_one(size):
    x = ig.Tensor(np.random.default_rng(0).standard_normal((2, 3, 5, 7)), requires_grad=True)
    y = ig.nn.AdaptiveAvgPool2d(size)(x)
    assert y.shape == (2, 3, 1, 1)  # as PyTorch: the spatial axes stay
    np.testing.assert_allclose(y.data[:, :, 0, 0], x.data.mean(axis=(2, 3)), rtol=1e-12)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(x.shape, 1 / 35), rtol=1e-12)
    assert ig.nn.AdaptiveAvgPool2d(size).output_shape((3, 5, 7)) == (3, 1, 1)


def test_adaptive_avg_pool_other_sizes():
    x = ig.Tensor(np.random.default_rng(0).standard_normal((2, 3, 4, 6)))
    y = ig.nn.AdaptiveAvgPool2d((2, 3))(x)
    np.testing.assert_allclose(y.data, x.data.reshape(2, 3, 2, 2, 3, 2).mean(axis=(3, 5)), rtol=1e-12)
    assert ig.nn.AdaptiveAvgPool2d((None, 2))(x).shape == (2, 3, 4, 2)
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d\(output_size=3\): input 4x6 does not split into "
                                         r"3x3 equal windows; .*heights \[1, 2, 4\], widths \[1, 2, 3, 6\]"):
        ig.nn.AdaptiveAvgPool2d(3)(x)
    with pytest.raises(ValueError, match=r"output_size must be a positive int or a pair"):
        ig.nn.AdaptiveAvgPool2d(0)


def test_flatten_start_and_end_dim():
    x = ig.Tensor(np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5))
    assert ig.nn.Flatten()(x).shape == (2, 60)
    assert ig.nn.Flatten(1, 2)(x).shape == (2, 12, 5)
    assert ig.nn.Flatten(start_dim=2)(x).shape == (2, 3, 20)
    assert ig.nn.Flatten(0, -1)(x).shape == (120,)
    np.testing.assert_array_equal(ig.nn.Flatten(1, 2)(x).data, x.data.reshape(2, 12, 5))
    assert ig.nn.Flatten(1, 2).output_shape((3, 4, 5)) == (12, 5)
    with pytest.raises(ValueError, match=r"Flatten\(start_dim=3, end_dim=1\): no such axes, or start after end"):
        ig.nn.Flatten(3, 1)(x)


# ---- layers report their own shapes and MACs -----------------------------------------------------
def test_layers_report_output_shape_and_macs():
    conv = ig.nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2)
    assert conv.output_shape((4, 9, 9)) == (8, 5, 5)
    assert conv.macs((4, 9, 9)) == conv.weight.size * 25
    igc = ig.nn.IGCConv(8, 8, L=4, S=2)
    assert igc.macs((8, 6, 6)) == (igc.primary.weight.size + igc.secondary.weight.size) * 36
    assert ig.nn.Linear(12, 5).macs((3, 2, 2)) == 60 and ig.nn.Linear(12, 5).output_shape((12,)) == (5,)
    assert small_net().output_shape((3, 6, 6)) == (5,)
    with pytest.raises(ValueError, match=r"Conv2d\(4, 8, .*\): expects 4 input channels, got shape \(3, 9, 9\)"):
        conv.output_shape((3, 9, 9))  # called on the layer itself, the error names it


def test_a_custom_layer_walks_with_its_own_method():
    class Double(ig.nn.Module):
        def forward(self, x):
            return x * 2

    class Shaped(Double):
        def walk(self, path, shape, visit):
            visit(path, "Double", shape, 0, 0)
            return shape

    with pytest.raises(TypeError, match=r"cannot walk a Double at '1'.*give the layer a walk"):
        ig.nn.Sequential(ig.nn.ReLU(), Double()).output_shape((3, 4, 4))
    assert ig.nets.layers(ig.nn.Sequential(ig.nn.ReLU(), Shaped()), (3, 4, 4))[1] == ("1", "Double", (3, 4, 4), 0, 0)


def test_conv_bn_calls_its_batch_norm_layer(monkeypatch):
    """ConvBN composes its layers: its BatchNorm2d's forward runs (and selects the fused BN+add+ReLU op)."""
    net = ig.nets.get_network("resnet_igc", 8, primary_partition=4, secondary_partition=2, rng=0)
    x = ig.Tensor(np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32))
    calls = []
    real = ig.nn.BatchNorm2d.forward
    monkeypatch.setattr(ig.nn.BatchNorm2d, "forward", lambda self, *a, **k: (calls.append(k), real(self, *a, **k))[1])
    net(x)
    n_bn = sum(isinstance(m, ig.nn.BatchNorm2d) for m in net.modules())
    assert len(calls) == n_bn
    assert sum(k.get("residual") is not None for k in calls) == 3  # one residual join per block


def test_batch_norm_layer_selects_the_fused_op_bit_for_bit():
    from igc_np.ops.fused import batch_norm_relu
    rng = np.random.default_rng(2)
    x, r = (ig.Tensor(rng.standard_normal((3, 4, 5, 5)).astype(np.float32)) for _ in range(2))
    a, b = ig.nn.BatchNorm2d(4), ig.nn.BatchNorm2d(4)
    y = a(x, residual=r, relu=True)
    ref = batch_norm_relu(x, b.gamma, b.beta, b.running_mean, b.running_var, True, 0.9, 2e-5, relu=True, residual=r)
    np.testing.assert_array_equal(y.data, ref.data)
    np.testing.assert_array_equal(a.running_var, b.running_var)
    np.testing.assert_array_equal(ig.nn.BatchNorm2d(4)(x).data, F.batch_norm(x, b.gamma, b.beta, None, None).data)


# ---- a trainer checkpoint given to load_state_dict -----------------------------------------------
def test_load_state_dict_names_a_trainer_checkpoint(tmp_path):
    from igc_np import training
    net = small_net()
    opt = ig.optim.SGD(net.parameters())
    path = training.save_checkpoint(tmp_path / "model-0001.npz", net, opt, epoch=1, batch=0, rng_state="{}",
                                    train_sums=np.zeros(3), history="[]", args="{}") or tmp_path / "model-0001.npz"
    ckpt = ig.load(path)
    other = small_net()
    with pytest.raises(ValueError, match=r"Sequential.load_state_dict: this is a trainer checkpoint .*"
                                         r"igc_np.app.predict.load_trained\(path\).*prefix='model/'"):
        other.load_state_dict(ckpt)
    other.load_state_dict(ckpt, prefix="model/")
    for (n, a), b in zip(net.state_dict().items(), other.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    with pytest.raises(KeyError, match=r"no entry starts with prefix 'net/'"):
        other.load_state_dict(ckpt, prefix="net/")


# ---- nn.utils.clip_grad_norm_ ---------------------------------------------------------------------
def _params_with_grads(scale):
    rng = np.random.default_rng(3)
    ps = [ig.nn.Parameter(np.zeros(s)) for s in [(3, 4), (5,), (2,)]]
    for p in ps[:2]:
        p.grad = rng.standard_normal(p.shape) * scale
    return ps  # the last one has no gradient: skipped, as PyTorch


@pytest.mark.parametrize("norm_type", [2.0, 1, math.inf])
def test_clip_grad_norm_returns_the_total_norm_and_clips(norm_type):
    ps = _params_with_grads(10.0)
    flat = np.concatenate([p.grad.ravel() for p in ps[:2]])
    total = np.linalg.norm(flat, norm_type)
    got = ig.nn.utils.clip_grad_norm_(ps, max_norm=1.0, norm_type=norm_type)
    assert isinstance(got, ig.Tensor) and got.item() == pytest.approx(total, rel=1e-12)
    clipped = np.concatenate([p.grad.ravel() for p in ps[:2]])
    np.testing.assert_allclose(clipped, flat * (1.0 / (total + 1e-6)), rtol=1e-12)
    assert np.linalg.norm(clipped, norm_type) == pytest.approx(1.0, rel=1e-5)
    assert ps[2].grad is None


def test_clip_grad_norm_leaves_small_gradients_alone():
    ps = _params_with_grads(1e-3)
    before = [p.grad.copy() for p in ps[:2]]
    ig.nn.utils.clip_grad_norm_(ps, 5.0)
    for p, b in zip(ps, before):
        np.testing.assert_array_equal(p.grad, b)
    ps[0].grad[0, 0] = np.inf
    with pytest.raises(RuntimeError, match="total norm of order 2.0 of the gradients is inf"):
        ig.nn.utils.clip_grad_norm_(ps, 5.0, error_if_nonfinite=True)
    assert math.isinf(ig.nn.utils.clip_grad_norm_(ps, 5.0).item())  # unchecked: clipped by 0, as PyTorch
    with pytest.raises(TypeError, match="parameter 0 is a ndarray; pass model.parameters"):
        ig.nn.utils.clip_grad_norm_([np.ones(2)], 1.0)


# ---- the core reads no MXNet file and imports no project module inside a function ----------------
def test_no_project_import_inside_a_function_in_the_layer_files():
    import ast
    import pathlib
    root = pathlib.Path(ig.__file__).parent
    for rel in ("nn.py", "nets.py", "optim.py", "igc.py", "kernels/adam.py"):
        tree = ast.parse((root / rel).read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("igc_np")):
                        raise AssertionError(f"{rel}:{node.lineno}: project import inside {fn.name}()")


def test_module_to_float16_is_refused_before_anything_changes():
    net = ig.nn.Sequential(ig.nn.Conv2d(3, 4, 3), ig.nn.BatchNorm2d(4))
    before = {k: (v.dtype, v.copy()) for k, v in net.state_dict().items()}
    for call in (lambda: net.to(dtype=np.float16), lambda: net.to("emu", dtype="float16")):
        with pytest.raises(TypeError, match=r"Sequential.to\(dtype=float16\): float16 is not supported.*"
                                            r"use dtype=np.float32.*The module is unchanged"):
            call()
        assert [m.device for m in net.modules()] == ["cpu"] * 3
        after = net.state_dict()
        for k, (dtype, value) in before.items():
            assert after[k].dtype == dtype
            np.testing.assert_array_equal(after[k], value)


def test_module_shorthands_as_pytorch():
    net = ig.nn.Sequential(ig.nn.Conv2d(3, 4, 3), ig.nn.BatchNorm2d(4))
    assert net.double() is net and {v.dtype for v in net.state_dict().values()} == {np.dtype(np.float64)}
    assert net.float() is net and {v.dtype for v in net.state_dict().values()} == {np.dtype(np.float32)}
    assert net.cpu() is net and net[0].weight.device == "cpu"
    with pytest.raises(TypeError, match=r"Sequential.to\(dtype=float16\).*use dtype=np.float32"):
        net.half()
    assert net[0].requires_grad_(False) is net[0]  # freeze one layer, as in fine-tuning
    assert [p.requires_grad for p in net.parameters()] == [False, True, True]
    net.requires_grad_()
    assert all(p.requires_grad for p in net.parameters())
