"""The primary conv ladder (group_conv.cu v1, group_conv_v2.cu, group_conv_v3.cu) and the version
switch (kernels/versions.py), whose errors are tested here for every op.

Every version, forward and both gradients, float32 and float64, runs in the CPU emulator against
the float64 NumPy reference with a norm-relative bound (tests/test_kernels_emu.py's check_conv):
hypothesis shapes (groups 1, 2, 3, 4 and C, k 1 and 3, strides 1/2, padding 0..2, odd sizes),
then fixed shapes that the small draws cannot reach: several v3 tiles and partial ones, input
channels staged in several chunks, a group's weights split over several blocks, several groups
per block, the generic (non-specialized) kernels, the ImageNet stem's 7x7 stride 2.
"""
import importlib.util
import os

import numpy as np
import pytest
from hypothesis import given, settings

from igc_np.kernels import conv, interleaved_secondary, permutation, use_version, versions
from igc_np.ops import reference

import strategies

_spec = importlib.util.spec_from_file_location(
    "_kernel_checks_ladder", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_kernels_emu.py"))
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

VERSIONS = sorted(versions.versions("conv2d_forward"))
CONV_OPS = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")


def test_every_conv_op_has_the_same_ladder():
    for op in CONV_OPS:
        assert sorted(versions.versions(op)) == [1, 2, 3]
        assert versions.default(op) == 3  # the fastest (kernel_report's model), validated below


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", checks.DTYPES)
@settings(max_examples=20, **checks.SETTINGS)
@given(case=strategies.conv_cases(max_channels=12, max_size=9))
def test_every_version_matches_the_reference(case, dtype, version):
    checks.check_conv(case, dtype, "emu", version=version)


# (x shape, W shape, stride, padding, groups): what each case reaches in v3 (v1 and v2 run it too)
FIXED = [
    # forward/backward-data: 2 x 5 tiles of 64 x 8 pixels, the last ones partial; bwd-weight 5 x 9 tiles
    ((1, 4, 37, 70), (4, 2, 3, 3), (1, 1), (1, 1), 2),
    # 20 input channels of a group staged in 2 chunks (float64: 3)
    ((1, 40, 20, 60), (4, 20, 3, 3), (1, 1), (1, 1), 2),
    # Cg_out = Cg_in = 16: a group's weights split over several blocks (slots > 256)
    ((2, 32, 9, 9), (32, 16, 3, 3), (1, 1), (1, 1), 2),
    # IGC-L24M2 (CIFAR stage 1 channels): M = 2 per group, several groups per block, several images
    ((3, 48, 10, 12), (48, 2, 3, 3), (1, 1), (1, 1), 24),
    # stride 2 in a transition, odd size, several images per block
    ((5, 12, 17, 13), (12, 3, 3, 3), (2, 2), (1, 1), 4),
    # the ImageNet stem: 7x7 stride 2, padding 3, 3 input channels
    ((2, 3, 23, 21), (8, 3, 7, 7), (2, 2), (3, 3), 1),
    # depthwise 1x1 and 1x1 stride 2 (generic kernel), 5x3 with mixed strides (generic), padding 2
    ((2, 6, 7, 9), (6, 1, 1, 1), (1, 1), (0, 0), 6),
    ((2, 6, 7, 9), (4, 3, 1, 1), (2, 2), (0, 0), 2),
    ((2, 4, 11, 8), (6, 2, 5, 3), (2, 1), (2, 1), 2),
    # CIFAR IGC-L24M8 stage 3 (M = 8 channels a group, 8x8 images; fewer images and groups), and
    # its neighbours: 7x7 (partial tiles, halo past the edge) and 9x9 (a second tile of one column)
    ((3, 48, 8, 8), (48, 8, 3, 3), (1, 1), (1, 1), 6),
    ((2, 24, 7, 7), (24, 8, 3, 3), (1, 1), (1, 1), 3),
    ((2, 24, 9, 9), (24, 8, 3, 3), (1, 1), (1, 1), 3),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", checks.DTYPES)
@pytest.mark.parametrize("case", FIXED, ids=[f"{c[0]}-{c[1]}-s{c[2][0]}{c[2][1]}" for c in FIXED])
def test_fixed_shapes(case, dtype, version):
    if version < 3 and case[0][1] >= 32 and case[0][2] * case[0][3] >= 81 and dtype == np.float64:
        # v1/v2 backward-weight run one block of 256 fibers per weight: ~10 s each in the emulator
        pytest.skip("v1/v2 on the large fixed shapes: float32 covers them")
    checks.check_conv(case, dtype, "emu", version=version)


def test_backward_data_refuses_a_gx_past_int_indexing():
    """The kernels index with int (v3 keeps int offsets into every tensor): a gx of more than
    2^30 elements is refused before it is allocated, naming the op and the shape, even when gy
    (here 1x2 pixels of a 1x1 stride-32768 conv) is small."""
    x_shape = (1, 1, 2**15, 2**15 + 1)
    gy = np.ones((1, 1, 1, 2), np.float32)
    W = np.ones((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"conv2d_backward_data: gx of x shape \(1, 1, 32768, 32769\)"):
        conv.conv2d_backward_data(gy, W, x_shape, (2**15, 2**15), (0, 0), 1, "emu")


def test_v3_weight_gradient_is_deterministic_and_two_pass():
    """The same bits on every run (no atomics), equal to the sum over tiles of pass 1's partials."""
    case = ((5, 12, 17, 13), (12, 3, 3, 3), (1, 1), (1, 1), 4)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(case[0]).astype(np.float32)
    gy = rng.standard_normal((5, 12, 17, 13)).astype(np.float32)
    a = conv.conv2d_backward_weight(x, gy, case[1], *case[2:], "emu", version=3)
    b = conv.conv2d_backward_weight(x, gy, case[1], *case[2:], "emu", version=3)
    np.testing.assert_array_equal(a, b)
    _, ref = reference.conv2d_backward(x.astype(np.float64), np.zeros(case[1]), gy.astype(np.float64), *case[2:])
    checks.assert_norm_close(a, ref, np.float32)


@pytest.mark.parametrize("Cg_in,Cg_out,G,k", [(2, 2, 24, 3), (32, 32, 4, 3), (2, 2, 100, 3), (3, 8, 1, 7),
                                             (1, 1, 64, 3), (16, 16, 2, 3)])
def test_weight_slices_fit_the_block(Cg_in, Cg_out, G, k):
    """The v3 backward-weight slice: slots fit 256 threads, tiles fit 48 KiB, and small groups
    (IGC's M = 2) share a block so most threads work."""
    for itemsize in (4, 8):
        GB, COB, CIB, smem = conv.weight_slices(Cg_in, Cg_out, G, k, k, 1, 1, True, itemsize)
        KWB = k if k <= 3 else 1
        slots = GB * -(-COB // conv.CQ) * CIB * k * (k // KWB)
        assert 1 <= GB <= G and 1 <= COB <= Cg_out and 1 <= CIB <= Cg_in
        assert slots <= conv.V3_WEIGHT_THREADS and smem <= conv.V3_WEIGHT_SMEM
        assert GB == 1 or (COB, CIB) == (Cg_out, Cg_in)  # a block holds whole groups or part of one
        if Cg_in * Cg_out * k <= 16:  # tiny groups: several per block, at least half the threads busy
            assert GB > 1 and slots * min(conv.TH, conv.V3_WEIGHT_THREADS // slots) >= conv.V3_WEIGHT_THREADS // 2


# ---- the switch ----------------------------------------------------------------------------------

@pytest.fixture
def spy(monkeypatch):
    """Record which launcher version runs, for every conv op (the kernels still run)."""
    ran = []
    for table, op in ((conv._FORWARD, "conv2d_forward"), (conv._BACKWARD_DATA, "conv2d_backward_data"),
                      (conv._BACKWARD_WEIGHT, "conv2d_backward_weight")):
        for v, fn in list(table.items()):
            def record(*args, _fn=fn, _v=v, _op=op):
                ran.append((_op, _v))
                return _fn(*args)
            monkeypatch.setitem(table, v, record)
    return ran


def _run_all():
    x, W = np.ones((1, 2, 4, 4)), np.ones((2, 1, 3, 3))
    y = conv.conv2d_forward(x, W, (1, 1), (1, 1), 2, "emu")
    conv.conv2d_backward_data(y, W, x.shape, (1, 1), (1, 1), 2, "emu")
    conv.conv2d_backward_weight(x, y, W.shape, (1, 1), (1, 1), 2, "emu")


def test_default_context_and_environment(spy, monkeypatch):
    monkeypatch.delenv(versions.ENV, raising=False)
    _run_all()
    assert spy == [(op, 3) for op in CONV_OPS]
    spy.clear()
    monkeypatch.setenv(versions.ENV, "conv2d_forward=2, conv2d_backward_weight=1")
    _run_all()
    assert spy == [("conv2d_forward", 2), ("conv2d_backward_data", 3), ("conv2d_backward_weight", 1)]
    spy.clear()
    with use_version(conv2d_forward=1, conv2d_backward_data=2):  # the context wins over the environment
        with use_version(conv2d_forward=3):                       # the innermost context wins
            _run_all()
        _run_all()
    assert spy == [("conv2d_forward", 3), ("conv2d_backward_data", 2), ("conv2d_backward_weight", 1),
                   ("conv2d_forward", 1), ("conv2d_backward_data", 2), ("conv2d_backward_weight", 1)]
    spy.clear()
    monkeypatch.delenv(versions.ENV)
    _run_all()  # the contexts are gone
    assert spy == [(op, 3) for op in CONV_OPS]


def test_version_argument_overrides_the_switch(spy):
    with use_version(conv2d_forward=1):
        conv.conv2d_forward(np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1)), (1, 1), (0, 0), 1, "emu", version=2)
    assert spy == [("conv2d_forward", 2)]


@pytest.mark.parametrize("call,message", [
    (lambda: use_version(conv2d_forward=4).__enter__(), r"use_version: conv2d_forward has versions \[1, 2, 3\], not 4"),
    (lambda: use_version(conv2d_fwd=1).__enter__(), r"use_version: unknown kernel op 'conv2d_fwd'; the ops and their versions are"),
    (lambda: use_version(conv2d_forward="fast").__enter__(),
     r"version of conv2d_forward must be an int, one of \[1, 2, 3\], got 'fast'"),
    (lambda: versions.register("x", {1: "a"}, default=2), r"default version 2 is not one of \[1\]"),
    (lambda: conv.conv2d_forward(np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1)), (1, 1), (0, 0), 1, "emu", version=0),
     r"conv2d_forward: conv2d_forward has versions \[1, 2, 3\], not 0"),
    # the same switch and messages for the other kernels' ops
    (lambda: use_version(sgd=3).__enter__(), r"use_version: sgd has versions \[1, 2\], not 3"),
    (lambda: use_version(sgd="v1").__enter__(),
     r"use_version: version of sgd must be an int, one of \[1, 2\], got 'v1' \(the old name 'v1' is version 1\)"),
    (lambda: use_version(batchnorm=1).__enter__(), r"use_version: unknown kernel op 'batchnorm'; the ops and their versions are "
                                                   r".*batch_norm=1\|2.*sgd=1\|2"),
    (lambda: versions.versions("conv9"), r"versions: unknown kernel op 'conv9'"),
    (lambda: permutation.permute_channels(np.zeros((1, 2, 1, 1)), 1, "emu", version=3),
     r"permute_channels: permute_channels has versions \[0, 1, 2\], not 3"),
    (lambda: interleaved_secondary.interleaved_secondary_forward(np.zeros((1, 2, 1, 1)), np.zeros((2, 1, 1, 1)), 2, 2, "emu",
                                               version=1.5),
     r"interleaved_secondary_forward: interleaved_secondary has versions \[1, 2\], not 1.5"),
])
def test_bad_choices_name_the_op_and_the_versions(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("env,message", [
    ("conv2d_forward", r"\$IGC_NP_KERNELS: 'conv2d_forward' must be op=version"),
    ("conv2d_forward=9", r"\$IGC_NP_KERNELS: conv2d_forward has versions \[1, 2, 3\], not 9"),
    ("nope=1", r"\$IGC_NP_KERNELS: unknown kernel op 'nope'"),
    ("sgd=v7", r"\$IGC_NP_KERNELS: version of sgd must be an int, one of \[1, 2\], got 'v7'"),
    ("sgd=7", r"\$IGC_NP_KERNELS: sgd has versions \[1, 2\], not 7"),
])
def test_bad_environment_is_reported(monkeypatch, env, message):
    monkeypatch.setenv(versions.ENV, env)
    with pytest.raises(ValueError, match=message):
        versions.selected("conv2d_forward")  # a bad entry for any op stops every launch


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_on_the_cupy_standin(version, monkeypatch):
    """Device "cuda" through tests/fake_cupy.py (CuPy's rules, the emulator underneath): the
    launchers allocate the v3 scratch on the device and pass int32 scalars."""
    import fake_cupy
    cp = fake_cupy.install(monkeypatch)
    case = ((2, 12, 9, 7), (12, 3, 3, 3), (1, 1), (1, 1), 4)
    checks.check_conv(case, np.float32, "cuda", to_device=cp.asarray, to_host=cp.asnumpy, version=version)


# ---- benchmarks/kernel_report.py: the model without a GPU -------------------------------------

def _kernel_report():
    from igc_np.kernels import sass
    missing = sass.tools_missing("ptxas", "cuobjdump", "nvdisasm")
    if missing:
        pytest.skip(missing)
    spec = importlib.util.spec_from_file_location(
        "kernel_report", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "kernel_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_occupancy_of_sm90():
    kr = _kernel_report()
    assert kr.occupancy(32, 256, 0) == (1.0, "threads")          # 8 blocks of 256 threads
    assert kr.occupancy(64, 128, 0) == (0.5, "registers")        # 64K / (64 * 128) = 8 blocks
    occ, limit = kr.occupancy(32, 256, 100 * 1024)               # 228 KiB / 101 KiB = 2 blocks
    assert (occ, limit) == (0.25, "shared memory")


def test_roofline_model_ranks_the_ladder():
    """On CIFAR IGC-L24M2 stage 1 (batch 64) the model puts v1's one-block-per-weight gradient at
    ~30x the roofline (the issue's 201 us against 8 us), v2 and v3 each several times faster (v3
    far ahead on the ImageNet IGC-L4M32 layer); the roofline itself is the data's 25 MB at 3.3 TB/s."""
    kr = _kernel_report()
    dims = kr.dims_of(64, 48, 32, 32, 48, groups=24)
    v1, v2, v3 = (kr.roofline("conv2d_backward_weight", v, dims) for v in (1, 2, 3))
    assert v1["roofline_s"] == v3["roofline_s"] == pytest.approx((2 * 64 * 48 * 32 * 32 + 48 * 2 * 9) * 4 / 3.3e12)
    assert 100e-6 < v1["model_s"] < 400e-6 and v1["ratio"] > 10
    assert v1["model_s"] > 3 * v2["model_s"] and v1["model_s"] > 3 * v3["model_s"]
    imagenet = kr.dims_of(256, 128, 56, 56, 128, groups=4)
    m1, m2, m3 = (kr.roofline("conv2d_backward_weight", v, imagenet)["model_s"] for v in (1, 2, 3))
    assert m1 > 20 * m3 and m2 > 3 * m3
    assert len(v3["launches"]) == 2  # pass 1 and the reduction
    assert v3["bytes"] > v1["bytes"]  # the partial sums are written and read once


# The shared-memory term of the model (issue 16) puts v3 forward and backward-data at ~3.0x on the
# compute-heavy ImageNet IGC-L4M32 layer: 6 shared loads (4 x, 2 w) feed 8 FMAs, so a block reads
# shared memory faster than an SM serves it (32 words a clock). A wider register tile would cure it.
KNOWN_SMEM_BOUND = {("ImageNet IGC-L4M32 stage 1", "conv2d_forward"), ("ImageNet IGC-L4M32 stage 1", "conv2d_backward_data")}


def test_kernel_report_prints_every_kernel(capsys):
    kr = _kernel_report()
    kr.main(["--roofline", "--device", "h100"])
    out = capsys.readouterr().out
    for op in CONV_OPS:
        for v in VERSIONS:  # the resources table lists every kernel
            assert f"{op}_v{v}<float" in out or (v == 1 and f"{op}<float>" in out)
    table = out[out.index("Roofline"):]
    rows = [line for line in table.splitlines() if line.startswith(("CIFAR", "ImageNet"))]
    # issue 19: only the defaults unless --all-versions, and the table says what FAIL means
    assert len(rows) == 3 * len(kr.SHAPES) and all("(DEFAULT)" in r for r in rows)
    assert "verdict: PASS = modelled within 3x of the roofline; FAIL = " in table
    assert "H100 SXM (132 SMs, 1.98 GHz, 3.3 TB/s" in table
    # issue 9's target: every default kernel within 3x of its roofline on the five IGC shapes, but
    # for the shared-memory bound pair above, which stays within 3.1x
    failed = {(r[:30].strip(), r[31:55].strip()) for r in rows if "FAIL" in r}
    assert failed <= KNOWN_SMEM_BOUND, table
    for name, N, C, HW, L in kr.SHAPES:
        for op in CONV_OPS:
            r = kr.roofline(op, 3, kr.dims_of(N, C, HW, HW, C, groups=L))
            assert r["ratio"] <= (3.1 if (name, op) in KNOWN_SMEM_BOUND else 3.0), (name, op, r["ratio"])
    kr.main(["--roofline", "--all-versions", "--device", "h200"])
    table = capsys.readouterr().out
    table = table[table.index("Roofline"):]
    assert "H200 (132 SMs, 1.98 GHz, 4.3 TB/s" in table
    rows = [line for line in table.splitlines() if line.startswith(("CIFAR", "ImageNet"))]
    assert len(rows) == sum(len(VERSIONS) for _ in CONV_OPS) * len(kr.SHAPES)


def test_kernel_report_reads_the_gpu_it_runs_on(monkeypatch):
    """With CuPy and a GPU the model takes its figures from the device's attributes (CUDA 13 has no
    clockRate in cudaDeviceProp: attributes), e.g. an H200: 132 SMs, 1.98 GHz, HBM3e at 3.2 GHz x 6144 bits."""
    import sys
    import types
    kr = _kernel_report()
    attrs = {16: 132, 13: 1980000, 36: 3201000, 37: 6144}
    runtime = types.SimpleNamespace(deviceGetAttribute=lambda attr, dev: attrs[attr],
                                    getDeviceProperties=lambda dev: {"name": b"NVIDIA H200"})
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda: types.SimpleNamespace(id=0), runtime=runtime))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    gpu = kr.cupy_device()
    assert gpu["name"] == "NVIDIA H200" and gpu["sms"] == 132 and gpu["clock"] == 1.98e9
    assert gpu["bandwidth"] == pytest.approx(0.9 * 2 * 3.201e9 * 768)  # 4.4 TB/s of the 4.9 nominal
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert kr.cupy_device() is None


def test_kernel_report_marks_an_unlaunchable_plan_fail(monkeypatch, capsys):
    """Before issue 16 the model had no thread limit: the 224-thread v3 plan of IGC-L100M2 read PASS."""
    kr = _kernel_report()

    def pow2_rows(rows, cols, channels, limit=None):  # the old geometry
        tx = min(-(-cols // conv.RW), 16)
        return tx, conv._pow2_at_least(rows, max(1, 128 // tx)), 1
    monkeypatch.setattr(conv, "_tile_block", pow2_rows)
    conv.plan.cache_clear()
    try:
        r = kr.roofline("conv2d_forward", 3, kr.dims_of(256, 200, 56, 56, 200, groups=100))
        assert r["ratio"] == float("inf") and "224 threads exceeds the kernel's limit of 128" in r["unlaunchable"]
        kr.print_roofline(np.float32)
        assert "FAIL (unlaunchable) (DEFAULT)" in capsys.readouterr().out
    finally:
        conv.plan.cache_clear()


def test_the_model_counts_bank_conflicts(monkeypatch):
    """CIFAR stage 1 with the old 34-float pitch: 4-way conflicts, 2.5x the shared-memory time of
    the padded pitch; backward-weight with gy planes 64 words apart: 6-way."""
    kr = _kernel_report()
    dims = kr.dims_of(64, 48, 32, 32, 48, groups=24)
    padded = kr.roofline("conv2d_forward", 3, dims)["launches"][0]
    assert padded["conflict_ways"] == 1
    weight = kr.roofline("conv2d_backward_weight", 3, dims)["launches"][0]
    assert weight["conflict_ways"] == 1
    monkeypatch.setattr(conv, "tile_pitch", lambda row, *a: row)
    monkeypatch.setattr(conv, "GP", conv.TH * conv.TW)
    conv.plan.cache_clear()
    try:
        old = kr.roofline("conv2d_forward", 3, dims)["launches"][0]
        assert old["conflict_ways"] == 4 and old["smem_s"] > 2.5 * padded["smem_s"]
        assert kr.roofline("conv2d_backward_weight", 3, dims)["launches"][0]["conflict_ways"] == 6
    finally:
        conv.plan.cache_clear()
