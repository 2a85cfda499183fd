"""Every .cu file of igc_np/kernels compiles with NVRTC for sm_80 and sm_90, float and double.

Needs libnvrtc (the pip wheel nvidia-cuda-nvrtc-cu12, in the `test` extra), not a GPU nor CuPy.
"""
import platform
import re

import pytest

from igc_np.kernels import kernel_files, nvrtc, read_source

pytestmark = pytest.mark.skipif(
    nvrtc.load() is None,
    reason=f"NVRTC has no build for {platform.system()}: the compile check runs on Linux and Windows"
    if platform.system() not in ("Linux", "Windows") else
    "libnvrtc not found: pip install nvidia-cuda-nvrtc-cu12 (or a CUDA toolkit) to compile-check kernels")

ARCHS = ("compute_80", "compute_90")
EXPECTED_KERNELS = {
    "group_conv.cu": ["conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight"],
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


def test_every_kernel_file_is_known():
    assert kernel_files() == sorted(EXPECTED_KERNELS)
    for f, names in EXPECTED_KERNELS.items():
        assert read_source(f)[1] == names


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("filename", sorted(EXPECTED_KERNELS))
def test_compiles_float_and_double(filename, arch):
    code, names = read_source(filename)
    exprs = [f"{n}<{t}>" for n in names for t in ("float", "double")]
    ptx, lowered, log = nvrtc.compile_ptx(code, arch, exprs, filename)  # raises with the log on error
    assert "warning" not in log.lower(), log
    assert f".target sm_{arch[-2:]}" in ptx
    for expr in exprs:  # each instantiation is an entry point of the PTX
        assert re.search(rf"\.entry\s+{re.escape(lowered[expr])}\b", ptx), expr


def test_error_names_the_real_file_and_line():
    code, _ = read_source("permutation.cu")
    n_lines = code.count("\n")  # the #line directive makes line 2 of `code` line 1 of the file
    with pytest.raises(nvrtc.NVRTCError, match=rf"permutation\.cu\({n_lines + 1}\): error"):
        nvrtc.compile_ptx(code + "\nint broken = ;\n", "compute_80", [], "permutation.cu")
