"""A minimal ctypes binding to NVRTC, to compile the .cu files to PTX without CuPy or a GPU.

libnvrtc is found by ``cuda.pathfinder`` (the ``cuda-pathfinder`` package, a dependency of CuPy 14
and of our `test` extra): NVIDIA's own search, which knows every wheel layout (CUDA 12's
``site-packages/nvidia/cuda_nvrtc/lib``, CUDA 13's ``site-packages/nvidia/cu13/lib``), conda,
the loader's path and $CUDA_PATH / $CUDA_HOME, and which loads ``libnvrtc-builtins.so.X.Y`` beside
libnvrtc first (libnvrtc alone fails on it at the first compile). Without cuda-pathfinder only
the loader's own search is tried (``libnvrtc.so.13``, ``.12``: a system CUDA on LD_LIBRARY_PATH).
``compile_ptx(code, arch, name_expressions)`` returns (ptx, {name expression: lowered name}, log)
or raises NVRTCError with the program log.
"""
import ctypes


class NVRTCError(RuntimeError):
    """Compilation failed; the message holds NVRTC's program log."""


# sonames the loader knows when cuda.pathfinder is not installed (newest first)
_SONAMES = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so")
INSTALL_HINT = ("pip install cuda-pathfinder and one of nvidia-cuda-nvrtc (CUDA 13), "
                "nvidia-cuda-nvrtc-cu12 (CUDA 12), or the `cuda`/`cuda13` extra")


def _find():
    """(absolute path or soname, how it was found) of libnvrtc, or (None, why not)."""
    try:
        from cuda import pathfinder
    except ImportError:
        pathfinder = None
    if pathfinder is not None:
        try:
            # loads libnvrtc-builtins too; the handle is cached and shared: never closed
            found = pathfinder.load_nvidia_dynamic_lib("nvrtc")
            return found.abs_path, f"cuda.pathfinder ({found.found_via})"
        except Exception as e:  # DynamicLibNotFoundError and friends: say why below
            return None, f"cuda.pathfinder found no libnvrtc: {e}"
    for name in _SONAMES:
        try:
            ctypes.CDLL(name)
            return name, "the dynamic loader (cuda-pathfinder is not installed)"
        except OSError:
            continue
    return None, "cuda-pathfinder is not installed and the dynamic loader knows no libnvrtc"


_lib = None
_why_not = None


def load():
    """The loaded libnvrtc (cached), or None when none can be found (``why_not()`` says why)."""
    global _lib, _why_not
    if _lib is None:
        path, how = _find()
        if path is None:
            _why_not = how
            return None
        try:
            lib = ctypes.CDLL(path)
            lib.nvrtcVersion  # noqa: B018 - raises AttributeError if this is not NVRTC
        except (OSError, AttributeError) as e:
            _why_not = f"{path} (found by {how}) does not load as NVRTC: {e}"
            return None
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetLoweredName.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
        lib._igc_path, lib._igc_found_by = path, how
        _lib = lib
    return _lib


def why_not():
    """Why ``load()`` returned None (None after a successful load)."""
    return None if _lib is not None else _why_not


def version():
    lib = load()
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def _check(lib, status, what):
    if status != 0:
        raise NVRTCError(f"{what}: {lib.nvrtcGetErrorString(status).decode()}")


def compile_ptx(code, arch="compute_80", name_expressions=(), filename="kernel.cu", options=("-std=c++14",)):
    """Compile CUDA C++ `code` for virtual architecture `arch`; return (ptx text, lowered names, log)."""
    lib = load()
    if lib is None:
        raise NVRTCError(f"libnvrtc not found: {why_not()} ({INSTALL_HINT})")
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), filename.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        for expr in name_expressions:
            _check(lib, lib.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr})")
        opts = [f"--gpu-architecture={arch}".encode()] + [o.encode() for o in options]
        status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if status != 0:
            raise NVRTCError(f"{filename} ({arch}) failed to compile: "
                             f"{lib.nvrtcGetErrorString(status).decode()}\n{log.value.decode(errors='replace')}")
        lowered = {}
        for expr in name_expressions:
            name = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(name)), f"lowered name of {expr}")
            lowered[expr] = name.value.decode()
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        return ptx.value.decode(), lowered, log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
