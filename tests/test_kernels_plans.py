"""Launch plans: every plan obeys a GPU's limits where it is made (kernels/launch.py), the v3 tile
geometry stays under the kernels' __launch_bounds__ (issue 16, bug 1), the tile constants come from
the .cu files, plans are cached, the staged tiles avoid bank conflicts, and $IGC_NP_KERNELS is
checked at start. No launch, no compiler: these run everywhere."""
import os
import subprocess
import sys

import numpy as np
import pytest

from igc_np.kernels import conv, interleaved_secondary, launch, loader, versions
from igc_np.kernels.launch import Launch, LaunchPlanError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dims_of(N, C_in, H, W, C_out, k=3, stride=1, padding=1, groups=1):
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    return (N, C_in, H, W, C_out, k, k, stride, stride, padding, padding, groups, Ho, Wo)


# ---- bug 1: v3 blocks over the kernels' 128-thread __launch_bounds__ -------------------------------

@pytest.mark.parametrize("HW", [56, 28])
def test_igc_l100m2_v3_plans_obey_the_launch_bounds(HW):
    """IGC-L100M2 stage 1 (56x56, M = 2) and stage 2 (28x28): _tile_block made 14x16 and 7x32
    blocks (224 threads) for kernels compiled with __launch_bounds__(128); a GPU refuses them."""
    dims = dims_of(256, 200, HW, HW, 200, groups=100)
    for op in ("conv2d_forward", "conv2d_backward_data"):
        (L,) = conv.plan(op, 3, dims, 4)
        assert L.threads <= 128 == launch.thread_limit(L.file, L.kernel), (op, L.block)
        assert L.block[0] * conv.RW >= HW or L.grid[2] > 1


def test_tile_block_never_exceeds_the_limit():
    for rows in range(1, 70):
        for cols in (1, 3, 7, 28, 32, 56, 64, 70):
            for channels in (1, 2, 3, 8, 64):
                tx, ty, tz = conv._tile_block(rows, cols, channels)
                assert tx * ty * tz <= conv.V3_THREADS, (rows, cols, channels, (tx, ty, tz))
                assert ty <= rows


def test_tile_constants_are_read_from_the_cu_file():
    d = loader.defines("group_conv_v3.cu")
    assert (conv.RW, conv.CQ, conv.TH, conv.TW, conv.GP) == (d["IGC_RW"], d["IGC_CQ"], d["IGC_TH"], d["IGC_TW"],
                                                         d["IGC_TH"] * d["IGC_TW"] + 1)
    bounds = loader.launch_bounds("group_conv_v3.cu")
    assert (conv.V3_THREADS, conv.V3_WEIGHT_THREADS) == (bounds["conv2d_forward_v3"], bounds["conv2d_backward_weight_v3"])
    assert bounds["conv2d_backward_weight_v3_reduce"] == 1024  # no __launch_bounds__: the GPU maximum
    assert loader.launch_bounds("interleaved_secondary.cu")["interleaved_secondary_forward_tiled"] == interleaved_secondary.TILE_THREADS


def test_launch_bounds_and_static_shared_memory_of_a_kernel_file(tmp_path, monkeypatch):
    (tmp_path / "k.cu").write_text(
        "#define K_THREADS 96\n#define K_BOUNDS __launch_bounds__(K_THREADS, 2)\n#define K_ROWS (2 * 4 + 1)\n"
        "template <typename T> __device__ void helper(T* a) { __shared__ T buf[K_ROWS][8]; a[0] = buf[0][0]; }\n"
        "template <typename T>\n__global__ void K_BOUNDS f(T* a) { __shared__ int idx[4]; helper(a); }\n"
        "template <typename T>\n__global__ void g(T* a) { extern __shared__ unsigned char raw[]; }\n")
    monkeypatch.setattr(loader, "KERNEL_DIR", str(tmp_path))
    assert loader.launch_bounds("k.cu") == {"f": 96, "g": 1024}
    assert loader.static_shared("k.cu", 8) == {"f": 16 + 9 * 8 * 8, "g": 0}


# ---- every plan is checked where it is made -------------------------------------------------------

@pytest.mark.parametrize("plan, message", [
    (Launch("group_conv_v3.cu", "conv2d_forward_v3", (3, 3, 1, 1), (1, 1, 1), (14, 16, 1)),
     r"224 threads exceeds the kernel's limit of 128 \(__launch_bounds__\)"),
    (Launch("permutation.cu", "permute_channels", (), (1,), (2048,)), r"2048 threads exceeds the kernel's limit of 1024"),
    (Launch("permutation.cu", "permute_channels", (), (1, 65536), (32,)), r"grid dimension y = 65536 exceeds 65535"),
    (Launch("permutation.cu", "permute_channels", (), (2**31,), (32,)), r"grid dimension x = 2147483648 exceeds"),
    (Launch("permutation.cu", "permute_channels", (), (1,), (1, 1, 65)), r"block dimension z = 65 exceeds 64"),
    (Launch("group_conv_v3.cu", "conv2d_forward_v3", (3, 3, 1, 1), (1,), (32,), 48 * 1024 + 4),
     r"0 static \+ 49156 dynamic = 49156 bytes exceeds 49152"),
    (Launch("batch_norm.cu", "bn_stats", (), (1,), (256,), 48 * 1024 - 16),
     r"1024 static \+ 49136 dynamic"),  # float: BN_THREADS floats of static shared memory
])
def test_check_refuses_what_a_gpu_refuses(plan, message):
    with pytest.raises(LaunchPlanError, match=message) as e:
        launch.check(plan, 4, "conv2d_forward v3 (x shape (1, 2, 3, 4))")
    assert "conv2d_forward v3 (x shape (1, 2, 3, 4))" in str(e.value) and plan.kernel in str(e.value)


def test_a_bad_plan_fails_in_the_planner_with_its_shape(monkeypatch):
    """The planner checks what it makes: with the old power-of-two rows the 56x56 plan is refused
    on the CPU, naming the op and the shapes, before any launch."""
    def pow2_rows(rows, cols, channels, limit=None):
        tx = min(-(-cols // conv.RW), 16)
        return tx, conv._pow2_at_least(rows, max(1, 128 // tx)), 1
    monkeypatch.setattr(conv, "_tile_block", pow2_rows)
    conv.plan.cache_clear()
    try:
        with pytest.raises(LaunchPlanError, match=r"conv2d_forward v3 \(x shape \(2, 200, 56, 56\), "
                                                  r"W shape \(200, 2, 3, 3\).*groups 100\).*224 threads"):
            conv.plan("conv2d_forward", 3, dims_of(2, 200, 56, 56, 200, groups=100), 4)
    finally:
        conv.plan.cache_clear()


def test_plans_are_cached_by_shape():
    conv.plan.cache_clear()
    dims = dims_of(64, 48, 32, 32, 48, groups=24)
    first = conv.plan("conv2d_backward_weight", 3, tuple(np.int32(d) for d in dims), 4)
    assert conv.plan("conv2d_backward_weight", 3, dims, 4) is first
    assert conv.plan.cache_info().hits == 1


# ---- speed hazards: bank conflicts of the staged tiles ---------------------------------------------

def test_conflict_model():
    assert launch.conflict_ways(list(range(32)), 4) == 1
    assert launch.conflict_ways([0] * 32, 4) == 1              # one address: a broadcast
    assert launch.conflict_ways([32 * t for t in range(32)], 4) == 32
    assert launch.conflict_ways(list(range(32)), 8) == 2       # doubles: two passes of 16 threads


@pytest.mark.parametrize("N, C, HW, L", [(64, 48, 32, 32), (64, 96, 16, 24), (256, 200, 56, 100), (256, 128, 56, 4)])
@pytest.mark.parametrize("op", ["conv2d_forward", "conv2d_backward_data"])
def test_v3_tile_rows_are_padded_against_bank_conflicts(N, C, HW, L, op):
    """CIFAR stage 1's x tile rows were 34 floats apart: a warp of 8 x 4 threads hit one bank 4 times."""
    (P,) = conv.plan(op, 3, dims_of(N, C, HW, HW, C, groups=L), 4)
    XP = P.extra[1]
    assert launch.conflict_ways(conv.tile_read_addresses(P.block, XP), 4) == 1, (P.block, XP)
    if (N, C, HW) == (64, 48, 32):
        assert launch.conflict_ways(conv.tile_read_addresses(P.block, 34), 4) == 4  # the old pitch


def test_v3_weight_gy_planes_are_65_words_apart():
    """Backward-weight threads of a warp read CQ planes of several slots at one pixel: 64 words
    apart they share a bank."""
    assert conv.GP == 65
    planes = [p * 64 for p in range(6)]
    assert launch.conflict_ways(planes, 4) == 6 and launch.conflict_ways([p * conv.GP for p in range(6)], 4) == 1


# ---- $IGC_NP_KERNELS is checked at start ------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    ("conv2d_forward=9", r"conv2d_forward has versions \[1, 2, 3\], not 9"),
    ("conv2d_foward=1", r"unknown kernel op 'conv2d_foward'; the ops and their versions are .*conv2d_forward=1\|2\|3"),
    ("sgd", r"'sgd' must be op=version"),
])
def test_a_bad_kernel_switch_is_an_error_at_start_on_the_cpu(value, message):
    """Before: ignored on the CPU (no kernel runs there), and on emu an error deep in the first launch."""
    code = ("import numpy as np, igc_np as ig\n"
            "x = ig.Tensor(np.ones((1, 2, 4, 4), np.float32))\n"
            "print('ran', ig.nn.Conv2d(2, 2, 3, padding=1)(x).shape)\n")
    env = dict(os.environ, IGC_NP_KERNELS=value, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "ran" not in r.stdout, r.stdout
    assert "$IGC_NP_KERNELS" in r.stderr
    import re
    assert re.search(message, r.stderr), r.stderr[-2000:]


def test_a_good_kernel_switch_is_accepted():
    env = dict(os.environ, IGC_NP_KERNELS="conv2d_forward=1, sgd=2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", "import igc_np.kernels as k; print(k.versions.selected('conv2d_forward'))"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr


def test_choices_name_every_op_and_version():
    text = versions.choices()
    for op in versions.ops():
        assert f"{op}={'|'.join(map(str, sorted(versions.versions(op))))}" in text


# ---- sanitizer mode: outputs pre-filled with NaN ------------------------------------------------------

def test_outputs_are_nan_filled_in_sanitizer_mode_on_emu_only(monkeypatch):
    monkeypatch.setenv(launch.SANITIZE_ENV, "1")
    assert np.isnan(launch.output(np, (3, 2), np.float32, "emu")).all()
    monkeypatch.setenv(launch.SANITIZE_ENV, "0")
    assert not launch.sanitizing("emu")
    monkeypatch.setenv(launch.SANITIZE_ENV, "1")
    assert not launch.sanitizing("cuda")


# ---- the launchers' layout: the old module names still work ------------------------------------------

def test_old_launcher_names_re_export_the_new_modules():
    """igc_np/ops/*.py and the benchmarks import kernels.ops and kernels.fused_ops: same functions."""
    from igc_np.kernels import batch_norm, fused_ops, ops, permutation, sgd
    assert ops.conv2d_forward is conv.conv2d_forward and ops.plan is conv.plan
    assert ops.permute_channels is permutation.permute_channels
    assert ops.interleaved_secondary_backward_weight is interleaved_secondary.interleaved_secondary_backward_weight
    assert fused_ops.batch_norm_forward is batch_norm.batch_norm_forward and fused_ops.sgd_step is sgd.sgd_step


def test_cuda_without_cupy_says_how_to_install_it(monkeypatch):
    """Issue 19: a bare "No module named 'cupy'" before."""
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy fails as if it were not installed
    x, W = np.zeros((1, 2, 3, 3), np.float32), np.zeros((2, 1, 3, 3), np.float32)
    with pytest.raises(ModuleNotFoundError, match=r"device 'cuda' needs CuPy: pip install cupy-cuda12x .* cupy-cuda13x"):
        conv.conv2d_forward(x, W, (1, 1), (1, 1), 2, "cuda")
