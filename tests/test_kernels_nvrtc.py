"""Every .cu file of igc_np/kernels compiles with NVRTC for sm_80 and sm_90, float and double, and
ptxas gives each kernel <= 64 registers, no spills and no stack frame.

Files are discovered by glob (kernel_files()), so a new .cu file is checked without editing this
test; every instantiation of every kernel (its "// instantiate" line) is compiled. Needs libnvrtc
(the pip wheel nvidia-cuda-nvrtc-cu12, in the `test` extra), and ptxas for the resource check;
no GPU nor CuPy.
"""
import platform
import re

import numpy as np
import pytest

from igc_np.kernels import kernel_files, nvrtc, read_source, sass
from igc_np.kernels.loader import instantiations, name_expression, name_expressions, static_shared

pytestmark = pytest.mark.skipif(
    nvrtc.load() is None,
    reason=f"NVRTC has no build for {platform.system()}: the compile check runs on Linux and Windows"
    if platform.system() not in ("Linux", "Windows") else
    "libnvrtc not found: pip install nvidia-cuda-nvrtc-cu12 (or a CUDA toolkit) to compile-check kernels")

ARCHS = ("compute_80", "compute_90")
MAX_REGISTERS = 64  # 2048 threads of an SM (sm_80, sm_90) share 64K registers
# Files and kernels that must exist; other .cu files are checked as well.
EXPECTED_KERNELS = {
    "group_conv.cu": ["conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight"],
    "group_conv_v2.cu": ["conv2d_forward_v2", "conv2d_backward_data_v2", "conv2d_backward_weight_v2"],
    "group_conv_v3.cu": ["conv2d_forward_v3", "conv2d_backward_data_v3", "conv2d_backward_weight_v3",
                         "conv2d_backward_weight_v3_reduce"],
    "permutation.cu": ["permute_channels", "permute_channels_rows"],
    "interleaved_secondary.cu": ["interleaved_secondary_forward", "interleaved_secondary_backward_data",
                                 "interleaved_secondary_backward_weight", "interleaved_secondary_forward_tiled",
                                 "interleaved_secondary_backward_data_tiled",
                                 "interleaved_secondary_backward_weight_partial",
                                 "interleaved_secondary_backward_weight_sum"],
    "batch_norm.cu": ["bn_stats", "bn_apply", "bn_backward_reduce", "bn_backward_data", "bn_stats_partial",
                      "bn_apply_rows", "bn_backward_partial", "bn_backward_data_rows"],
    "sgd.cu": ["sgd_update", "sgd_multi_tensor"],
}
FILES = kernel_files()


def test_expected_kernel_files_are_found():
    assert set(EXPECTED_KERNELS) <= set(FILES)
    for f, names in EXPECTED_KERNELS.items():
        assert read_source(f)[1] == names


def test_specialized_versions_have_a_generic_fallback():
    for f in ("group_conv_v2.cu", "group_conv_v3.cu"):
        for name, targs in instantiations(f).items():
            assert targs == [()] or (0, 0, 0, 0) in targs, (f, name, targs)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("filename", FILES)
def test_compiles_float_and_double(filename, arch):
    code, _ = read_source(filename)
    exprs = name_expressions(filename, "float") + name_expressions(filename, "double")
    ptx, lowered, log = nvrtc.compile_ptx(code, arch, exprs, filename)  # raises with the log on error
    assert "warning" not in log.lower(), log
    assert f".target sm_{arch[-2:]}" in ptx
    for expr in exprs:  # each instantiation is an entry point of the PTX
        assert re.search(rf"\.entry\s+{re.escape(lowered[expr])}\b", ptx), expr


@pytest.mark.skipif(bool(sass.tools_missing("ptxas")), reason=sass.tools_missing("ptxas") or "-")
@pytest.mark.parametrize("arch", ("sm_90",))  # the resources of sm_80 differ little; ptxas is slow
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=("float", "double"))
@pytest.mark.parametrize("filename", FILES)
def test_registers_spills_stack(filename, dtype, arch):
    res = sass.resources(filename, dtype, arch)
    exprs = name_expressions(filename, sass.c_type(dtype))
    assert sorted(res) == sorted(exprs)
    bad = {e: r for e, r in res.items()
           if r.registers > MAX_REGISTERS or r.spill_stores or r.spill_loads or r.stack}
    assert not bad, f"{filename} ({arch}): over {MAX_REGISTERS} registers, spills or a stack frame: {bad}"


@pytest.mark.skipif(bool(sass.tools_missing("ptxas")), reason=sass.tools_missing("ptxas") or "-")
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=("float", "double"))
@pytest.mark.parametrize("filename", FILES)
def test_static_shared_memory_read_from_the_source_equals_ptxas(filename, dtype):
    """The launch checks (kernels/launch.py) add a kernel's static shared memory, read from its
    __shared__ declarations (loader.static_shared), to the dynamic: it must be what ptxas allots."""
    res = sass.resources(filename, dtype, "sm_90")
    ours = static_shared(filename, np.dtype(dtype).itemsize)
    for name, tuples in instantiations(filename).items():
        for targs in tuples:
            expr = name_expression(name, sass.c_type(dtype), targs)
            assert res[expr].shared == ours[name], (expr, res[expr].shared, ours[name])


def test_error_names_the_real_file_and_line():
    code, _ = read_source("permutation.cu")
    n_lines = code.count("\n")  # the #line directive makes line 2 of `code` line 1 of the file
    with pytest.raises(nvrtc.NVRTCError, match=rf"permutation\.cu\({n_lines + 1}\): error"):
        nvrtc.compile_ptx(code + "\nint broken = ;\n", "compute_80", [], "permutation.cu")


def test_instantiate_line_is_required(tmp_path, monkeypatch):
    """A kernel with compile-time parameters and no instantiate line is an error naming both."""
    from igc_np.kernels import loader
    (tmp_path / "k.cu").write_text("template <typename T, int K>\n__global__ void f(T* a) {}\n")
    monkeypatch.setattr(loader, "KERNEL_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"k\.cu: kernel f has compile-time parameters K but no "
                                         r"'// instantiate K: \(\.\.\.\)' line"):
        instantiations("k.cu")
    (tmp_path / "k.cu").write_text("// instantiate K: (1) (3)\ntemplate <typename T, int K>\n"
                                   "__global__ void __launch_bounds__(64) f(T* a) {}\n")
    assert instantiations("k.cu") == {"f": [(1,), (3,)]}
    assert name_expressions("k.cu", "float") == ["f<float, 1>", "f<float, 3>"]
