"""The kernels on a real GPU (device "cuda", through CuPy) against the NumPy reference ops.

The same checks as tests/test_kernels_emu.py; skipped when CuPy or a CUDA device is absent.
"""
import importlib.util
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize("dtype", checks.DTYPES)
@settings(max_examples=60, **checks.SETTINGS)
@given(case=checks.conv_cases())
def test_conv_cuda(case, dtype):
    checks.check_conv(case, dtype, **DEVICE)


# The permutation and the fused interleaved secondary conv, every version, with norm-relative
# bounds against float64 references: tests/test_kernels_cuda_fused.py.


@pytest.mark.parametrize("case", [
    ((4, 48, 32, 32), (48, 2, 3, 3), (1, 1), (1, 1), 24),   # CIFAR IGC-L24M2, stage 1
    ((4, 96, 16, 16), (96, 4, 3, 3), (2, 2), (1, 1), 24),   # stride 2
    ((2, 128, 28, 28), (128, 32, 3, 3), (1, 1), (1, 1), 4),  # ImageNet IGC-L4M32
])
def test_igc_shapes_cuda(case):
    checks.check_conv(case, np.float32, **DEVICE)
    N, C = case[0][:2]
    L = case[4]
    checks.check_interleaved((case[0], L, C // L), np.float32, **DEVICE)


def test_numpy_input_is_rejected_on_cuda():
    with pytest.raises(TypeError, match="cupy.ndarray on device 'cuda'"):
        checks.ops.permute_channels(np.zeros((1, 2, 1, 1)), 1, "cuda")
