"""The kernels on a real GPU (device "cuda", through CuPy) against the NumPy reference ops.

The same checks as tests/test_kernels_emu.py; skipped when CuPy or a CUDA device is absent.
"""
import importlib.util
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from igc_np.kernels import conv, permutation, versions

try:
    import cupy
    _GPUS = cupy.cuda.runtime.getDeviceCount()
    _WHY = "no CUDA device visible to CuPy"
except ImportError:
    cupy, _GPUS, _WHY = None, 0, "CuPy is not installed (pip install igc_np[cuda])"
except Exception as e:  # CuPy present but no driver / device
    cupy, _GPUS, _WHY = None, 0, f"CUDA unavailable: {e}"

pytestmark = pytest.mark.skipif(_GPUS == 0, reason=_WHY)

# The checks live in the emulator test module; load it by path (not as a test module here).
_spec = importlib.util.spec_from_file_location(
    "_kernel_checks", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_kernels_emu.py"))
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

DEVICE = dict(device="cuda", to_device=lambda a: cupy.asarray(a), to_host=lambda a: cupy.asnumpy(a))


CONV_VERSIONS = sorted(versions.versions("conv2d_forward"))


# conv: float64 reference, norm-relative bound (checks.assert_norm_close), every version
@pytest.mark.parametrize("version", CONV_VERSIONS)
@pytest.mark.parametrize("dtype", checks.DTYPES)
@settings(max_examples=60, **checks.SETTINGS)
@given(case=checks.conv_cases())
def test_conv_cuda(case, dtype, version):
    checks.check_conv(case, dtype, version=version, **DEVICE)


# The permutation and the fused interleaved secondary conv, every version, with norm-relative
# bounds against float64 references: tests/test_kernels_cuda_fused.py.


@pytest.mark.parametrize("case", [
    ((4, 48, 32, 32), (48, 2, 3, 3), (1, 1), (1, 1), 24),   # CIFAR IGC-L24M2, stage 1
    ((4, 96, 16, 16), (96, 4, 3, 3), (2, 2), (1, 1), 24),   # stride 2
    ((2, 128, 28, 28), (128, 32, 3, 3), (1, 1), (1, 1), 4),  # ImageNet IGC-L4M32
])
def test_igc_shapes_cuda(case):
    for version in CONV_VERSIONS:
        checks.check_conv(case, np.float32, version=version, **DEVICE)
    N, C = case[0][:2]
    L = case[4]
    checks.check_interleaved((case[0], L, C // L), np.float32, **DEVICE)


def test_stem_and_weight_gradient_determinism_cuda():
    """The ImageNet stem (7x7 stride 2) on every version; v3's two-pass weight gradient gives the
    same bits on every run (no atomics)."""
    case = ((8, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3), 1)
    for version in CONV_VERSIONS:
        checks.check_conv(case, np.float32, version=version, **DEVICE)
    rng = np.random.default_rng(5)
    x = cupy.asarray(rng.standard_normal((16, 128, 28, 28)).astype(np.float32))
    gy = cupy.asarray(rng.standard_normal((16, 128, 28, 28)).astype(np.float32))
    runs = [conv.conv2d_backward_weight(x, gy, (128, 32, 3, 3), (1, 1), (1, 1), 4, "cuda", version=3)
            for _ in range(3)]
    for r in runs[1:]:
        assert bool((r == runs[0]).all())


def test_numpy_input_is_rejected_on_cuda():
    with pytest.raises(TypeError, match="cupy.ndarray on device 'cuda'"):
        permutation.permute_channels(np.zeros((1, 2, 1, 1)), 1, "cuda")
