"""A minimal ctypes binding to NVRTC, to compile the .cu files to PTX without CuPy or a GPU.

libnvrtc is looked for in the pip wheel ``nvidia-cuda-nvrtc-cu12`` (site-packages/nvidia/cuda_nvrtc/
lib), then in $CUDA_HOME / $CUDA_PATH / /usr/local/cuda, then on the loader's search path.
``compile_ptx(code, arch, name_expressions)`` returns (ptx, {name expression: lowered name}, log)
or raises NVRTCError with the program log.
"""
import ctypes
import glob
import os


class NVRTCError(RuntimeError):
    """Compilation failed; the message holds NVRTC's program log."""


def _candidates():
    try:
        import nvidia  # namespace package of the NVIDIA pip wheels
        for root in list(nvidia.__path__):
            yield from sorted(glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            yield from sorted(glob.glob(os.path.join(os.environ[env], "lib64", "libnvrtc.so*")))
    yield from sorted(glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*"))
    yield from ("libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12")


_lib = None


def load():
    """The loaded libnvrtc (cached), or None when none can be found."""
    global _lib
    if _lib is None:
        for path in _candidates():
            if "builtins" in os.path.basename(path) or ".alt." in os.path.basename(path):
                continue  # helper libraries of NVRTC, not NVRTC itself
            try:
                lib = ctypes.CDLL(path)
                lib.nvrtcVersion  # noqa: B018 - raises AttributeError if this is not NVRTC
            except (OSError, AttributeError):
                continue
            lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            lib.nvrtcGetLoweredName.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
            lib._igc_path = path
            _lib = lib
            break
    return _lib


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
        raise NVRTCError("libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12)")
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
