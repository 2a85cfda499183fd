"""Device "cuda" end to end without a GPU: CuPy replaced by the stand-in of tests/fake_cupy.py.

The stand-in's arrays refuse implicit conversion to NumPy and mixing with numpy.ndarray, as CuPy's
do, and its RawModule runs our .cu kernels in the CPU emulator; so these tests catch the
integration bugs of the GPU path (a NumPy-only call on a device array, a missing .get(), a wrong
kernel argument type) on any machine with g++. The numbers must equal the CPU path's.
"""
import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import igc_np as ig
from igc_np import functional as F

import fake_cupy
from test_devices import tiny_igc_net

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="the stand-in runs the kernels in the emulator, which needs g++")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def cp(monkeypatch):
    """`import cupy` gives the stand-in for the duration of each test."""
    return fake_cupy.install(monkeypatch)


def _load(name, folder="examples"):
    spec = importlib.util.spec_from_file_location(f"standin_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the stand-in itself ------------------------------------------------------------------------
def test_standin_refuses_what_cupy_refuses(cp):
    a = cp.asarray(np.arange(6.0).reshape(2, 3))
    assert ig.backend.cupy_module() is cp and ig.backend.get_array_module("cuda") is cp
    assert not isinstance(a, np.ndarray) and ig.backend.device_of(a) == "cuda"
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.ascontiguousarray(a)
    for mixed in (lambda: a + np.ones(3), lambda: np.ones(3) * a, lambda: a.__setitem__(0, np.ones(3)),
                  lambda: cp.maximum(a, np.zeros(3)), lambda: np.maximum(a, np.zeros(3))):
        with pytest.raises(TypeError, match="numpy.ndarray"):
            mixed()
    # what CuPy allows: scalars, 0-d results, views that write through, explicit .get()
    assert isinstance(a.sum(), cp.ndarray) and float(a.sum()) == 15.0 and int(a[1, 2]) == 5
    b = cp.zeros((2, 3))
    b[:, 1:][...] += 2.0 * a[:, :2]
    np.testing.assert_array_equal(b.get(), [[0, 0, 2], [0, 6, 8]])
    host = np.ones(2)
    dev = cp.asarray(host)
    dev += 1  # device memory is a copy
    assert host[0] == 1 and isinstance(np.float32(2) * dev, cp.ndarray)


def test_kernel_launch_checks_its_arguments(cp):
    from igc_np.kernels import get_module
    fn = get_module("permutation.cu", np.float32, "cuda").get_function("permute_channels")
    x = cp.asarray(np.arange(8, dtype=np.float32).reshape(1, 4, 1, 2))
    y = cp.empty_like(x)
    i32 = np.int32
    fn((1,), (32,), (x, y, i32(1), i32(4), i32(2), i32(2)))
    np.testing.assert_array_equal(y.get().ravel(), [0, 1, 4, 5, 2, 3, 6, 7])
    with pytest.raises(TypeError, match="numpy.ndarray"):
        fn((1,), (32,), (x, y.get(), i32(1), i32(4), i32(2), i32(2)))
    with pytest.raises(TypeError, match="int64"):  # a Python int goes to CuPy as a 64-bit int
        fn((1,), (32,), (x, y, 1, i32(4), i32(2), i32(2)))


# ---- (1) a whole network: forward, backward, SGD step ------------------------------------------
def test_network_step_matches_cpu(cp):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 9, 9)).astype(np.float32)
    labels = np.array([0, 3, 4])
    results = {}
    before = fake_cupy.launches()
    for dev in ("cpu", "cuda"):
        net = tiny_igc_net().to(dev)
        opt = ig.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(2):  # two steps: the second uses the momentum held on the device
            opt.zero_grad()
            loss = F.cross_entropy(net(ig.Tensor(x, device=dev)), labels)
            loss.backward()
            opt.step()
        if dev == "cuda":
            assert fake_cupy.launches() - before >= 2 * 7  # conv, interleaved: forward and backward
            assert all(isinstance(p.data, cp.ndarray) and isinstance(p.grad, cp.ndarray)
                       for p in net.parameters())
            assert all(isinstance(v, cp.ndarray) for v in opt.velocity)
        grads = {n: ig.backend.to_device(p.grad, "cpu") for n, p in net.named_parameters()}
        results[dev] = loss.item(), grads, net.state_dict()
    (l0, g0, s0), (l1, g1, s1) = results["cpu"], results["cuda"]
    assert abs(l0 - l1) < 1e-5
    for n in g0:
        np.testing.assert_allclose(g1[n], g0[n], rtol=1e-4, atol=1e-5, err_msg=n)
    for n in s0:
        np.testing.assert_allclose(s1[n], s0[n], rtol=1e-4, atol=1e-5, err_msg=n)


# ---- (2) gradient checks of every op on "cuda" ---------------------------------------------------
def _t(rng, *shape):
    return ig.Tensor(rng.standard_normal(shape), requires_grad=True).to("cuda")


def test_gradcheck_conv_permutation_interleaved(cp):
    rng = np.random.default_rng(2)
    x, W, W2 = _t(rng, 2, 6, 5, 5), _t(rng, 6, 3, 3, 3), _t(rng, 6, 2, 1, 1)
    assert ig.gradcheck(lambda x, W: F.conv2d(x, W, stride=2, padding=1, groups=2), [x, W])
    assert ig.gradcheck(lambda x, W: F.conv2d(x, W, stride=1, padding=1, groups=2), [x, W])
    assert ig.gradcheck(lambda x: F.permute_channels(x, 3), [x])
    assert ig.gradcheck(lambda x, W2: F.interleaved_secondary(x, W2, 2), [x, W2])


def test_gradcheck_batch_norm_pooling_linear_loss(cp):
    rng = np.random.default_rng(3)
    x, gamma, beta = _t(rng, 3, 4, 5, 5), _t(rng, 4), _t(rng, 4)
    mean, var = cp.zeros(4), cp.ones(4)
    assert ig.gradcheck(lambda x, g, b: F.batch_norm(x, g, b, mean, var, training=True), [x, gamma, beta])
    assert isinstance(mean, cp.ndarray) and float(abs(mean).sum()) > 0  # updated in place, on the device
    assert ig.gradcheck(lambda x, g, b: F.batch_norm(x, g, b, mean, var, training=False), [x, gamma, beta])
    assert ig.gradcheck(lambda x: F.max_pool2d(x, 3, 2, 1), [x])
    assert ig.gradcheck(lambda x: F.avg_pool2d(x, 3, 2, 1), [x])
    assert ig.gradcheck(lambda x: F.relu(F.global_avg_pool2d(x)), [x])
    h, Wl, bl = _t(rng, 4, 6), _t(rng, 3, 6), _t(rng, 3)
    assert ig.gradcheck(lambda h, W, b: F.linear(h, W, b), [h, Wl, bl])
    assert ig.gradcheck(lambda h, W: F.linear(h, W), [h, Wl])
    labels = np.array([0, 2, 1, 2])
    assert ig.gradcheck(lambda h: F.cross_entropy(h, labels), [h])
    assert ig.gradcheck(lambda h: F.cross_entropy(h, ig.Tensor(labels, device="cuda")), [h])


def test_gradcheck_tensor_arithmetic(cp):
    rng = np.random.default_rng(4)
    a, b, c = _t(rng, 3, 4), _t(rng, 4), _t(rng, 4, 2)
    assert ig.gradcheck(lambda a, b: (a + b) * a - b / (a * a + 1.0), [a, b])
    assert ig.gradcheck(lambda a: (a * a + 1.0).log() + (-a).exp() + a ** 3, [a])
    assert ig.gradcheck(lambda a, c: (a @ c).sum(axis=0) + a.mean(axis=1, keepdims=True).T.reshape(3).sum(), [a, c])
    assert ig.gradcheck(lambda a: 2.0 - a.transpose(1, 0) + np.float64(0.5) * a.T, [a])


def test_four_branch_form_on_cuda(cp):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 5, 5))
    W = rng.standard_normal((6, 4, 3, 3))
    from igc_np import igc
    y = igc.four_branch_conv(ig.Tensor(x, device="cuda"), W, 2)
    assert isinstance(y.data, cp.ndarray)
    np.testing.assert_allclose(y.numpy(), F.conv2d(ig.Tensor(x), ig.Tensor(W), padding=1).numpy(),
                               rtol=1e-10, atol=1e-10)


# ---- (3) state on and off the device -------------------------------------------------------------
def test_state_dict_round_trip_on_cuda(cp):
    net = tiny_igc_net().to("cuda")
    net(ig.Tensor(np.ones((2, 3, 9, 9), np.float32), device="cuda"))  # moves the BN statistics
    state = net.state_dict()
    assert state and all(type(v) is np.ndarray for v in state.values())
    other = tiny_igc_net().to("cuda")
    other.load_state_dict({k: v + 1 for k, v in state.items()})
    for _, m, key in other.named_buffers():
        assert isinstance(getattr(m, key), cp.ndarray)
    assert all(isinstance(p.data, cp.ndarray) for p in other.parameters())
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, state[k] + 1, err_msg=k)
    back = other.to("cpu").state_dict()
    assert all(np.array_equal(back[k], state[k] + 1) for k in state)
    opt = ig.optim.SGD(net.parameters(), lr=0.1)
    F.cross_entropy(net(ig.Tensor(np.ones((2, 3, 9, 9), np.float32), device="cuda")), np.array([1, 2])).backward()
    opt.step()
    saved = opt.state_dict()
    opt2 = ig.optim.SGD(net.parameters(), lr=0.5)
    opt2.load_state_dict(saved)
    assert all(isinstance(v, cp.ndarray) for v in opt2.velocity)
    for a, b in zip(opt.velocity, opt2.velocity):
        np.testing.assert_array_equal(a.get(), b.get())


def test_load_state_dict_accepts_device_arrays(cp):
    a, b = ig.nn.Linear(3, 2, rng=np.random.default_rng(0)).to("cuda"), ig.nn.Linear(3, 2).to("cuda")
    b.load_state_dict({n: p.data for n, p in a.named_parameters()})
    np.testing.assert_array_equal(b.weight.numpy(), a.weight.numpy())


# ---- (4) the trainer and the evaluator --------------------------------------------------------------
def test_trainer_and_evaluator_on_cuda(cp, tmp_path, capsys):
    trainer, evaluator = _load("cifar10_igc"), _load("evaluate")
    for dev in ("cuda", "cpu"):
        assert trainer.main(["--device", dev, "--dataset", "digits", "--subset", "128",
                             "--num-epochs", "1", "--output-dir", str(tmp_path / dev)]) == 0
    ckpt = tmp_path / "cuda" / "model-0001.npz"
    assert ckpt.is_file() and (tmp_path / "cuda" / "log.jsonl").is_file()
    with np.load(ckpt) as z_cuda, np.load(tmp_path / "cpu" / "model-0001.npz") as z_cpu:
        keys = [k for k in z_cpu.files if k.startswith(("model/", "optimizer/"))]
        assert keys and sorted(keys) == sorted(k for k in z_cuda.files if k.startswith(("model/", "optimizer/")))
        for k in keys:  # one epoch of training on "cuda" ends where the CPU's does
            np.testing.assert_allclose(z_cuda[k], z_cpu[k], rtol=1e-3, atol=1e-5, err_msg=k)
    assert evaluator.main(["--checkpoint", str(ckpt), "--device", "cuda"]) == 0
    assert evaluator.main(["--checkpoint", str(ckpt), "--device", "cuda", "--gpus", "0"]) == 0
    text = capsys.readouterr().out
    cuda_line = [line for line in text.splitlines() if line.startswith("Test digits")][-1]
    assert evaluator.main(["--checkpoint", str(ckpt), "--device", "cpu"]) == 0
    cpu_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Test digits")][-1]
    assert cuda_line == cpu_line  # same loss and accuracy to the printed digits


# ---- (5) a network of the zoo ---------------------------------------------------------------------
def test_resnet_igc_forward_backward_on_cuda(cp):
    x = np.random.default_rng(5).standard_normal((4, 3, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    losses, grads = {}, {}
    for dev in ("cpu", "cuda"):
        net = ig.nets.get_network("resnet_igc", 8, num_classes=4, primary_partition=2,
                                  secondary_partition=2, rng=0).to(dev)
        loss = F.cross_entropy(net(ig.Tensor(x, device=dev)), labels)
        loss.backward()
        losses[dev] = loss.item()
        grads[dev] = {n: p.numpy() if p.grad is None else ig.backend.to_device(p.grad, "cpu")
                      for n, p in net.named_parameters()}
    assert abs(losses["cpu"] - losses["cuda"]) < 1e-5
    for n in grads["cpu"]:
        np.testing.assert_allclose(grads["cuda"][n], grads["cpu"][n], rtol=1e-4, atol=1e-5, err_msg=n)


# ---- (6) launches and host syncs of one training step ------------------------------------------------
def test_training_step_has_no_host_sync(cp, bench):
    """One resnet_igc-20 L24M2 SGD step (batch 8; 8x8 images keep the emulator quick: the ops, so
    the syncs, are those of 32x32) reads nothing back from the device."""
    counts = bench.count_launches(8, size=8, fake=fake_cupy)
    assert counts["syncs"] == 0, f"{counts['syncs']} device->host syncs in one step: {fake_cupy.sync_sites}"


def test_training_step_launches(cp, bench, capsys):
    """Fused BN+ReLU(+add) and the multi-tensor SGD: about 260 launches per step (1,437 before)."""
    counts = bench.count_launches(2, size=4, fake=fake_cupy)
    assert counts["launches"] <= 300, counts
    assert counts["kernels"] >= 200  # our kernels do the work: conv, secondary, BN, SGD
    assert capsys.readouterr().out.startswith(f"launches/step {counts['launches']}, host syncs/step ")


# ---- the GPU benchmark (our kernels' half; no cuDNN here) ----------------------------------------
@pytest.fixture
def bench(monkeypatch):
    bench = _load("bench_gpu", "benchmarks")
    # two small IGC convs (name, N, C, H=W, L) instead of kernel_report's shapes: the emulator is slow
    monkeypatch.setattr(bench, "SHAPES", [("tiny L2M4", 2, 8, 6, 2), ("tiny L4M2", 1, 8, 5, 4)])
    monkeypatch.setattr(bench, "find_cudnn", lambda: (None, "no PyTorch with CUDA here"))
    return bench


def test_gpu_benchmark_runs_every_version_on_cuda(cp, bench, capsys):
    bench.main(["--batch", "2", "--loop", "2", "--repeat", "1", "--dtype", "float64"])
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith("GPU: fake_cupy") and "NO cuDNN REFERENCE: no PyTorch with CUDA here" in captured.err
    assert out.count("secondary bwd-weight") == 2 * len(bench.versions.kernels("interleaved_secondary")) == 2 * 2
    assert out.count("primary bwd-weight") == 2 * 3 and out.count("bn+relu fwd") == 2 * 2
    assert out.count("permutation") == 2 * 2 and out.count("sgd step") == len(bench.versions.kernels("sgd")) == 2


def test_gpu_benchmark_default_float32(cp, bench, tmp_path):
    import json
    bench.main(["--loop", "1", "--repeat", "1", "--cases", "1", "--json", str(tmp_path / "r.json")])
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert {r["op"] for r in results} >= {"primary fwd", "secondary fwd", "bn+relu bwd", "sgd step"}
    assert all(r["rel_err"] < 1e-4 for r in results if "rel_err" in r)
    assert {r.get("case") for r in results} == {"tiny L2M4", "resnet_igc-20 L24M2"}  # --cases 1
    assert {r["batch"] for r in results if "batch" in r} == {2}  # the shape's N without --batch


def test_gpu_benchmark_roofline_models_each_primary_timing(cp, bench, capsys):
    """--roofline: every primary conv row (op x kernel version) beside kernel_report's model of
    the same launch; the model's numbers are those of kernel_report.roofline for the shape."""
    from igc_np.kernels import sass
    missing = sass.tools_missing("ptxas", "cuobjdump", "nvdisasm")
    if missing:
        pytest.skip(missing)
    results = bench.main(["--loop", "1", "--repeat", "1", "--cases", "1", "--roofline"])
    out = capsys.readouterr().out.split("measured vs kernel_report.py's model")[1]
    modelled = [r for r in results if "model_us" in r]
    assert len(modelled) == 3 * len(bench.versions.kernels("conv2d_forward")) == 9
    dims = bench.kernel_report.dims_of(2, 8, 6, 6, 8, groups=2)
    for r in modelled:
        m = bench.kernel_report.roofline(bench.PRIMARY_OPS[r["op"]], r["version"], dims)
        assert r["model_us"] == pytest.approx(m["model_s"] * 1e6) and r["roofline_us"] > 0
    assert out.count("tiny L2M4") == 9


@pytest.mark.parametrize("version,kernels", [(2, 1), (1, 5)])
def test_sgd_step_is_one_launch_on_cuda(cp, version, kernels):
    """The optimizer step on "cuda": v2 one multi-tensor launch (v1 one per parameter), no array
    op, no sync; the address table is the one host->device copy."""
    net = tiny_igc_net().to("cuda")
    params = [p for p in net.parameters() if p.ndim > 1][:5]
    opt = ig.optim.SGD(params, lr=0.1)
    for p in params:
        p.grad = cp.ones(p.shape, p.dtype)
    opt.step()  # the first step also allocates the velocities (one zero buffer)
    fake_cupy.reset_counts()
    with ig.kernels.use_version(sgd=version):
        opt.step()
    assert fake_cupy.counts() == dict(kernels=kernels, array_ops=0, syncs=0, to_device=int(version == 2),
                                      launches=kernels)


def test_standin_counts_launches_and_syncs(cp):
    a = cp.asarray(np.arange(12.0).reshape(3, 4))
    fake_cupy.reset_counts()
    b = a.T.reshape(12)       # a copy: the transposed view is not contiguous
    c = a.reshape(4, 3)[1:]   # views: no launch
    d = (a * 2 + 1).sum(axis=0)
    assert fake_cupy.counts()["array_ops"] == 4 and fake_cupy.counts()["syncs"] == 0
    assert b.shape == (12,) and c.shape == (3, 3) and d.shape == (4,)
    float(d[0])
    a[a > 3]
    d.get()
    counts = fake_cupy.counts()
    assert counts["syncs"] == 3 and [w for w, _ in fake_cupy.sync_sites] == \
        ["float()", "boolean-mask indexing", ".get()"]
    assert fake_cupy.sync_sites[0][1].endswith(f"test_cuda_standin.py:{_line_of('float(d[0])')}")


def _line_of(text):
    lines = Path(__file__).read_text().splitlines()
    return next(i + 1 for i, line in enumerate(lines) if line.strip() == text)


# ---- the stand-in's kernel API is CuPy 14.2's ------------------------------------------------------
# CuPy's classes are Cython: inspect.signature fails on them, but the first line of each
# docstring is the signature Cython embeds (cupy/_core/raw.pyx). These are CuPy 14.2.0's,
# read from the installed package; the test below checks them again where cupy imports.
CUPY_SIGNATURES = {
    "RawModule": "RawModule(str code=None, *, str path=None, tuple options=(), str backend='nvrtc', "
                 "bool translate_cucomplex=False, bool enable_cooperative_groups=False, name_expressions=None, "
                 "jitify=None)",
    "RawModule.get_function": "RawModule.get_function(self, str name)",
    "RawKernel.__call__": "__call__(self, grid, block, args, *, shared_mem=0)",
}


def _plain(cython_signature):
    """'RawModule(str code=None, *, tuple options=())' -> '(code=None, *, options=())'."""
    params = cython_signature[cython_signature.index("(") + 1:cython_signature.rindex(")")]
    out = [re.sub(r"^(str|tuple|bool|int)\s+", "", p.strip()) for p in params.split(",")]
    return "(" + ", ".join(p for p in out if p != "self") + ")"


def test_standin_signatures_are_cupys(cp):
    import inspect
    ours = {"RawModule": inspect.signature(cp.RawModule),
            "RawModule.get_function": inspect.signature(cp.RawModule.get_function),
            "RawKernel.__call__": inspect.signature(fake_cupy._RawKernel.__call__)}
    for name, theirs in CUPY_SIGNATURES.items():
        mine = str(ours[name]).replace("'", "").replace('"', "")
        assert mine.replace("(self, ", "(") == _plain(theirs).replace("'", ""), name


def test_signatures_recorded_above_are_the_installed_cupys():
    """Where the real CuPy imports (no GPU needed to import it), its embedded signatures are the
    ones the stand-in copies."""
    import subprocess
    import sys
    code = ("import cupy; print(cupy.__version__); print(cupy.RawModule.__doc__.splitlines()[0]); "
            "print(cupy.RawModule.get_function.__doc__.splitlines()[0]); "
            "print(cupy.RawKernel.__call__.__doc__.splitlines()[2])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"the real cupy does not import here: {proc.stderr.strip().splitlines()[-1:]}")
    version, module, get_function, call = proc.stdout.splitlines()[:4]
    if not version.startswith("14."):
        pytest.skip(f"cupy {version} is installed, the stand-in copies 14.2")
    assert module == CUPY_SIGNATURES["RawModule"]
    assert get_function == CUPY_SIGNATURES["RawModule.get_function"]
    assert call.replace("\\*", "*") == CUPY_SIGNATURES["RawKernel.__call__"]


LAUNCH_BOUNDED = r"""
template <typename T>
__global__ void __launch_bounds__(128) scale(T* y, T a, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] *= a;
}
"""


def test_standin_refuses_what_a_gpu_refuses(cp):
    from igc_np.emu import LaunchLimitError
    fn = cp.RawModule(code=LAUNCH_BOUNDED, options=("-std=c++14",), name_expressions=["scale<float>"]) \
        .get_function("scale<float>")
    assert fn.max_threads_per_block == 128 and fn.shared_size_bytes == 0
    assert fn.max_dynamic_shared_size_bytes == 48 * 1024
    y = cp.ones(300, dtype=cp.float32)
    fn((3,), (128,), (y, np.float32(2), np.int32(300)))
    assert float(y.sum()) == 600
    with pytest.raises(LaunchLimitError, match=r"scale<float>.*224 threads per block, over the 128 of its "
                                               r"__launch_bounds__\(128\)"):
        fn((2,), (224,), (y, np.float32(2), np.int32(300)))
    with pytest.raises(LaunchLimitError, match="over the 48 KB"):
        fn((3,), (128,), (y, np.float32(2), np.int32(300)), shared_mem=48 * 1024 + 1)
    fn.max_dynamic_shared_size_bytes = 64 * 1024  # the opt-in, as on CuPy's RawKernel
    fn((3,), (128,), (y, np.float32(2), np.int32(300)), shared_mem=64 * 1024)
    with pytest.raises(LaunchLimitError, match="at most 232448"):
        fn.max_dynamic_shared_size_bytes = 300 * 1024
    with pytest.raises(TypeError, match="positional"):
        fn((3,), (128,), (y, np.float32(2), np.int32(300)), 0)
    with pytest.raises(TypeError, match="int64"):  # a Python bool goes to CuPy as a 64-bit int
        fn((3,), (128,), (y, np.float32(2), True))
