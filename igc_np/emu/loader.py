"""Compile a CUDA kernel source with g++ against cuda_emu.h and launch its kernels on the CPU.

``EmuModule(code, name_expressions)`` mirrors ``cupy.RawModule(code=..., name_expressions=...)``:
``get_function("conv2d_forward<float>")`` returns a function called as
``fn((gx, gy, gz), (bx, by, bz), (arg1, arg2, ...), shared_mem=0)``, with numpy arrays for pointer
parameters and numpy scalars of the exact C type (numpy.int32 for int) for the others. Unlike CuPy,
the emulator checks every argument against the kernel's C signature.

The shared library is cached under $IGC_NP_CACHE/emu (default ~/.cache/igc_np/emu), keyed by a
hash of the generated source (which includes the header), the flags and the compiler version.
"""
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emu.h")
CXX_FLAGS = ("-std=c++17", "-O2", "-shared", "-fPIC", "-w")

# C type in a kernel signature -> numpy dtype of the argument
_C_TO_NUMPY = {
    "float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
    "long long": np.int64, "unsigned long long": np.uint64, "long": np.int64,
    "unsigned long": np.uint64, "short": np.int16, "unsigned short": np.uint16,
    "signed char": np.int8, "unsigned char": np.uint8, "char": np.int8, "bool": np.bool_,
}

_ERRBUF = 2048
_compiled = {}  # sha -> ctypes.CDLL, so a process loads each library once


class EmulatorError(RuntimeError):
    """A kernel launch failed in the emulator (deadlock, invalid launch configuration)."""


class EmulatorCompileError(RuntimeError):
    """g++ rejected the kernel source; the message holds the compiler output."""


def cache_dir():
    root = os.environ.get("IGC_NP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "igc_np")
    return os.path.join(root, "emu")


def _symbol(name_expression):
    """C identifier of the launch shim for a name expression: conv2d_forward<float> -> ..._float_."""
    return re.sub(r"\W", "_", name_expression)


def _strip_comments(code):
    """Blank out comments (keeping newlines, so line numbers stay)."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r"//[^\n]*|/\*.*?\*/", blank, code, flags=re.S)


_STATIC_SHARED = re.compile(r"\b__shared__\s+([^;{}()]*?)\b(\w+)\s*((?:\[[^\]]*\]\s*)*);")
_DYNAMIC_SHARED = re.compile(r"\bextern\s+__shared__\s+([^;{}]*?)\b(\w+)\s*\[\s*\]\s*;")


def _instrument_shared(code):
    """Append ``igc_emu::shared_declared(name, sizeof name);`` to function-scope __shared__
    declarations, on the same line, so the emulator can fill them with NaN once per block."""
    clean = _strip_comments(code)
    out, last = [], 0
    for m in _STATIC_SHARED.finditer(clean):
        depth = clean.count("{", 0, m.start()) - clean.count("}", 0, m.start())
        if depth <= 0 or clean[:m.start()].rstrip().endswith("extern"):
            continue  # file scope: the header's section attribute covers it; extern: dynamic
        out.append(code[last:m.end()])
        out.append(f" igc_emu::shared_declared({m.group(2)}, sizeof({m.group(2)}));")
        last = m.end()
    out.append(code[last:])
    # `extern __shared__` declares the dynamic array that the shim defines; drop the `static`
    # that the header's __shared__ macro would add (same length, so columns stay).
    return re.sub(r"\bextern(\s+)__shared__", lambda m: "extern" + m.group(1) + " " * 10, "".join(out))


def _shim(code, name_expressions):
    """Definitions of dynamic shared arrays, then one launch and one signature function per kernel."""
    lines = []
    dyn = {}
    for m in _DYNAMIC_SHARED.finditer(_strip_comments(code)):
        # `extern __shared__ __align__(16) unsigned char s[]`: the shim aligns every array to 16
        # already, and `sizeof(__align__(16) unsigned char)` would not compile
        dyn.setdefault(m.group(2), re.sub(r"__align__\s*\(\s*\d+\s*\)", "", m.group(1)).strip())
    for name, ctype in dyn.items():
        lines.append(f"{ctype} {name}[igc_emu::kDynamicSharedBytes / sizeof({ctype})] __attribute__((aligned(16)));")
    fills = "".join(f" memset({n}, 0xFF, bytes);" for n in dyn)
    lines.append(f"void igc_emu::fill_dynamic_shared(size_t bytes) {{{fills} }}")
    for expr in name_expressions:
        s = _symbol(expr)
        lines.append(
            f'extern "C" int igc_emu_launch_{s}(const unsigned* g, const unsigned* b, size_t shm, void** a, '
            f"char* err, size_t errlen) {{ return igc_emu::launch(&{expr}, g, b, shm, a, err, errlen); }}")
        lines.append(f'extern "C" const char* igc_emu_signature_{s}() {{ return igc_emu::signature(&{expr}); }}')
    return "\n".join(lines) + "\n"


def _check_platform():
    """The emulator places file-scope __shared__ arrays in a named ELF section and switches fiber
    contexts with x86-64 assembly or ucontext: Linux (any CPU) only. Elsewhere say so plainly."""
    if not sys.platform.startswith("linux"):
        raise EmulatorCompileError(
            f"the CUDA emulator (device 'emu') needs Linux: it relies on ELF sections and ucontext, "
            f"which {sys.platform} lacks. Use device 'cpu' (the same maths, tested equal to the kernels), "
            "or run the kernels' tests in a Linux machine or container")


def _compiler():
    _check_platform()
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    if path is None:
        raise EmulatorCompileError(
            f"the CUDA emulator needs a C++17 compiler: '{cxx}' was not found on PATH "
            "(install g++, or set CXX)")
    return path


def _compiler_version(cxx, _cache={}):
    if cxx not in _cache:
        _cache[cxx] = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    return _cache[cxx]


def build(code, name_expressions, filename="<kernel>"):
    """Compile ``code`` (with its launch shim) to a shared library; return its path (cached)."""
    cxx = _compiler()
    with open(HEADER) as f:
        header = f.read()
    text = (f'#include "{HEADER}"\n#line 1 "{filename}"\n{_instrument_shared(code)}\n'
            f'#line 1 "<igc_emu shim>"\n{_shim(code, name_expressions)}')
    key = hashlib.sha256("\0".join([header, text, " ".join(CXX_FLAGS), _compiler_version(cxx)])
                         .encode()).hexdigest()[:24]
    directory = cache_dir()
    lib = os.path.join(directory, f"{key}.so")
    if os.path.exists(lib):
        return lib
    os.makedirs(directory, exist_ok=True)
    # each process compiles from its own source file: a concurrent first compile elsewhere can
    # neither truncate it under our g++ nor see a half-written library
    fd, src = tempfile.mkstemp(suffix=".cpp", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    proc = subprocess.run([cxx, *CXX_FLAGS, "-o", tmp, src], capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        os.unlink(src)
        raise EmulatorCompileError(f"g++ failed on {filename}:\n{proc.stderr}")
    os.replace(src, os.path.join(directory, f"{key}.cpp"))  # kept beside the library, for debugging
    os.replace(tmp, lib)  # atomic: a concurrent process sees the whole library or none
    return lib


class EmuFunction:
    """One kernel instantiation; call it like a cupy.RawKernel: fn(grid, block, args, shared_mem=0)."""

    def __init__(self, lib, name_expression):
        self.name = name_expression
        s = _symbol(name_expression)
        self._launch = getattr(lib, f"igc_emu_launch_{s}")
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t,
                                 ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t]
        sig = getattr(lib, f"igc_emu_signature_{s}")
        sig.restype = ctypes.c_char_p
        text = sig().decode()
        self.signature = text.split(",") if text else []

    def _dims(self, what, dims):
        dims = tuple(int(d) for d in (dims if isinstance(dims, tuple) else (dims,)))
        if not 1 <= len(dims) <= 3 or min(dims) < 1:
            raise ValueError(f"{self.name}: {what} must be 1 to 3 positive ints, got {dims}")
        return (ctypes.c_uint * 3)(*(dims + (1,) * (3 - len(dims))))

    def _pack(self, args):
        """Check each argument against the C signature; return (void* array, objects to keep alive)."""
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments "
                            f"({', '.join(self.signature)}), got {len(args)}")
        ptrs = (ctypes.c_void_p * max(len(args), 1))()
        keep = []
        for i, (a, ctype) in enumerate(zip(args, self.signature)):
            if ctype.endswith("*"):
                want = _C_TO_NUMPY.get(ctype[:-1])
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: argument {i} ({ctype}) must be a numpy array, got {type(a).__name__}")
                if want is not None and a.dtype != want:
                    raise TypeError(f"{self.name}: argument {i} ({ctype}) must have dtype "
                                    f"{np.dtype(want)}, got {a.dtype}")
                if not a.flags.c_contiguous:
                    raise TypeError(f"{self.name}: argument {i} ({ctype}) must be C-contiguous")
                holder = ctypes.c_void_p(a.ctypes.data)
                keep.append(holder)
                ptrs[i] = ctypes.addressof(holder)
            else:
                want = _C_TO_NUMPY.get(ctype)
                if not isinstance(a, np.generic) or want is None or a.dtype != want:
                    got = type(a).__name__ if not isinstance(a, np.generic) else f"numpy.{a.dtype}"
                    raise TypeError(f"{self.name}: argument {i} ({ctype}) must be "
                                    f"numpy.{np.dtype(want) if want else '?'}, got {got}")
                box = np.array(a)
                keep.append(box)
                ptrs[i] = box.ctypes.data
        return ptrs, keep

    def __call__(self, grid, block, args, shared_mem=0):
        g, b = self._dims("grid", grid), self._dims("block", block)
        ptrs, keep = self._pack(tuple(args))
        err = ctypes.create_string_buffer(_ERRBUF)
        if self._launch(g, b, int(shared_mem), ptrs, err, _ERRBUF) != 0:
            raise EmulatorError(f"{self.name}: {err.value.decode(errors='replace')}")


class EmuModule:
    """The emulator's counterpart of cupy.RawModule(code=..., name_expressions=...)."""

    def __init__(self, code, name_expressions, filename="<kernel>"):
        self.name_expressions = list(name_expressions)
        self.path = build(code, self.name_expressions, filename)
        if self.path not in _compiled:
            _compiled[self.path] = ctypes.CDLL(self.path)
        self._lib = _compiled[self.path]
        self._functions = {}

    def get_function(self, name_expression):
        if name_expression not in self.name_expressions:
            raise KeyError(f"{name_expression!r} is not one of {self.name_expressions}")
        if name_expression not in self._functions:
            self._functions[name_expression] = EmuFunction(self._lib, name_expression)
        return self._functions[name_expression]
