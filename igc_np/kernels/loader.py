"""Load the CUDA sources of this package, compiled once per (file, dtype, device).

``get_module("group_conv.cu", numpy.float32, "cuda")`` returns a module whose
``get_function("conv2d_forward")`` is the float instantiation ``conv2d_forward<float>``, called
``fn(grid, block, args, shared_mem=0)`` on both devices:
- "cuda": ``cupy.RawModule`` (cupy imported here, lazily: the package imports without it);
- "emu": the CPU emulator of igc_np.emu, which runs the same source with g++.

Sources are read relative to this package, never the working directory, and prefixed with
``#line 1 "<path>"`` so that compiler messages name the real .cu line.

A kernel may have compile-time parameters after T (``template <typename T, int KH, int KW, int SH,
int SW>``); its file then lists the values to instantiate in a comment line
``// instantiate KH, KW, SH, SW: (3, 3, 1, 1) (1, 1, 1, 1) (0, 0, 0, 0)``, and the launcher picks one:
``get_function("conv2d_forward_v2", (3, 3, 1, 1))`` is ``conv2d_forward_v2<float, 3, 3, 1, 1>``.
"""
import os
import re

import numpy as np

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
DEVICES = ("cuda", "emu")
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
# Every kernel in igc_np/kernels is declared `template <typename T[, int P, ...]> __global__ void name(...)`.
# A `__launch_bounds__(...)` (or an upper-case macro for it) may stand between `void` and the name.
_KERNEL = re.compile(r"template\s*<\s*typename\s+T\s*((?:,\s*int\s+\w+\s*)*)>\s*__global__\s+void\s+"
                     r"(?:(?:__launch_bounds__\s*\([^)]*\)|[A-Z][A-Z0-9_]*)\s+)?(\w+)\s*\(")
_INSTANTIATE = re.compile(r"^\s*//\s*instantiate\s+(\w+(?:\s*,\s*\w+)*)\s*:(.*)$", re.M)
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
    return f'#line 1 "{path}"\n' + code, [name for _, name in _KERNEL.findall(code)]


def instantiations(filename):
    """{kernel name: list of compile-time argument tuples} of one .cu file; () for a kernel
    templated on T only. Raises ValueError when a kernel's parameters have no instantiate line."""
    with open(os.path.join(KERNEL_DIR, filename)) as f:
        code = f.read()
    lists = {}
    for params, values in _INSTANTIATE.findall(code):
        key = tuple(p.strip() for p in params.split(","))
        tuples = [tuple(int(v) for v in t.split(",")) for t in re.findall(r"\(([^)]*)\)", values)]
        if not tuples or any(len(t) != len(key) for t in tuples):
            raise ValueError(f"{filename}: instantiate line for {', '.join(key)} needs tuples of "
                             f"{len(key)} ints, got {values.strip()!r}")
        lists[key] = tuples
    out = {}
    for params, name in _KERNEL.findall(code):
        key = tuple(re.findall(r"int\s+(\w+)", params))
        if not key:
            out[name] = [()]
        elif key in lists:
            out[name] = lists[key]
        else:
            raise ValueError(f"{filename}: kernel {name} has compile-time parameters {', '.join(key)} "
                             f"but no '// instantiate {', '.join(key)}: (...)' line")
    return out


def name_expression(name, ctype, targs=()):
    """conv2d_forward_v2, float, (3, 3, 1, 1) -> 'conv2d_forward_v2<float, 3, 3, 1, 1>'."""
    return f"{name}<{', '.join([ctype] + [str(int(a)) for a in targs])}>"


def name_expressions(filename, ctype):
    """Every instantiation of every kernel of `filename` for element type `ctype`."""
    return [name_expression(name, ctype, t) for name, ts in instantiations(filename).items() for t in ts]


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
        self._targs = instantiations(filename)
        self._expr = {(name, t): name_expression(name, ctype, t) for name, ts in self._targs.items() for t in ts}
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

    def get_function(self, name, targs=()):
        """The kernel `name` instantiated for this module's dtype (and compile-time arguments `targs`)."""
        key = (name, tuple(int(a) for a in targs))
        if key not in self._functions:
            if name not in self._targs:
                raise KeyError(f"{self.filename} has no kernel {name!r}; it has {self.names}")
            if key not in self._expr:
                raise KeyError(f"{self.filename}: {name} is instantiated for {self._targs[name]}, "
                               f"not {key[1]}")
            self._functions[key] = self._module.get_function(self._expr[key])
        return self._functions[key]

    def has(self, name, targs=()):
        """Whether `name` is instantiated with compile-time arguments `targs`."""
        return (name, tuple(int(a) for a in targs)) in self._expr


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
