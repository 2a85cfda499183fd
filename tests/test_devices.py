"""The whole engine on other devices: 'emu' (our CUDA kernels run on the CPU by the emulator) always,
'cuda' (CuPy on a GPU) when one is present. Same network, same code; results equal the CPU's."""
import numpy as np
import pytest

import igc_np as ig
from igc_np import functional as F

DEVICES = ["emu", pytest.param("cuda", marks=pytest.mark.skipif(
    not ig.cuda_available(), reason=str(ig.backend.cuda_unavailable_reason())))]


def tiny_igc_net():
    """Stem conv, an IGC block with a stride-2 IGC conv, a group-conv shortcut, pooling, FC."""
    rng = np.random.default_rng(0)
    return ig.nn.Sequential(
        ig.nn.Conv2d(3, 8, 3, padding=1, rng=rng), ig.nn.BatchNorm2d(8), ig.nn.ReLU(),
        ig.nn.IGCConv(8, 16, L=4, S=4, stride=2, rng=rng), ig.nn.BatchNorm2d(16), ig.nn.ReLU(),
        ig.nn.IGCConv(16, 16, L=4, S=2, rng=rng), ig.nn.BatchNorm2d(16), ig.nn.ReLU(),
        ig.nn.MaxPool2d(3, 2, 1), ig.nn.GlobalAvgPool2d(), ig.nn.Linear(16, 5, rng=rng))


@pytest.mark.parametrize("device", DEVICES)
def test_network_forward_backward_and_step_match_cpu(device):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 9, 9)).astype(np.float32)
    labels = np.array([0, 3, 4])
    results = {}
    for dev in ("cpu", device):
        net = tiny_igc_net().to(dev)
        opt = ig.optim.SGD(net.parameters(), lr=0.1)
        loss = F.cross_entropy(net(ig.Tensor(x, device=dev)), labels)
        loss.backward()
        grads = {n: ig.backend.to_device(p.grad, "cpu") for n, p in net.named_parameters()}
        opt.step()
        results[dev] = loss.item(), grads, net.state_dict()
    (l0, g0, s0), (l1, g1, s1) = results["cpu"], results[device]
    assert abs(l0 - l1) < 1e-5
    for n in g0:
        np.testing.assert_allclose(g1[n], g0[n], rtol=1e-4, atol=1e-5, err_msg=n)
    for n in s0:
        np.testing.assert_allclose(s1[n], s0[n], rtol=1e-4, atol=1e-5, err_msg=n)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_on_device(device):
    rng = np.random.default_rng(2)
    x = ig.Tensor(rng.standard_normal((2, 6, 5, 5)), requires_grad=True).to(device)
    W = ig.Tensor(rng.standard_normal((6, 3, 3, 3)), requires_grad=True).to(device)
    W2 = ig.Tensor(rng.standard_normal((6, 2, 1, 1)), requires_grad=True).to(device)
    assert ig.gradcheck(lambda x, W: F.conv2d(x, W, stride=2, padding=1, groups=2), [x, W])
    assert ig.gradcheck(lambda x: F.permute_channels(x, 3), [x])
    assert ig.gradcheck(lambda x, W2: F.interleaved_secondary(x, W2, 2), [x, W2])


def test_tensor_to_and_back_keeps_values():
    a = np.arange(6.0).reshape(2, 3)
    t = ig.Tensor(a, requires_grad=True).to("emu")
    assert t.device == "emu" and t.requires_grad
    np.testing.assert_array_equal(t.to("cpu").numpy(), a)


def test_cuda_without_gpu_is_a_clear_error():
    if ig.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="device 'cuda'"):
        ig.Tensor(np.ones(2)).to("cuda")
    assert ig.backend.cuda_unavailable_reason().startswith("device 'cuda' is unusable: ")


def test_cuda_probe_reports_a_failing_compile(monkeypatch):
    """CuPy imports and sees a GPU but cannot compile (no NVRTC or no CUDA headers): unavailable,
    with CuPy's message in the reason, instead of every GPU test erroring at its first kernel."""
    import sys
    import types

    def no_headers(*args, **kwargs):
        raise RuntimeError("Failed to find CUDA headers")
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)),
                                 zeros=lambda n, dtype: None, float32=np.float32, RawModule=no_headers)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(ig.backend, "_cupy", None)
    monkeypatch.setattr(ig.backend, "_cuda_status", None)
    assert not ig.cuda_available()
    assert ig.backend.cuda_unavailable_reason() == \
        "device 'cuda' is unusable: RuntimeError: Failed to find CUDA headers"
