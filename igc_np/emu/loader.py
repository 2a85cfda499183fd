"""Compile a CUDA kernel source with g++ against cuda_emu.h and launch its kernels on the CPU.

``EmuModule(code, name_expressions)`` mirrors ``cupy.RawModule(code=..., name_expressions=...)``:
``get_function("conv2d_forward<float>")`` returns a function called as
``fn((gx, gy, gz), (bx, by, bz), (arg1, arg2, ...), shared_mem=0)``, with numpy arrays for pointer
parameters and numpy scalars of the exact C type (numpy.int32 for int) for the others. Unlike CuPy,
the emulator checks every argument against the kernel's C signature.

Each launch is checked against the limits of a GPU (sm_90) before it runs, as the CUDA driver
would refuse it (CUDA_ERROR_INVALID_VALUE), but with an error naming the kernel, the launch and
the limit: threads per block against the kernel's ``__launch_bounds__`` (1024 without), block
dimensions (x, y <= 1024, z <= 64), grid dimensions (x < 2**31, y, z <= 65535), static + dynamic
shared memory against 48 KB, or with the opt-in (``fn.max_dynamic_shared_size_bytes = n``, CUDA's
cudaFuncAttributeMaxDynamicSharedMemorySize) against 227 KB. With IGC_NP_EMU_SANITIZE=1 the
kernels are built with the checks of cuda_emu.h's sanitizer (out-of-bounds global and shared
accesses, uninitialised shared reads, shared-memory races).

The shared library is cached under $IGC_NP_CACHE/emu (default ~/.cache/igc_np/emu), keyed by a
hash of the generated source (which includes the header), the flags and the compiler version.
The folder is made private (0700); a folder or library that another user owns or may write is
not used (a warning, then a private temporary folder), and a library is loaded only when its
sha256 equals the one recorded beside it when it was built.
"""
import atexit
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import stat
import tempfile
import warnings

import numpy as np

EXPORT = 'extern "C" __attribute__((visibility("default")))'  # the shim's entry points, for ctypes
HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emu.h")
# -fvisibility=hidden -fno-gnu-unique: each library keeps its own emulator state (the scheduler, the
# sanitizer's shadow, the __shared__ registry). g++ makes C++17 inline variables process-wide
# STB_GNU_UNIQUE symbols, so without these flags every library loaded into one process bound to the
# first one's state (built perhaps with other flags); the sanitizer's range of __shared__ arrays then
# spanned several libraries and the fiber stacks between them, and runs crashed now and then.
# Only the igc_emu_* entry points below are exported (EXPORT).
ISOLATE_FLAGS = ("-fvisibility=hidden",
                 "-fstack-clash-protection")  # large frames probe each page: they hit a stack's guard page
GCC_ISOLATE_FLAGS = ("-fno-gnu-unique",)  # libstdc++'s own statics too; clang has no unique symbols nor this option
CXX_FLAGS = ("-std=c++17", "-O2", "-shared", "-fPIC", "-w", *ISOLATE_FLAGS)
# Sanitizer build: compiled with ThreadSanitizer's and UBSan's instrumentation, whose hooks
# cuda_emu.h defines; linked without their run-time libraries (-z defs: every hook is ours). g++
# only (its tsan parameters, its UBSan data layout).
SANITIZE_FLAGS = ("-std=c++17", "-O2", "-g1", "-gdwarf-4", "-fno-optimize-sibling-calls", "-fPIC", "-w",
                  "-fno-threadsafe-statics", *ISOLATE_FLAGS, *GCC_ISOLATE_FLAGS,
                  "-DIGC_EMU_SANITIZE",
                  "-fsanitize=thread,bounds",
                  "-fno-sanitize-recover=bounds", "--param=tsan-instrument-func-entry-exit=0")
SANITIZE_LINK = ("-shared", "-Wl,-z,defs", "-ldl")
SANITIZE_ENV = "IGC_NP_EMU_SANITIZE"

# The limits of a launch on sm_90 (CUDA C Programming Guide, "Compute Capabilities", table 21)
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2 ** 31 - 1, 65535, 65535)
DEFAULT_SHARED_BYTES = 48 * 1024   # static + dynamic, without the opt-in
OPT_IN_SHARED_BYTES = 232448       # 227 KB: with cudaFuncAttributeMaxDynamicSharedMemorySize

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
    """A kernel launch failed in the emulator (deadlock, invalid launch configuration, or in
    sanitizer mode an out-of-bounds access, an uninitialised shared read, a race)."""


class LaunchLimitError(EmulatorError, ValueError):
    """A launch a GPU refuses (CUDA_ERROR_INVALID_VALUE: invalid argument): over a limit."""


def sanitizing():
    """True when IGC_NP_EMU_SANITIZE=1: kernels built from now on are sanitized, and launchers
    should fill their outputs with NaN before a launch so that an element no thread writes shows."""
    value = os.environ.get(SANITIZE_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{SANITIZE_ENV} must be 1 (sanitizer on) or 0 / unset (off), got {value!r}")
    return value == "1"


class EmulatorCompileError(RuntimeError):
    """g++ rejected the kernel source; the message holds the compiler output."""


def cache_dir():
    """The configured cache folder of compiled kernels (not checked: see private_cache_dir)."""
    root = os.environ.get("IGC_NP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "igc_np")
    return os.path.join(root, "emu")


def _unsafe(st, what):
    """Why a folder or file with stat `st` may hold another user's code, or None."""
    if st.st_uid != os.geteuid():
        return f"{what} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"{what} is writable by {'group and others' if st.st_mode & 0o002 else 'its group'} " \
               f"(mode {stat.S_IMODE(st.st_mode):04o})"
    return None


_temp = []  # the private temporary cache of this process, when the configured one is unsafe


def _temporary_cache():
    if not _temp:
        _temp.append(tempfile.mkdtemp(prefix="igc_np_emu_"))  # 0700, ours
        atexit.register(shutil.rmtree, _temp[0], True)
    return _temp[0]


def private_cache_dir():
    """cache_dir(), created 0700, when it and its parent are safe to load libraries from; else a
    warning and a private temporary folder of this process. Another user who can write the cache
    could plant a library whose constructor runs in our process."""
    directory = cache_dir()
    try:
        os.makedirs(os.path.dirname(directory), mode=0o700, exist_ok=True)  # the root too, if we make it
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.stat(directory)
        problem = _unsafe(st, f"the compile cache {directory}")
        parent = os.stat(os.path.dirname(directory))
        if problem is None and parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
            problem = f"its parent folder is writable by others without the sticky bit " \
                      f"(mode {stat.S_IMODE(parent.st_mode):04o})"
        if problem is None and stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(directory, 0o700)  # ours: keep other users from reading or listing it too
    except OSError as e:
        problem = f"it cannot be created or checked ({e})"
    if problem is None:
        return directory
    warnings.warn(f"igc_np.emu: not using the compile cache {directory}: {problem}. Building in a private "
                  "temporary folder instead; set IGC_NP_CACHE to a folder only you can write.", stacklevel=3)
    return _temporary_cache()


def _open_verified(lib):
    """A read-only descriptor of the cached library `lib` when it is a regular file of ours that
    only we can write and its sha256 equals the one recorded at build time (lib + ".sha256");
    else None (missing), after a warning when it exists but fails a check."""
    try:
        fd = os.open(lib, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None  # not built yet (or a symbolic link: never followed)
    try:
        st = os.fstat(fd)
        problem = _unsafe(st, "it") if stat.S_ISREG(st.st_mode) else "it is not a regular file"
        if problem is None:
            try:
                with open(lib + ".sha256", "rb") as f:
                    sst = os.fstat(f.fileno())
                    problem = _unsafe(sst, "its recorded hash") or (None if stat.S_ISREG(sst.st_mode) else "x")
                    recorded = f.read(200).decode("ascii", "replace").strip()
            except OSError:
                recorded, problem = None, "its recorded hash (.sha256) is missing"
        if problem is None:
            digest = hashlib.sha256()
            for chunk in iter(lambda: os.read(fd, 1 << 20), b""):
                digest.update(chunk)
            if digest.hexdigest() != recorded:
                problem = "its sha256 differs from the one recorded when it was built"
        if problem is None:
            return fd
    except OSError as e:
        problem = str(e)
    os.close(fd)
    warnings.warn(f"igc_np.emu: not loading the cached library {lib}: {problem}; building it again", stacklevel=4)
    return None


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
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(?![\w(])[ \t]*(.*)$", re.M)
_NOT_A_NAME = {"__launch_bounds__", "__align__", "__attribute__", "__declspec", "if", "for", "while", "switch"}


def _balanced(text, start):
    """Index just past the bracket that closes text[start] ('(' or '<')."""
    pairs = {"(": ")", "<": ">"}
    close, depth = pairs[text[start]], 0
    for i in range(start, len(text)):
        if text[i] == text[start]:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced brackets")


def _expand(text, macros, depth=0):
    """Expand the object-like macros of the source (#define NAME body) in `text`."""
    out = re.sub(r"\b\w+\b", lambda m: f" {macros[m.group(0)]} " if m.group(0) in macros else m.group(0), text)
    return out if out == text or depth > 20 else _expand(out, macros, depth + 1)


class _Kernel:
    """A __global__ function of the source: name, template parameter list (None: not a template),
    template parameter names, the first argument of its __launch_bounds__ (None: none), body span."""

    def __init__(self, name, tparams, bounds, body):
        self.name, self.tparams, self.bounds, self.body = name, tparams, bounds, body
        self.tnames = [] if tparams is None else [
            re.findall(r"(\w+)\s*(?:=.*)?$", p.strip())[0] for p in _split_top(tparams)]


def _split_top(text):
    """Split at the commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "(<[" and 1 or ch in ")>]" and -1 or 0
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur] if cur.strip() else parts


def _kernels(clean):
    """{name: _Kernel} of the __global__ functions defined in the comment-free source `clean`."""
    macros = dict(_DEFINE.findall(clean))
    kernels = {}
    for m in re.finditer(r"\b__global__\b", clean):
        # the declaration runs from the end of the previous statement or block to its body's '{'
        start = max(clean.rfind(c, 0, m.start()) for c in ";{}") + 1
        head_end = clean.find("{", m.end())
        if head_end < 0 or ";" in clean[m.end():head_end].split(")")[-1]:
            continue  # a declaration without a body
        # preprocessor lines blanked (same length: offsets into head stay those of clean)
        head = re.sub(r"^[ \t]*#.*$", lambda d: " " * len(d.group(0)), clean[start:head_end], flags=re.M)
        tparams = None
        t = [x for x in re.finditer(r"\btemplate\s*<", head) if x.start() < m.start() - start]
        if t:
            lt = t[-1].end() - 1
            tparams = head[lt + 1:_balanced(head, lt) - 1]
        expanded = _expand(head, macros)
        bounds = None
        lb = re.search(r"\b__launch_bounds__\s*\(", expanded)
        if lb:
            bounds = _split_top(expanded[lb.end():_balanced(expanded, lb.end() - 1) - 1])[0].strip()
        name = next((n for n in re.findall(r"\b(\w+)\s*\(", head[m.start() - start:]) if n not in _NOT_A_NAME), None)
        if name is None:
            continue
        end = _balanced(clean.replace("{", "(").replace("}", ")"), head_end)
        kernels[name] = _Kernel(name, tparams, bounds, (head_end, end))
    return kernels


def _instrument_shared(code, kernels):
    """Append ``igc_emu::shared_declared(name, sizeof name, "name");`` to function-scope
    __shared__ declarations, on the same line, so the emulator fills them with NaN once per block
    (and the sanitizer names them); in a kernel's own body also the registration of its bytes as
    the kernel's static shared memory (read by the loader before a launch)."""
    clean = _strip_comments(code)
    out, last = [], 0
    for m in _STATIC_SHARED.finditer(clean):
        depth = clean.count("{", 0, m.start()) - clean.count("}", 0, m.start())
        if depth <= 0 or clean[:m.start()].rstrip().endswith("extern"):
            continue  # file scope: the header's section attribute covers it; extern: dynamic
        name = m.group(2)
        out.append(code[last:m.end()])
        out.append(f' igc_emu::shared_declared((void*)&{name}, sizeof({name}), "{name}");')  # & : scalars too
        k = next((k for k in kernels.values() if k.body[0] < m.start() < k.body[1]), None)
        if k is not None:
            ref = f"&{k.name}<{', '.join(k.tnames)}>" if k.tparams is not None else f"&{k.name}"
            out.append(f" igc_emu::touch(&igc_emu::StaticShared<{ref}, {m.start()}, sizeof({name})>::token);")
        last = m.end()
    out.append(code[last:])
    # `extern __shared__` declares the dynamic array that the shim defines; drop the `static`
    # that the header's __shared__ macro would add (same length, so columns stay).
    return re.sub(r"\bextern(\s+)__shared__", lambda m: "extern" + m.group(1) + " " * 10, "".join(out))


def _file_scope_shared(clean):
    """Names of the file-scope (static, not extern) __shared__ arrays."""
    names = []
    for m in _STATIC_SHARED.finditer(clean):
        depth = clean.count("{", 0, m.start()) - clean.count("}", 0, m.start())
        if depth <= 0 and not clean[:m.start()].rstrip().endswith("extern"):
            names.append(m.group(2))
    return names


def _shim(code, name_expressions):
    """Dynamic shared arrays (aliases of one storage), then per kernel instantiation: its launch,
    its signature, its thread limit (__launch_bounds__) and its static shared memory bytes."""
    clean = _strip_comments(code)
    kernels = _kernels(clean)
    file_scope = _file_scope_shared(clean)
    lines = []
    dyn = {}
    for m in _DYNAMIC_SHARED.finditer(clean):
        # `extern __shared__ __align__(16) unsigned char s[]`: the storage is 16-aligned already,
        # and `sizeof(__align__(16) unsigned char)` would not compile
        dyn.setdefault(m.group(2), re.sub(r"__align__\s*\(\s*\d+\s*\)", "", m.group(1)).strip())
    for name, ctype in dyn.items():
        lines.append(f'extern {ctype} {name}[] __attribute__((alias("igc_emu_dynamic_storage")));')
    for k in kernels.values():
        if k.bounds is not None and k.tparams is not None:
            lines.append(f"template <{k.tparams}> constexpr long long igc_emu_bounds_{k.name}() "
                         f"{{ return (long long)({k.bounds}); }}")
    for expr in name_expressions:
        s = _symbol(expr)
        base = expr.split("<")[0].strip()
        k = kernels.get(base)
        if k is None or k.bounds is None:
            bounds = str(MAX_THREADS_PER_BLOCK)
        elif k.tparams is None:
            bounds = f"(long long)({k.bounds})"
        else:
            bounds = f"igc_emu_bounds_{base}<{expr[expr.index('<') + 1:expr.rindex('>')]}>()"
        used = [n for n in file_scope if k is not None and re.search(rf"\b{n}\b", clean[k.body[0]:k.body[1]])]
        lines.append(
            f'{EXPORT} int igc_emu_launch_{s}(const unsigned* g, const unsigned* b, size_t shm, size_t limit, '
            f"void** a, const unsigned long long* ext, char* err, size_t errlen) "
            f"{{ return igc_emu::launch(&{expr}, g, b, shm, limit, a, ext, err, errlen); }}")
        lines.append(f'{EXPORT} const char* igc_emu_signature_{s}() {{ return igc_emu::signature(&{expr}); }}')
        lines.append(f'{EXPORT} long long igc_emu_max_threads_{s}() {{ return {bounds}; }}')
        lines.append(f'{EXPORT} unsigned long long igc_emu_static_shared_{s}() {{ return '
                     f'igc_emu::static_shared_bytes(reinterpret_cast<const void*>(&{expr}))'
                     + "".join(f" + sizeof({n})" for n in used) + "; }")
        text = k.bounds if k is not None and k.bounds else ""
        lines.append(f'{EXPORT} const char* igc_emu_bounds_text_{s}() {{ return "{text}"; }}')
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


def compile_flags(cxx, sanitize):
    """The flags of a compile with `cxx`: the sanitizer's, or CXX_FLAGS (+ g++'s -fno-gnu-unique)."""
    if sanitize:
        return SANITIZE_FLAGS
    return CXX_FLAGS + (() if "clang" in _compiler_version(cxx) else GCC_ISOLATE_FLAGS)


def build(code, name_expressions, filename="<kernel>", sanitize=False):
    """Compile ``code`` (with its launch shim) to a shared library; return (path, open descriptor
    of the verified library). Cached by a hash of everything that goes into the compile."""
    cxx = _compiler()
    with open(HEADER) as f:
        header = f.read()
    kernels = _kernels(_strip_comments(code))
    text = (f'#include "{HEADER}"\n#line 1 "{filename}"\n{_instrument_shared(code, kernels)}\n'
            f'#line 1 "<igc_emu shim>"\n{_shim(code, name_expressions)}')
    flags = compile_flags(cxx, sanitize)
    if sanitize:
        flags += SANITIZE_LINK
    key = hashlib.sha256("\0".join([header, text, " ".join(flags), _compiler_version(cxx)])
                         .encode()).hexdigest()[:24]
    directory = private_cache_dir()
    lib = os.path.join(directory, f"{key}.so")
    fd = _open_verified(lib)
    if fd is not None:
        return lib, fd
    # each process compiles from its own source file: a concurrent first compile elsewhere can
    # neither truncate it under our g++ nor see a half-written library
    fd, src = tempfile.mkstemp(suffix=".cpp", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    if sanitize:  # two steps: linking with -fsanitize would pull in libtsan, which cannot be dlopen'ed
        obj = tmp[:-3] + ".o"
        steps = [[cxx, *SANITIZE_FLAGS, "-c", "-o", obj, src], [cxx, "-o", tmp, obj, *SANITIZE_LINK]]
    else:
        obj, steps = None, [[cxx, *flags, "-o", tmp, src]]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            for path in (tmp, src, obj):
                if path and os.path.exists(path):
                    os.unlink(path)
            raise EmulatorCompileError(f"g++ failed on {filename}:\n{proc.stderr}")
    if obj:
        os.unlink(obj)
    os.chmod(tmp, 0o700)  # the linker creates it with 0777 & ~umask
    with open(tmp, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    fd, side = tempfile.mkstemp(suffix=".sha256", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(digest + "\n")
    os.replace(src, os.path.join(directory, f"{key}.cpp"))  # kept beside the library, for debugging
    os.replace(side, lib + ".sha256")  # atomic, each: a concurrent reader sees whole files; a
    os.replace(tmp, lib)               # library and a hash from two builds differ: built again
    fd = _open_verified(lib)
    if fd is None:
        raise EmulatorCompileError(f"the library just built, {lib}, fails its own check (see the warning)")
    return lib, fd


_PC = re.compile(r" \[pc \+0x([0-9a-f]+)\]")


def _source_line(lib, message):
    """Replace the " [pc +0x...]" of a sanitizer message by " at file:line" (addr2line, when
    installed; the sanitizer build carries line tables)."""
    m = _PC.search(message)
    if not m:
        return message
    where = ""
    tool = shutil.which("addr2line")
    if tool:
        out = subprocess.run([tool, "-e", lib, "-i", hex(int(m.group(1), 16))], capture_output=True, text=True).stdout
        lines = [ln.split(" (discriminator")[0] for ln in out.splitlines() if ln and not ln.startswith("??")]
        # addr2line -i lists the inlined frames innermost first: the first one in the kernel's file
        ours = [ln for ln in lines if not re.search(r"cuda_emu\.h:|<igc_emu shim>|/tmp\w+\.cpp:", ln)]
        if ours or lines:
            where = (ours or lines)[0]
            cwd = os.getcwd() + os.sep  # addr2line puts the compile folder before a relative name
            if where.startswith(cwd) and not os.path.exists(where.rsplit(":", 1)[0]):
                where = where[len(cwd):]
            where = " at " + where
    return message[:m.start()] + where + message[m.end():]


class EmuFunction:
    """One kernel instantiation; call it like a cupy.RawKernel: fn(grid, block, args, shared_mem=0).

    Attributes as CuPy's RawKernel names them: ``max_threads_per_block`` (the kernel's
    __launch_bounds__, or 1024), ``shared_size_bytes`` (its static shared memory),
    ``max_dynamic_shared_size_bytes`` (settable: the opt-in to more than 48 KB)."""

    def __init__(self, lib, name_expression, path):
        self.name = name_expression
        self._path = path
        s = _symbol(name_expression)
        self._launch = getattr(lib, f"igc_emu_launch_{s}")
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t,
                                 ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                                 ctypes.POINTER(ctypes.c_ulonglong), ctypes.c_char_p, ctypes.c_size_t]
        sig = getattr(lib, f"igc_emu_signature_{s}")
        sig.restype = ctypes.c_char_p
        text = sig().decode()
        self.signature = text.split(",") if text else []
        threads = getattr(lib, f"igc_emu_max_threads_{s}")
        threads.restype = ctypes.c_longlong
        self._bounds = int(threads())
        bounds_text = getattr(lib, f"igc_emu_bounds_text_{s}")
        bounds_text.restype = ctypes.c_char_p
        self._bounds_text = bounds_text().decode()
        self._static_shared = getattr(lib, f"igc_emu_static_shared_{s}")
        self._static_shared.restype = ctypes.c_ulonglong
        self._max_dynamic = None  # not opted in

    @property
    def max_threads_per_block(self):
        return min(self._bounds, MAX_THREADS_PER_BLOCK)

    @property
    def shared_size_bytes(self):
        """Static shared memory of the kernel (arrays a __device__ function declares count once a
        launch has passed them)."""
        return int(self._static_shared())

    @property
    def max_dynamic_shared_size_bytes(self):
        if self._max_dynamic is None:
            return max(DEFAULT_SHARED_BYTES - self.shared_size_bytes, 0)
        return self._max_dynamic

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        value = int(value)
        static = self.shared_size_bytes
        if value < 0 or static + value > OPT_IN_SHARED_BYTES:
            raise LaunchLimitError(
                f"{self.name}: max_dynamic_shared_size_bytes={value} is not allowed: with its {static} bytes of "
                f"static shared memory at most {OPT_IN_SHARED_BYTES - static} (227 KB = {OPT_IN_SHARED_BYTES} bytes "
                f"per block on sm_90); a GPU refuses it (CUDA_ERROR_INVALID_VALUE)")
        self._max_dynamic = value

    def _dims(self, what, dims, limits):
        if not isinstance(dims, tuple) or not 1 <= len(dims) <= 3 \
                or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
            raise TypeError(f"{self.name}: {what} must be a tuple of 1 to 3 ints (as cupy's RawKernel takes it), "
                            f"got {dims!r}")
        dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
        if min(dims) < 1:
            raise LaunchLimitError(f"{self.name}: {what} {dims} has a dimension < 1 (CuPy would launch it as 1, "
                                   "running a block or thread the launcher did not plan)")
        for axis, d, most in zip("xyz", dims, limits):
            if d > most:
                raise LaunchLimitError(f"{self.name}: {what} {dims}: {what}Dim.{axis} = {d} is over the GPU's limit "
                                       f"of {most}; a GPU refuses this launch (CUDA_ERROR_INVALID_VALUE)")
        return dims

    def check_launch(self, grid, block, shared_mem=0):
        """Raise LaunchLimitError when a GPU would refuse kernel<<<grid, block, shared_mem>>>;
        return (grid, block) as 3-tuples. The launch itself checks the same."""
        grid, block = self._dims("grid", grid, MAX_GRID), self._dims("block", block, MAX_BLOCK)
        launch = f"{self.name}: launch grid {grid} block {block} shared_mem={shared_mem}"
        threads = block[0] * block[1] * block[2]
        if threads > self.max_threads_per_block:
            why = (f"its __launch_bounds__({self._bounds_text})" if self._bounds < MAX_THREADS_PER_BLOCK
                   else "the GPU's limit")
            raise LaunchLimitError(f"{launch} has {threads} threads per block, over the {self.max_threads_per_block} "
                                   f"of {why}; a GPU refuses this launch (CUDA_ERROR_INVALID_VALUE: invalid argument)")
        if not isinstance(shared_mem, (int, np.integer)) or shared_mem < 0:
            raise TypeError(f"{launch}: shared_mem must be an int >= 0")
        static = self.shared_size_bytes
        if static > DEFAULT_SHARED_BYTES:
            raise LaunchLimitError(f"{launch}: {static} bytes of static shared memory are over 48 KB "
                                   f"({DEFAULT_SHARED_BYTES} bytes): ptxas refuses to compile it")
        if shared_mem > self.max_dynamic_shared_size_bytes:
            if self._max_dynamic is None:
                raise LaunchLimitError(
                    f"{launch}: static {static} + dynamic {shared_mem} = {static + shared_mem} bytes of shared memory "
                    f"is over the 48 KB ({DEFAULT_SHARED_BYTES} bytes) a block may use without the opt-in; set "
                    f"fn.max_dynamic_shared_size_bytes (cudaFuncAttributeMaxDynamicSharedMemorySize) to at least "
                    f"{shared_mem} (at most {OPT_IN_SHARED_BYTES - static}); a GPU refuses this launch "
                    "(CUDA_ERROR_INVALID_VALUE)")
            raise LaunchLimitError(
                f"{launch}: dynamic shared memory {shared_mem} bytes is over the function's "
                f"max_dynamic_shared_size_bytes={self._max_dynamic} (static {static}; at most "
                f"{OPT_IN_SHARED_BYTES} bytes in all on sm_90); a GPU refuses this launch (CUDA_ERROR_INVALID_VALUE)")
        return grid, block

    def _pack(self, args):
        """Check each argument against the C signature; return (void* array, extents, objects to keep alive)."""
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments "
                            f"({', '.join(self.signature)}), got {len(args)}")
        n = max(len(args), 1)
        ptrs = (ctypes.c_void_p * n)()
        extents = (ctypes.c_ulonglong * n)()
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
                extents[i] = a.nbytes
            else:
                want = _C_TO_NUMPY.get(ctype)
                if not isinstance(a, np.generic) or want is None or a.dtype != want:
                    got = type(a).__name__ if not isinstance(a, np.generic) else f"numpy.{a.dtype}"
                    raise TypeError(f"{self.name}: argument {i} ({ctype}) must be "
                                    f"numpy.{np.dtype(want) if want else '?'}, got {got}")
                box = np.array(a)
                keep.append(box)
                ptrs[i] = box.ctypes.data
        return ptrs, extents, keep

    def __call__(self, grid, block, args, *, shared_mem=0):
        grid, block = self.check_launch(grid, block, shared_mem)
        ptrs, extents, keep = self._pack(tuple(args))
        limit = DEFAULT_SHARED_BYTES if self._max_dynamic is None else OPT_IN_SHARED_BYTES
        err = ctypes.create_string_buffer(_ERRBUF)
        if self._launch((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), int(shared_mem), limit,
                        ptrs, extents, err, _ERRBUF) != 0:
            message = f"{self.name} <<<grid {grid}, block {block}, shared_mem {int(shared_mem)}>>>: " \
                      f"{err.value.decode(errors='replace')}"
            raise EmulatorError(_source_line(self._path, message))


class EmuModule:
    """The emulator's counterpart of cupy.RawModule(code=..., name_expressions=...).

    sanitize: build with the sanitizer's checks (None: when IGC_NP_EMU_SANITIZE=1)."""

    def __init__(self, code, name_expressions, filename="<kernel>", sanitize=None):
        self.name_expressions = list(name_expressions)
        self.sanitize = sanitizing() if sanitize is None else bool(sanitize)
        self.path, fd = build(code, self.name_expressions, filename, self.sanitize)
        try:
            if self.path not in _compiled:
                checked = os.fstat(fd)
                lib = ctypes.CDLL(self.path)
                now = os.stat(self.path)
                if (now.st_dev, now.st_ino) != (checked.st_dev, checked.st_ino):  # replaced meanwhile
                    raise EmulatorCompileError(f"{self.path} was replaced while it was being loaded")
                _compiled[self.path] = lib
        finally:
            os.close(fd)
        self._lib = _compiled[self.path]
        self._functions = {}

    def get_function(self, name):
        if name not in self.name_expressions:
            raise KeyError(f"{name!r} is not one of {self.name_expressions}")
        if name not in self._functions:
            self._functions[name] = EmuFunction(self._lib, name, self.path)
        return self._functions[name]
