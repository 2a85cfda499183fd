"""What the GPU would run, without a GPU: ptxas resource usage and the SASS of every kernel.

``resources(filename, dtype, arch)`` compiles one .cu file of this package with NVRTC to PTX, then
with ``ptxas -v`` to a cubin, and returns {name expression: Resources}. ``inner_loop(expr, ...)``
reads the SASS (``cuobjdump -sass``, which needs ``nvdisasm``) and finds the innermost loop that
does multiply-adds: the instructions of its body and how many of them are FFMA/DFMA.

Tools are looked for on PATH, then in the NVIDIA pip wheels (``nvidia-cuda-cuobjdump`` and
``nvidia-cuda-nvdisasm`` install into site-packages/nvidia/cu13/bin). ``tools_missing()`` names
what is absent, so callers can skip with a reason.
"""
import dataclasses
import functools
import glob
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from . import nvrtc
from .loader import c_type, name_expressions, read_source


@dataclasses.dataclass
class Resources:
    registers: int
    stack: int          # bytes of stack frame
    spill_stores: int   # bytes
    spill_loads: int    # bytes
    shared: int         # bytes of static shared memory (dynamic comes at launch)


def _wheel_bins():
    try:
        import nvidia
        for root in nvidia.__path__:
            yield from sorted(glob.glob(os.path.join(root, "*", "bin")))
    except ImportError:
        return


def tool(name):
    """Path of a CUDA binary tool (ptxas, cuobjdump, nvdisasm), or None."""
    path = shutil.which(name)
    if path:
        return path
    for d in _wheel_bins():
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def tools_missing(*names):
    """A sentence naming the missing tools (and how to get them), or '' when all are there."""
    missing = [n for n in names if tool(n) is None]
    if nvrtc.load() is None:
        missing.append("libnvrtc (pip install nvidia-cuda-nvrtc-cu12)")
    if not missing:
        return ""
    return ("missing: " + ", ".join(missing) + " (ptxas from a CUDA toolkit; pip install nvidia-cuda-cuobjdump "
            "nvidia-cuda-nvdisasm for cuobjdump and nvdisasm)")


@functools.lru_cache(maxsize=None)
def cubin(filename, dtype, arch="sm_90"):
    """(cubin bytes, ptxas -v log, {name expression: mangled name}) of one .cu file for one dtype."""
    code, _ = read_source(filename)
    exprs = name_expressions(filename, c_type(dtype))
    ptx, lowered, _ = nvrtc.compile_ptx(code, "compute_" + arch[3:], exprs, filename)
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([tool("ptxas"), f"-arch={arch}", "-v", src, "-o", out],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas failed on {filename} ({arch}, {np.dtype(dtype)}):\n{proc.stderr}")
        with open(out, "rb") as f:
            return f.read(), proc.stderr, lowered


def resources(filename, dtype, arch="sm_90"):
    """{name expression: Resources} from ptxas -v."""
    _, log, lowered = cubin(filename, np.dtype(dtype), arch)
    by_mangled = {v: k for k, v in lowered.items()}
    out, current, fields = {}, None, {}
    for line in log.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?(\w+)'?", line)
        if m and m.group(1) in by_mangled:
            current = by_mangled[m.group(1)]
            fields = out.setdefault(current, dict(registers=0, stack=0, spill_stores=0, spill_loads=0, shared=0))
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            fields.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            fields["registers"] = int(m.group(1))
            m = re.search(r"(\d+) bytes smem", line)
            fields["shared"] = int(m.group(1)) if m else 0
    return {k: Resources(**v) for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def sass(filename, dtype, arch="sm_90"):
    """{mangled name: [(offset, instruction text)]} of the cubin's SASS, from cuobjdump -sass."""
    binary, _, _ = cubin(filename, np.dtype(dtype), arch)
    env = dict(os.environ)
    nvdisasm = tool("nvdisasm")
    if nvdisasm:
        env["PATH"] = os.path.dirname(nvdisasm) + os.pathsep + env.get("PATH", "")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(binary)
        f.flush()
        text = subprocess.run([tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              env=env, check=True).stdout
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\w+)", line)
        if m:
            current = out.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2).strip()))
    return out


@dataclasses.dataclass
class Loop:
    instructions: int   # in the loop body, branch included
    fmas: int           # FFMA / DFMA among them
    shared_words: int = 0  # 4-byte words per thread its shared-memory loads read (LDS 1, .64 2, .128 4)

    @property
    def per_fma(self):
        return self.instructions / self.fmas if self.fmas else float("inf")


_FMA = re.compile(r"\b(FFMA|DFMA)\b")  # not HFMA2.MMA: ptxas zeroes registers with it
_LDS = re.compile(r"\bLDS(?:\.U)?(?:\.(64|128))?\b")


def _shared_words(body):
    return sum({None: 1, "64": 2, "128": 4}[m.group(1)] for t in body for m in [_LDS.search(t)] if m)
_BRANCH = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


def loops(instructions):
    """Loops of one function: (start offset, end offset) of every backward branch."""
    out = []
    for off, text in instructions:
        m = _BRANCH.search(text)
        if m and int(m.group(1), 16) <= off:
            out.append((int(m.group(1), 16), off))
    return out


def fma_loops(filename, dtype, expr, arch="sm_90"):
    """Every innermost loop (one that contains no other loop) of kernel `expr` that does
    multiply-adds, as Loop objects in address order."""
    _, _, lowered = cubin(filename, np.dtype(dtype), arch)
    code = sass(filename, dtype, arch)[lowered[expr]]
    spans = loops(code)
    out = []
    for start, end in spans:
        if any((s, e) != (start, end) and start <= s and e <= end for s, e in spans):
            continue
        body = [t for off, t in code if start <= off <= end]
        fmas = sum(1 for t in body if _FMA.search(t))
        if fmas:
            out.append(Loop(len(body), fmas, _shared_words(body)))
    return out


def inner_loop(filename, dtype, expr, arch="sm_90"):
    """The hot innermost loop of kernel `expr` (a name expression): among the loops that contain
    no other loop and do multiply-adds, the one with the most FFMA/DFMA (a loop the compiler
    unrolled by 4 has a remainder loop beside it; the unrolled body is the one that runs).
    None when no loop does multiply-adds."""
    _, _, lowered = cubin(filename, np.dtype(dtype), arch)
    code = sass(filename, dtype, arch)[lowered[expr]]
    spans = loops(code)
    best = None
    for start, end in spans:
        if any((s, e) != (start, end) and start <= s and e <= end for s, e in spans):
            continue  # contains a loop: not innermost
        body = [t for off, t in code if start <= off <= end]
        fmas = sum(1 for t in body if _FMA.search(t))
        if fmas and (best is None or fmas > best.fmas):
            best = Loop(len(body), fmas, _shared_words(body))
    return best
