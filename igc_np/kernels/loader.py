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

from ..emu import EmuModule, sanitizing

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
DEVICES = ("cuda", "emu")
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
# Every kernel in igc_np/kernels is declared `template <typename T[, int P, ...]> __global__ void name(...)`.
# A `__launch_bounds__(...)` (or an upper-case macro for it) may stand between `void` and the name.
_KERNEL = re.compile(r"template\s*<\s*typename\s+T\s*((?:,\s*int\s+\w+\s*)*)>\s*__global__\s+void\s+"
                     r"(?:(?:__launch_bounds__\s*\([^)]*\)|[A-Z][A-Z0-9_]*)\s+)?(\w+)\s*\(")
_BOUNDS = re.compile(r"template\s*<\s*typename\s+T\s*(?:,\s*int\s+\w+\s*)*>\s*__global__\s+void\s+"
                     r"(__launch_bounds__\s*\([^)]*\)|[A-Z][A-Z0-9_]*)\s+(\w+)\s*\(")
_DEFINE = re.compile(r"^\s*#define\s+([A-Za-z_]\w*)\s+(.+?)\s*(?://.*)?$", re.M)
_SHARED = re.compile(r"(?<!extern )__shared__\s+(?:__align__\s*\(\d+\)\s+)?(\w+)\s+\w+\s*((?:\[[^\]]+\])+)")
_DEVICE_FN = re.compile(r"__device__\s+(?:__forceinline__\s+)?[\w:<>*& ]+?\b(\w+)\s*\(")
MAX_THREADS = 1024  # a block's thread limit on every GPU since compute capability 2.0
_INSTANTIATE = re.compile(r"^\s*//\s*instantiate\s+(\w+(?:\s*,\s*\w+)*)\s*:(.*)$", re.M)
NVRTC_OPTIONS = ("-std=c++14",)

_modules = {}
CUPY_HINT = ("device 'cuda' needs CuPy: pip install cupy-cuda12x (CUDA 12 drivers) or cupy-cuda13x "
             "(CUDA 13), or run on 'cpu' (or 'emu', the CPU emulator of the kernels)")


def import_cupy():
    """cupy, or ModuleNotFoundError saying how to install it (CuPy is optional: imported lazily,
    only by the GPU path)."""
    try:
        import cupy
    except ModuleNotFoundError as e:
        if e.name != "cupy":
            raise
        raise ModuleNotFoundError(CUPY_HINT, name="cupy") from None
    return cupy


def kernel_files():
    """Names of the .cu files of this package, sorted."""
    return sorted(f for f in os.listdir(KERNEL_DIR) if f.endswith(".cu"))


def read_source(filename):
    """(source with a #line directive, kernel names) of one .cu file of this package."""
    path = os.path.join(KERNEL_DIR, filename)
    with open(path) as f:
        code = f.read()
    return f'#line 1 "{path}"\n' + code, [name for _, name in _KERNEL.findall(code)]


def _read(filename):
    with open(os.path.join(KERNEL_DIR, filename)) as f:
        return f.read()


def _int_expr(text, env, where):
    """The value of a C integer expression of ints, + - * / ( ) and names in `env`."""
    expr = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: str(env[m.group()]) if m.group() in env else m.group(), text)
    if not re.fullmatch(r"[\d\s+\-*/()]+", expr):
        raise ValueError(f"{where}: {text!r} is not an integer expression of ints and #defines")
    return int(eval(expr.replace("/", "//"), {"__builtins__": {}}))  # digits and operators only


def defines(filename):
    """{NAME: int} of the file's ``#define NAME <integer expression>`` lines (others are left out):
    the tile constants a launcher shares with its kernels, stated once in the .cu."""
    out = {}
    for name, value in _DEFINE.findall(_read(filename)):
        try:
            out[name] = _int_expr(value, out, f"{filename}: #define {name}")
        except ValueError:
            continue  # a macro that is not a number (e.g. a __launch_bounds__ clause)
    return out


def launch_bounds(filename):
    """{kernel name: the most threads a block may have}: the first argument of its
    ``__launch_bounds__`` (written in place or through a #define), else MAX_THREADS. A GPU refuses a
    launch over it ("too many resources requested"/"invalid argument")."""
    code, env = _read(filename), defines(filename)
    macros = dict(_DEFINE.findall(code))
    out = {name: MAX_THREADS for _, name in _KERNEL.findall(code)}
    for clause, name in _BOUNDS.findall(code):
        clause = macros.get(clause, clause)
        m = re.fullmatch(r"__launch_bounds__\s*\(([^,)]*)[^)]*\)", clause.strip())
        if m is None:
            raise ValueError(f"{filename}: kernel {name}: {clause!r} is not a __launch_bounds__(...) clause")
        out[name] = _int_expr(m.group(1), env, f"{filename}: kernel {name}")
    return out


def _bodies(code):
    """{function name: body text} of the file's kernels and __device__ functions (brace-matched)."""
    out = {}
    for m in list(_KERNEL.finditer(code)) + list(_DEVICE_FN.finditer(code)):
        name = m.group(2) if m.re is _KERNEL else m.group(1)
        i = code.find("{", m.end())
        if i < 0 or ";" in code[m.end():i] and code[m.end():i].rstrip().endswith(";"):
            continue
        depth, j = 0, i
        while j < len(code):
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
            if depth == 0:
                break
        out.setdefault(name, code[i:j])
    return out


def static_shared(filename, itemsize):
    """{kernel name: bytes of static ``__shared__`` arrays} for element size `itemsize` (T), the
    kernel's own and those of the __device__ functions it calls. A launch may add dynamic shared
    memory up to 48 KiB minus this (without the opt-in). tests/test_kernels_nvrtc.py checks these
    against ptxas."""
    code, env = _read(filename), defines(filename)
    bodies = _bodies(code)
    sizes = {"T": int(itemsize), "float": 4, "double": 8, "int": 4, "unsigned": 4}

    def own(body):
        total = 0
        for ctype, dims in _SHARED.findall(body):
            n = 1
            for d in re.findall(r"\[([^\]]+)\]", dims):
                n *= _int_expr(d, env, f"{filename}: __shared__ {ctype} [{d}]")
            total += n * sizes[ctype]
        return total

    def total(name, seen):
        body = bodies[name]
        calls = {f for f in bodies if f != name and f not in seen and re.search(rf"\b{f}\s*[<(]", body)}
        return own(body) + sum(total(f, seen | calls | {name}) for f in calls)

    return {name: total(name, {name}) for _, name in _KERNEL.findall(code)}


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
            cupy = import_cupy()
            self._module = cupy.RawModule(code=code, options=NVRTC_OPTIONS, name_expressions=exprs)
        elif device == "emu":
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
    # a module built before $IGC_NP_EMU_SANITIZE changed is another build (the sanitizer's)
    key = (filename, dtype, device, device == "emu" and sanitizing())
    if device == "cuda":
        key += (import_cupy().cuda.Device().id,)
    if key not in _modules:
        _modules[key] = KernelModule(filename, dtype, device)
    return _modules[key]
