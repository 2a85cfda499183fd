"""Devices and array modules: the only file that imports CuPy.

igc_np knows three devices:

* ``"cpu"``  - NumPy arrays; the fast CPU tier of every op (ops/cpu_conv.py and friends), or,
  inside ``use_reference()``, the reference tier (ops/reference.py: the shortest correct NumPy);
* ``"cuda"`` - CuPy arrays on an NVIDIA GPU; conv and permutation run our own kernels
  (``igc_np/kernels/*.cu``), everything else CuPy's array operations;
* ``"emu"``  - NumPy arrays, but conv and permutation run the *same* ``.cu`` kernels on the CPU
  through the emulator in ``igc_np/emu`` (slow; for reading and testing kernels without a GPU).

Every op receives ``xp`` (``numpy`` or ``cupy``) so that one code path serves both where the maths
allows (the Chainer/DeZero ``get_array_module`` idea). Which implementation of an op runs - its
*tier* - is chosen once per op call by ``tier(device)`` (see autograd.Function.apply). The
reference switch, like autograd's grad mode, belongs to the thread that sets it.
"""
import contextlib
import ctypes
import ctypes.util
import os
import threading

import numpy as np

DEVICES = ("cpu", "cuda", "emu")

_cupy = None


def cupy_module():
    """Import CuPy lazily; raise a clear error when it is missing or sees no GPU."""
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError as e:  # depends on the machine (tests: a blocked import)
            raise RuntimeError(
                "device 'cuda' needs CuPy, which is not installed: pip install -e \".[cuda]\" for "
                "CUDA 12, or pip install -e \".[cuda13]\" for CUDA 13 (nvidia-smi prints the CUDA "
                f"version), on a machine with an NVIDIA GPU ({type(e).__name__}: {e})") from None
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # pragma: no cover
            raise RuntimeError(f"device 'cuda': CuPy is installed but no GPU is usable ({e})") from None
        if n == 0:  # pragma: no cover
            raise RuntimeError("device 'cuda': CuPy is installed but sees no GPU")
        _cupy = cupy
    return _cupy


_cuda_status = None  # (available, reason), found once per process by cuda_available()

# A trivial kernel, compiled and launched once: CuPy imports and counts devices without NVRTC or
# the CUDA headers, and then fails on the first real kernel (CuPy 14: "Failed to find CUDA headers").
# Templated and named by expression, as igc_np/kernels/*.cu are.
_PROBE = "template <typename T> __global__ void igc_np_probe(T* a) { a[threadIdx.x] += T(1); }"


def cuda_available():
    """True when CuPy imports, sees a GPU, and can compile and run a kernel (NVRTC, headers and
    driver all work); found once per process. cuda_unavailable_reason() says why not."""
    global _cuda_status
    if _cuda_status is None:
        try:
            cp = cupy_module()
            a = cp.zeros(32, dtype=cp.float32)
            cp.RawModule(code=_PROBE, name_expressions=["igc_np_probe<float>"]).get_function(
                "igc_np_probe<float>")((1,), (32,), (a,))
            if float(a.sum()) != 32.0:
                raise RuntimeError(f"a probe kernel ran but computed {float(a.sum())} instead of 32")
            _cuda_status = (True, None)
        except Exception as e:  # RuntimeError from cupy_module, CuPy's compile or driver errors
            _cuda_status = (False, f"device 'cuda' is unusable: {type(e).__name__}: {e}")
    return _cuda_status[0]


def cuda_unavailable_reason():
    """Why device 'cuda' cannot be used (None when it can): for skip messages and errors."""
    cuda_available()
    return _cuda_status[1]


def check_device(device):
    """Normalise a device name ('cpu', 'cuda', 'cuda:1', 'emu') and validate it.

    'cuda:k' is read as 'cuda': arrays go to CuPy's *current* GPU; pick it with
    ``cupy.cuda.Device(k).use()`` (the trainer's --gpus does this)."""
    if not isinstance(device, str):
        raise ValueError(f"device must be a string among {DEVICES}, got {device!r}")
    base = device.split(":")[0]
    if base not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {DEVICES}")
    return base


TIERS = ("reference", "cpu", "gpu")

class _ReferenceSwitch(threading.local):
    """The reference switch of the calling thread: each thread starts from IGC_NP_REFERENCE=1 in the
    environment (read at import) and changes its own with use_reference()."""
    enabled = os.environ.get("IGC_NP_REFERENCE", "0") not in ("", "0")


_reference = _ReferenceSwitch()


@contextlib.contextmanager
def use_reference(enabled=True):
    """Inside this block every op on 'cpu' run by this thread runs its reference tier (ops/reference.py).

    Slow, but each op is the few lines of NumPy that define it, so a debugger can step through a
    whole training step. ``IGC_NP_REFERENCE=1`` switches it on for the whole process.
    """
    previous, _reference.enabled = _reference.enabled, bool(enabled)
    try:
        yield
    finally:
        _reference.enabled = previous


def reference_enabled():
    """True inside use_reference() (or with IGC_NP_REFERENCE=1) in the calling thread."""
    return _reference.enabled


def tier(device):
    """The tier an op runs on: 'gpu' ('cuda'; 'emu' = the GPU kernels in the CPU emulator),
    'reference' on 'cpu' under the reference switch, else 'cpu'."""
    device = check_device(device)
    if device == "cpu":
        return "reference" if _reference.enabled else "cpu"
    if _reference.enabled:
        raise ValueError(f"use_reference(): the reference tier is NumPy code for device 'cpu', but the "
                         f"inputs are on {device!r}; move the model and data with .to('cpu')")
    return "gpu"


def get_array_module(device):
    """numpy for 'cpu' and 'emu', cupy for 'cuda'."""
    return cupy_module() if check_device(device) == "cuda" else np


def device_of(array):
    """'cuda' for a CuPy array, 'cpu' for anything else."""
    return "cuda" if type(array).__module__.startswith("cupy") else "cpu"


def to_device(array, device):
    """Copy (only when needed) an array to the memory of `device`."""
    device = check_device(device)
    if device == "cuda":
        cp = cupy_module()
        return cp.asarray(array)
    if device_of(array) == "cuda":
        return array.get()
    return np.asarray(array)


def keep_freed_memory():
    """Ask glibc's malloc to keep freed blocks in the process instead of returning them to the OS.

    Training allocates and frees the same large activation arrays every step; by default glibc
    serves blocks over 128 KiB-32 MiB with fresh mmaps and trims the heap, so every step touches
    new pages (measured: 67,000 page faults and 0.37 s of kernel time per resnet_igc-20 step on
    2 cores, 20% of the step). Raising the mmap and trim thresholds makes freed memory reusable;
    the peak memory is unchanged. Set IGC_NP_KEEP_MEMORY=0 to leave malloc alone. Linux/glibc only.
    """
    if os.environ.get("IGC_NP_KEEP_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to tune
        return False
