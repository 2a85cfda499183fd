"""Optimizers as a PyTorch user drives them: param_groups, frozen parameters, schedules driven per
epoch, state dicts, and Adam/AdamW on both tiers (the NumPy reference on the CPU, kernels/adam.cu
on "emu", compiled by NVRTC + ptxas for the GPU)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import igc_np as ig
from igc_np import functional as F
from igc_np.kernels import adam as adam_kernels
from igc_np.kernels import loader, nvrtc, sass, use_version, versions
from igc_np.optim import SGD, Adam, AdamW, MultiStepLR, adam_reference

try:
    import torch
except ImportError:  # the comparison with PyTorch itself runs where it is installed
    torch = None

NORM_TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-6}


def net_and_batch(seed=0):
    rng = np.random.default_rng(seed)
    net = ig.nn.Sequential(ig.nn.Conv2d(3, 4, 3, padding=1, rng=rng), ig.nn.BatchNorm2d(4), ig.nn.ReLU(),
                           ig.nn.GlobalAvgPool2d(), ig.nn.Linear(4, 3, rng=rng))
    x = ig.Tensor(rng.standard_normal((4, 3, 5, 5)).astype(np.float32))
    return net, x, rng.integers(0, 3, 4)


def train(net, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()


# ---- param_groups, frozen parameters -----------------------------------------------------------
@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1), lambda ps: Adam(ps, lr=0.1),
                                  lambda ps: AdamW(ps, lr=0.1)])
def test_param_groups_lr_reads_and_sets_the_rate(make):
    w = ig.nn.Parameter(np.array([1.0, -2.0]))
    opt = make([w])
    assert opt.param_groups[0]["lr"] == 0.1 == opt.lr and opt.param_groups[0]["params"] == [w]
    opt.param_groups[0]["lr"] = 0.0  # a zero rate must freeze the weights (AdamW's decay included)
    w.grad = np.array([0.5, 0.25])
    opt.step()
    np.testing.assert_array_equal(w.data, [1.0, -2.0])
    assert opt.lr == 0.0
    opt.lr = 0.1
    assert opt.param_groups[0]["lr"] == 0.1
    opt.step()
    assert not np.array_equal(w.data, [1.0, -2.0])


def test_schedule_sets_the_group_rate():
    opt = SGD([ig.nn.Parameter(np.ones(1))], lr=0.1)
    sched = MultiStepLR(opt, [2])
    sched.step(2)
    assert abs(opt.param_groups[0]["lr"] - 0.01) < 1e-15


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
def test_frozen_parameters_are_skipped(cls):
    """PyTorch's fine-tuning habit: freeze a layer, pass model.parameters() (this was refused)."""
    net, x, y = net_and_batch()
    frozen = net[0].weight
    frozen.requires_grad = False
    before = frozen.data.copy()
    opt = cls(net.parameters(), lr=0.05)
    assert opt.param_groups[0]["params"] == net.parameters()  # kept, as in PyTorch, and skipped while frozen
    other = net[4].weight.data.copy()
    train(net, opt, x, y, 2)
    np.testing.assert_array_equal(frozen.data, before)
    assert not np.array_equal(net[4].weight.data, other)
    frozen.grad = np.ones_like(frozen.data)  # a gradient left from before freezing does not move it either
    opt.step()
    np.testing.assert_array_equal(frozen.data, before)


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
@pytest.mark.parametrize("device", ["cpu", "emu"])
def test_a_parameter_unfrozen_after_the_optimizer_was_made_trains(cls, device):
    """Fine-tuning: freeze, build the optimizer, later unfreeze. It was left out of the optimizer for
    good at construction, so it silently never trained."""
    net, x, y = net_and_batch()
    net.to(device)
    first = net[0].weight
    first.requires_grad = False
    opt = cls(net.parameters(), lr=0.05)
    train(net, opt, x.to(device), y, 1)
    before = first.numpy().copy()
    first.requires_grad_()
    train(net, opt, x.to(device), y, 1)
    assert first.grad is not None and not np.array_equal(first.numpy(), before)


def test_step_closure_and_zero_grad_set_to_none_as_pytorch():
    net, x, y = net_and_batch()
    opt = SGD(net.parameters(), lr=0.05)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss
    before = net[4].weight.data.copy()
    loss = opt.step(closure)
    assert isinstance(loss, ig.Tensor) and loss.shape == ()
    assert not np.array_equal(net[4].weight.data, before)
    for zero in (opt.zero_grad, net.zero_grad):
        grads = [p.grad for p in net.parameters()]
        zero(set_to_none=False)
        assert all(p.grad is g and not g.any() for p, g in zip(net.parameters(), grads))  # zeroed in place
        zero()
        assert all(p.grad is None for p in net.parameters())
        F.cross_entropy(net(x), y).backward()


def test_only_frozen_parameters_is_an_error():
    w = ig.nn.Parameter(np.ones(2))
    w.requires_grad = False
    with pytest.raises(TypeError, match=r"SGD: all 1 parameters are frozen \(Tensors without requires_grad\)"):
        SGD([w])
    with pytest.raises(TypeError, match=r"AdamW: parameter groups .* not supported"):
        AdamW([{"params": [ig.nn.Parameter(np.ones(2))], "lr": 0.1}])


# ---- schedule ----------------------------------------------------------------------------------
def test_multistep_step_without_argument_once_per_epoch():
    """PyTorch's loop (step() after each epoch) and the epoch-argument style give the same rates."""
    opt = SGD([ig.nn.Parameter(np.ones(1))], lr=0.1)
    sched = MultiStepLR(opt, milestones=[2, 4], gamma=0.5)
    per_epoch = []
    for epoch in range(6):
        per_epoch.append(opt.param_groups[0]["lr"])  # the rate epoch `epoch` trains with
        sched.step()
    opt2 = SGD([ig.nn.Parameter(np.ones(1))], lr=0.1)
    sched2 = MultiStepLR(opt2, [2, 4], factor=0.5)
    assert per_epoch == [sched2.step(e) for e in range(6)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert sched.get_last_lr() == [0.1 * 0.5 ** 2] and sched.last_epoch == 6
    with pytest.raises(TypeError, match="factor .* or gamma .*, not both"):
        MultiStepLR(opt, [2], factor=0.1, gamma=0.1)


def test_multistep_state_dict_resumes_the_schedule():
    opt = SGD([ig.nn.Parameter(np.ones(1))], lr=0.1)
    sched = MultiStepLR(opt, [3], factor=0.1)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    opt2 = SGD([ig.nn.Parameter(np.ones(1))], lr=0.7)  # another rate: the state must win
    sched2 = MultiStepLR(opt2, [100], factor=0.5)
    sched2.load_state_dict(state)
    # the restored epoch's rate is set at once (it was 0.7 until the next step(): a resumed epoch ran
    # at the wrong rate unless the optimizer's state was loaded too)
    assert opt2.lr == opt.lr == sched2.get_last_lr()[0] == pytest.approx(0.01, rel=1e-12)
    assert sched2.step() == sched.step() == pytest.approx(0.01, rel=1e-12)
    with pytest.raises(KeyError, match=r"MultiStepLR.load_state_dict: missing \['base_lr'"):
        sched2.load_state_dict({"milestones": [1], "factor": 0.1, "last_epoch": 0})


# ---- state dicts -------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.05), lambda ps: Adam(ps, lr=0.01, weight_decay=1e-3),
                                  lambda ps: AdamW(ps, lr=0.01), lambda ps: AdamW(ps, lr=0.01, amsgrad=True)])
def test_optimizer_state_dict_resumes_bit_identically(make):
    net, x, y = net_and_batch()
    opt = make(net.parameters())
    train(net, opt, x, y, 2)
    model_state, opt_state = net.state_dict(), opt.state_dict()
    train(net, opt, x, y, 2)
    net2, _, _ = net_and_batch(seed=5)
    net2.load_state_dict(model_state)
    opt2 = make(net2.parameters())
    opt2.param_groups[0]["lr"] = 123.0
    opt2.load_state_dict({k: np.asarray(v) for k, v in opt_state.items()})  # as a checkpoint stores it
    train(net2, opt2, x, y, 2)
    for (n, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=n)


def test_adam_state_dict_errors_name_the_entry():
    w = ig.nn.Parameter(np.ones((2, 3)))
    opt = Adam([w])
    w.grad = np.ones((2, 3))
    opt.step()
    state = opt.state_dict()
    state["exp_avg_0"] = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: exp_avg_0 shape \(3, 2\) != parameter shape"):
        Adam([w]).load_state_dict(state)
    state["exp_avg_0"] = np.zeros((2, 3))
    del state["exp_avg_sq_0"]
    with pytest.raises(KeyError, match="no exp_avg_sq_0"):
        Adam([w]).load_state_dict(state)


# ---- Adam / AdamW: defaults and the formula ----------------------------------------------------
def test_adam_defaults_are_pytorchs():
    w = [ig.nn.Parameter(np.ones(2))]
    g = Adam(w).param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"], g["amsgrad"]) == (1e-3, (0.9, 0.999), 1e-8, 0, False)
    g = AdamW(w).param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"], g["amsgrad"]) == (1e-3, (0.9, 0.999), 1e-8, 1e-2, False)
    with pytest.raises(ValueError, match=r"Adam: betas must be two numbers in \[0, 1\)"):
        Adam(w, betas=(0.9, 1.0))


def documented_adam(w, grads, lr, beta1, beta2, eps, wd, decoupled, amsgrad=False):
    """The algorithm box of PyTorch's Adam / AdamW documentation, literally, in float64. amsgrad:
    v_max = max(v_max, v), v_hat = v_max / (1 - beta2^t), the maximum taken before the bias
    correction, as PyTorch's code does and its docs say since pytorch/pytorch#142351 (the docs
    before it put the maximum after the correction)."""
    m = v = v_max = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            w = w - lr * wd * w
        elif wd:
            g = g + wd * w
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        if amsgrad:
            v_max = np.maximum(v_max, v)
        m_hat, v_hat = m / (1 - beta1 ** t), (v_max if amsgrad else v) / (1 - beta2 ** t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
    return w


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("cls, wd", [(Adam, 0.0), (Adam, 0.1), (AdamW, 0.1), (AdamW, 0.0)])
def test_adam_matches_the_documented_algorithm(cls, wd, amsgrad):
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) * 10 ** rng.uniform(-3, 1) for _ in range(20)]
    w = ig.nn.Parameter(w0.copy())
    opt = cls([w], lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, amsgrad=amsgrad)
    for g in grads:
        w.grad = g.copy()
        opt.step()
    expected = documented_adam(w0, grads, 0.01, 0.8, 0.99, 1e-6, wd, cls is AdamW, amsgrad)
    if amsgrad:  # the maximum mattered: the gradients' scales vary over 4 decades
        assert not np.allclose(expected, documented_adam(w0, grads, 0.01, 0.8, 0.99, 1e-6, wd, cls is AdamW))
    # each step moves w by at most ~lr, so the rounding of 20 steps is bounded by |w| + 20 lr
    np.testing.assert_allclose(w.data, expected, rtol=0, atol=1e-13 * (np.abs(w0).max() + 20 * 0.01))
    assert opt.steps == [20]


def test_adam_skips_a_parameter_without_grad_and_keeps_its_own_step():
    a, b = ig.nn.Parameter(np.ones(2)), ig.nn.Parameter(np.ones(2))
    opt = Adam([a, b], lr=0.1)
    a.grad = np.ones(2)
    opt.step()
    b.grad = np.ones(2)
    opt.step()
    assert opt.steps == [2, 1]
    np.testing.assert_allclose(b.data, 1 - 0.1)  # a first step moves every weight by lr * sign(g)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed: the formula tests above stand in for it")
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("cls, tcls", [(Adam, "Adam"), (AdamW, "AdamW")])
def test_adam_equals_torch(cls, tcls, amsgrad):
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((7, 3))
    grads = [rng.standard_normal((7, 3)) * 10.0 ** -k for k in range(5)]
    w = ig.nn.Parameter(w0.copy())
    tw = torch.tensor(w0.copy(), requires_grad=True)
    opt = cls([w], lr=0.01, weight_decay=0.05, amsgrad=amsgrad)
    topt = getattr(torch.optim, tcls)([tw], lr=0.01, weight_decay=0.05, amsgrad=amsgrad)
    for g in grads:
        w.grad, tw.grad = g.copy(), torch.tensor(g.copy())
        opt.step()
        topt.step()
    np.testing.assert_allclose(w.data, tw.detach().numpy(), rtol=0, atol=1e-14)


# ---- the kernel: emulator against the reference -----------------------------------------------
def check_adam_kernel(shapes, dtype, wd, decoupled, amsgrad, version, steps=3):
    rng = np.random.default_rng(7)
    ws = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ms, vs, vms = ([np.zeros(s, dtype) for s in shapes] for _ in range(3))
    ref = [(w.copy(), m.copy(), v.copy(), vm.copy()) for w, m, v, vm in zip(ws, ms, vs, vms)]
    for t in range(1, steps + 1):
        gs = [rng.standard_normal(s).astype(dtype) * 10.0 ** -t for s in shapes]  # shrinking: vmax > v
        adam_kernels.adam_step(ws, gs, ms, vs, t, 0.01, (0.9, 0.999), 1e-8, wd, decoupled, "emu", version=version,
                               max_exp_avg_sqs=vms if amsgrad else None)
        for (w, m, v, vm), g in zip(ref, gs):
            adam_reference(w, g, m, v, t, 0.01, (0.9, 0.999), 1e-8, wd, decoupled, v_max=vm if amsgrad else None)
        for (w, m, v, vm), (kw, km, kv, kvm) in zip(ref, zip(ws, ms, vs, vms)):
            for name, a, b, scale in (("w", kw, w, np.abs(w).sum() + 0.01 * w.size), ("m", km, m, np.abs(m).sum()),
                                      ("v", kv, v, np.abs(v).sum()), ("vmax", kvm, vm, np.abs(vm).sum())):
                assert a.dtype == dtype
                err = np.abs(a.astype(np.float64) - b).sum()
                assert err <= NORM_TOL[np.dtype(dtype)] * max(scale, 1e-30), (name, t, err / scale)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@settings(max_examples=10)
@given(shapes=st.lists(st.sampled_from([(1,), (7,), (4097,), (3, 5), (16, 2, 3, 3)]), min_size=1, max_size=4),
       wd=st.sampled_from([0.0, 1e-2]), decoupled=st.booleans(), amsgrad=st.booleans())
def test_adam_kernel_versions_emu_equal_the_reference(shapes, dtype, wd, decoupled, amsgrad, version):
    check_adam_kernel(shapes, dtype, wd, decoupled, amsgrad, version)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("cls, amsgrad", [(Adam, False), (AdamW, False), (AdamW, True)])
def test_adam_optimizer_on_emu_matches_cpu(cls, amsgrad, version):
    """The optimizer on "emu" (kernel) ends where the CPU's NumPy reference ends, including a
    parameter that never gets a gradient and one that misses the first step (its own step count)."""
    rng = np.random.default_rng(8)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(6, 3, 3, 3), (6,), (4, 6), (5,)]]
    grads = [[rng.standard_normal(w.shape).astype(np.float32) for w in init] for _ in range(3)]
    final = {}
    with use_version(adam=version):
        for dev in ("cpu", "emu"):
            params = [ig.nn.Parameter(w.copy()).to(dev) for w in init]
            opt = cls(params, lr=0.01, weight_decay=1e-2, amsgrad=amsgrad)
            for k, step in enumerate(grads):
                for i, (p, g) in enumerate(zip(params, step)):
                    p.grad = None if i == 3 or (i == 2 and k == 0) else g.copy()
                opt.step()
            final[dev] = [p.numpy() for p in params], opt.state_dict()
    for a, b in zip(final["cpu"][0], final["emu"][0]):
        np.testing.assert_allclose(b, a, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(final["emu"][0][3], init[3])
    assert [int(final["emu"][1][f"step_{i}"]) for i in range(4)] == [3, 3, 2, 0]
    for k, v in final["cpu"][1].items():
        np.testing.assert_allclose(final["emu"][1][k], v, rtol=2e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("version, launches", [(1, 4), (2, 1)])
def test_adam_step_is_one_launch_for_all_parameters(monkeypatch, version, launches):
    calls = []
    real = adam_kernels.get_module

    class Counting:
        def __init__(self, module):
            self.module = module

        def get_function(self, name, *targs):
            fn = self.module.get_function(name, *targs)
            return lambda *args, **kw: (calls.append(name), fn(*args, **kw))

    monkeypatch.setattr(adam_kernels, "get_module", lambda *a: Counting(real(*a)))
    params = [ig.nn.Parameter(np.ones(s, np.float32)).to("emu") for s in [(3, 3), (5000,), (2,), (1,)]]
    opt = AdamW(params)
    for p in params:
        p.grad = np.ones(p.shape, np.float32)
    with use_version(adam=version):
        opt.step()
    assert len(calls) == launches and set(calls) == {("adam_update", "adam_multi_tensor")[version - 1]}


def test_adam_step_rejects_mismatched_arrays():
    w = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"adam_step: exp_avgs\[0\] \(shape \(3, 2\), float32\) must be a C-contiguous "
                                         r"float32 array of weights\[0\]'s shape \(2, 3\)"):
        adam_kernels.adam_step([w], [w.copy()], [np.zeros((3, 2), np.float32)], [w.copy()], 1, 1e-3,
                               (0.9, 0.999), 1e-8, 0, False, "emu")
    with pytest.raises(ValueError, match=r"adam_step: step must be an int >= 1"):
        adam_kernels.adam_step([w], [w.copy()], [w.copy()], [w.copy()], 0, 1e-3, (0.9, 0.999), 1e-8, 0, False, "emu")
    with pytest.raises(ValueError, match=r"adam_step: adam has versions \[1, 2\], not 3"):
        adam_kernels.adam_step([w], [w.copy()], [w.copy()], [w.copy()], 1, 1e-3, (0.9, 0.999), 1e-8, 0, False,
                               "emu", version=3)


def test_adam_versions_are_registered_and_switchable(monkeypatch):
    assert versions.kernels("adam") == [1, 2] and versions.default("adam") == 2
    monkeypatch.setenv(versions.ENV, "adam=1")
    assert versions.selected("adam") == 1


# ---- the kernel compiles for the GPU (static, no GPU needed) ------------------------------------
needs_nvrtc = pytest.mark.skipif(nvrtc.load() is None, reason="libnvrtc not found: pip install "
                                 "nvidia-cuda-nvrtc-cu12 (or a CUDA toolkit) to compile-check kernels")


@needs_nvrtc
@pytest.mark.parametrize("arch", ("compute_80", "compute_90"))
def test_adam_cu_compiles_float_and_double(arch):
    code, names = loader.read_source("adam.cu")
    assert names == ["adam_update", "adam_multi_tensor"]
    exprs = loader.name_expressions("adam.cu", "float") + loader.name_expressions("adam.cu", "double")
    ptx, lowered, log = nvrtc.compile_ptx(code, arch, exprs, "adam.cu")
    assert "warning" not in log.lower(), log
    assert all(lowered[e] in ptx for e in exprs)


@needs_nvrtc
@pytest.mark.skipif(bool(sass.tools_missing("ptxas")), reason=sass.tools_missing("ptxas") or "-")
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=("float", "double"))
def test_adam_cu_registers_spills_stack(dtype):
    res = sass.resources("adam.cu", dtype, "sm_90")
    assert len(res) == 2
    assert all(r.registers <= 64 and not (r.spill_stores or r.spill_loads or r.stack) for r in res.values()), res


def test_hyper_parameters_are_the_bias_corrections():
    h = adam_kernels.hyper_parameters(3, 0.01, (0.9, 0.999), 1e-8, 0.1, True, False, np.float64)
    assert h[4] == pytest.approx(0.01 / (1 - 0.9 ** 3), rel=1e-15)
    assert h[5] == pytest.approx(math.sqrt(1 - 0.999 ** 3), rel=1e-15)
    assert h[7] == pytest.approx(1 - 0.01 * 0.1, rel=1e-15) and (h[8], h[9]) == (1, 0)


@pytest.mark.parametrize("device", ["cpu", "emu"])
@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1), lambda ps: Adam(ps, lr=0.1),
                                  lambda ps: AdamW(ps, lr=0.1, amsgrad=True)])
def test_a_step_counts_as_a_change_of_the_weights_on_every_device(make, device):
    """A graph built before optimizer.step() holds the old weights: backward through it is refused,
    as in PyTorch. Only SGD on the CPU counted it; Adam's in-place update and the kernels on
    cuda/emu did not, so the gradient silently used stale values."""
    w = ig.nn.Parameter(np.ones(3, np.float32), device=device)
    opt = make([w])
    (w * w).sum().backward()
    stale = (w * w).sum()
    opt.step()
    with pytest.raises(RuntimeError, match=r"backward through Mul: its input 0 .* was changed after the "
                                           r"forward pass used it \(version 0 -> 1"):
        stale.backward()
    w.grad = None
    (w * w).sum().backward()  # a graph built after the step is fine
    np.testing.assert_allclose(w.numpy(), w.grad / 2)
