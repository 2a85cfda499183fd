"""Modules, state dicts, devices, optimizer and schedule."""
import numpy as np
import pytest

import igc_np as ig
from igc_np import functional as F


def small_net():
    return ig.nn.Sequential(
        ig.nn.Conv2d(3, 8, 3, padding=1, name="g0_conv"), ig.nn.BatchNorm2d(8, name="g0_bn"), ig.nn.ReLU(),
        ig.nn.IGCConv(8, 8, L=4, S=2, name="g1_b1"), ig.nn.BatchNorm2d(8), ig.nn.ReLU(),
        ig.nn.MaxPool2d(2), ig.nn.GlobalAvgPool2d(), ig.nn.Linear(8, 5, name="fc_score"))


def test_parameter_names_follow_the_reference():
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


def test_initialisation_follows_the_reference():
    """Conv weights N(0, 2/fan_in) (He), FC weights U(+-sqrt(1/fan_in)) (MXNet Xavier uniform, factor 'in',
    magnitude 1, as the reference), BN gamma 1 / beta 0, running var 1."""
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
    (lambda: ig.nn.Conv2d(4, 8, 3, padding=-1), ValueError, "padding must be >= 0, got -1"),
    (lambda: ig.nn.Conv2d(4, 8, "3"), TypeError, "kernel_size must be an int or a pair of ints, got '3'"),
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
