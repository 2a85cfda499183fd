"""Load the CUDA sources of this package, compiled once per (file, dtype, device).

``get_module("group_conv.cu", numpy.float32, "cuda")`` returns a module whose
``get_function("conv2d_forward")`` is the float instantiation ``conv2d_forward<float>``, called
``fn(grid, block, args, shared_mem=0)`` on both devices:
- "cuda": ``cupy.RawModule`` (cupy imported here, lazily: the package imports without it);
- "emu": the CPU emulator of igc_np.emu, which runs the same source with g++.

Sources are read relative to this package, never the working directory, and prefixed with
``#line 1 "<path>"`` so that compiler messages name the real .cu line.
"""
import os
import re

import numpy as np

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
DEVICES = ("cuda", "emu")
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
# Every kernel in igc_np/kernels is declared `template <typename T> __global__ void name(...)`.
_KERNEL = re.compile(r"template\s*<\s*typename\s+T\s*>\s*__global__\s+void\s+(\w+)\s*\(")
NVRTC_OPTIONS = ("-std=c++14",)

_modules = {}


def kernel_files():
    """Names of the .cu files of this package, sorted."""
    return sorted(f for f in os.listdir(KERNEL_DIR) if f.endswith(".cu"))


def read_source(filename):
    """(source with a #line directive, kernel names) of one .cu file of this package."""
    path = os.path.join(KERNEL_DIR, filename)
    with open(path) as f:
        code = f.read()
    return f'#line 1 "{path}"\n' + code, _KERNEL.findall(code)


def c_type(dtype):
    dtype = np.dtype(dtype)
    if dtype not in C_TYPES:
        raise ValueError(f"kernels are instantiated for float32 and float64, not {dtype}")
    return C_TYPES[dtype]


class KernelModule:
    """One .cu file compiled for one element type on one device."""

    def __init__(self, filename, dtype, device):
        self.filename, self.dtype, self.device = filename, np.dtype(dtype), device
        code, names = read_source(filename)
        ctype = c_type(dtype)
        self.names = names
        self._expr = {name: f"{name}<{ctype}>" for name in names}
        exprs = list(self._expr.values())
        if device == "cuda":
            import cupy  # lazily: only the GPU path needs it
            self._module = cupy.RawModule(code=code, options=NVRTC_OPTIONS, name_expressions=exprs)
        elif device == "emu":
            from ..emu import EmuModule
            # the emulator gets the plain source: its loader adds its own #line with the file name
            self._module = EmuModule(code.split("\n", 1)[1], exprs, os.path.join(KERNEL_DIR, filename))
        else:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        self._functions = {}

    def get_function(self, name):
        """The kernel `name` instantiated for this module's dtype."""
        if name not in self._functions:
            if name not in self._expr:
                raise KeyError(f"{self.filename} has no kernel {name!r}; it has {self.names}")
            self._functions[name] = self._module.get_function(self._expr[name])
        return self._functions[name]


def get_module(filename, dtype, device):
    """The cached KernelModule of `filename` for `dtype` on `device` ("cuda" or "emu"; "cuda:k"
    means CuPy's current device, which the caller selects)."""
    dtype = np.dtype(dtype)
    if isinstance(device, str) and device.startswith("cuda:"):
        device = "cuda"
    key = (filename, dtype, device)
    if device == "cuda":
        import cupy
        key += (cupy.cuda.Device().id,)
    if key not in _modules:
        _modules[key] = KernelModule(filename, dtype, device)
    return _modules[key]
