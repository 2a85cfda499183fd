"""One kernel launch as data, checked against the GPU's limits where it is planned.

A ``Launch`` names the kernel (file, name, compile-time arguments), its grid and block and its
dynamic shared memory. ``check(launch, itemsize, where)`` refuses, before anything runs and on
every device (CPU, "emu", "cuda"), what a GPU would refuse at launch time:

- threads per block over the kernel's ``__launch_bounds__`` (read from its .cu) or 1024;
- block dimensions over (1024, 1024, 64), grid x >= 2^31, grid y or z > 65535, a zero dimension;
- static (the kernel's ``__shared__`` arrays, read from its .cu) + dynamic shared memory over
  48 KiB (the limit without ``cudaFuncAttributeMaxDynamicSharedMemorySize``, which igc_np never sets).

The error names the kernel, the limit and `where` (the launcher and the shapes that made the
plan), so a bad plan fails in the planner, not as "invalid argument" on the first GPU run.

``output(xp, shape, dtype, device)`` allocates an array a launch writes: in the emulator's
sanitizer mode ($IGC_NP_EMU_SANITIZE=1 on device "emu") it is filled with NaN first, so an element
that no thread writes shows in the result.
"""
import dataclasses
import functools

import numpy as np

from .. import emu
from .loader import MAX_THREADS, import_cupy, launch_bounds, static_shared

MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_SHARED = 48 * 1024   # bytes of static + dynamic shared memory of a block without the opt-in
SANITIZE_ENV = emu.SANITIZE_ENV  # the emulator owns the switch; launchers read it through emu.sanitizing()


class LaunchPlanError(ValueError):
    """A launch plan that a GPU would refuse (threads, grid or shared memory over its limits)."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch, computed from shapes alone (kernel_report.py models these without
    launching). For the conv plans: arguments are the op's (in, in, out) arrays, or for a
    "reduce" launch (scratch, out), then the 14 ints of the conv (not for "reduce"), then `extra`."""
    file: str
    kernel: str
    targs: tuple
    grid: tuple
    block: tuple
    shared: int = 0       # dynamic shared memory, bytes
    extra: tuple = ()     # ints after the conv's 14
    scratch: tuple = ()   # shape of a scratch array the launch writes (v3 backward-weight partials)
    kind: str = "conv"    # "conv" or "reduce"

    @property
    def threads(self):
        return int(np.prod(self.block))

    @property
    def blocks(self):
        return int(np.prod(self.grid))


@functools.lru_cache(maxsize=None)
def thread_limit(filename, kernel):
    """The most threads per block `kernel` of `filename` may be launched with."""
    return launch_bounds(filename).get(kernel, MAX_THREADS)


@functools.lru_cache(maxsize=None)
def static_shared_bytes(filename, kernel, itemsize):
    return static_shared(filename, itemsize).get(kernel, 0)


def problems(launch, itemsize):
    """The limits `launch` breaks, as sentences ([] for a legal launch)."""
    L, out = launch, []
    grid, block = tuple(int(g) for g in L.grid), tuple(int(b) for b in L.block)
    if len(grid) > 3 or len(block) > 3 or min(grid + block, default=0) < 1:
        out.append(f"grid {grid} and block {block} need 1 to 3 positive dimensions")
        return out
    limit = thread_limit(L.file, L.kernel)
    if L.threads > limit:
        out.append(f"block {block} = {L.threads} threads exceeds the kernel's limit of {limit} "
                   f"({'__launch_bounds__' if limit < MAX_THREADS else 'the GPU maximum'})")
    for axis, (b, m) in enumerate(zip(block, MAX_BLOCK)):
        if b > m:
            out.append(f"block dimension {'xyz'[axis]} = {b} exceeds {m}")
    for axis, (g, m) in enumerate(zip(grid, MAX_GRID)):
        if g > m:
            out.append(f"grid dimension {'xyz'[axis]} = {g} exceeds {m}")
    static = static_shared_bytes(L.file, L.kernel, int(itemsize))
    if static + int(L.shared) > MAX_SHARED:
        out.append(f"shared memory {static} static + {int(L.shared)} dynamic = {static + int(L.shared)} bytes "
                   f"exceeds {MAX_SHARED} (48 KiB without the opt-in)")
    return out


def check(launch, itemsize, where):
    """`launch` unchanged, or LaunchPlanError naming `where`, the kernel and every broken limit."""
    broken = problems(launch, itemsize)
    if broken:
        raise LaunchPlanError(f"{where}: the launch plan of {launch.kernel} ({launch.file}) is one a GPU "
                              f"refuses: {'; '.join(broken)}. This is a bug in the planner of "
                              "igc_np/kernels; another version may run (igc_np.kernels.use_version)")
    return launch


def run(launch, module, args):
    """Launch `launch` from `module` (a loader.KernelModule) with the kernel arguments `args`."""
    fn = module.get_function(launch.kernel, launch.targs)
    fn(tuple(int(g) for g in launch.grid), tuple(int(b) for b in launch.block), args, shared_mem=int(launch.shared))


def sanitizing(device):
    """Whether launches on `device` run in the emulator's sanitizer mode ($IGC_NP_EMU_SANITIZE=1)."""
    return device == "emu" and emu.sanitizing()


def output(xp, shape, dtype, device):
    """An uninitialised array for a launch to write; NaN-filled in sanitizer mode (see the module doc)."""
    a = xp.empty(shape, dtype=dtype)
    if sanitizing(device):
        a.fill(np.nan)
    return a


# ---- what every launcher shares: devices, array checks, the one-thread-per-element plans ---------

THREADS = 256          # threads per block of the one-thread-per-element kernels
MAX_BLOCKS = 1 << 20   # the kernels loop (grid-stride) over whatever a grid this size leaves
REDUCE_MAX_THREADS = 256
# The most elements an array of a launch may have. The kernels index with (32-bit) int and step
# by gridDim.x * blockDim.x (at most MAX_BLOCKS * THREADS = 2^28): below 2^30 elements, idx + step
# stays below 2^31, so no index overflows.
MAX_INDEXED_ELEMENTS = 2**30

i32 = np.int32


def xp_of(device):
    """The array module of `device`: cupy for "cuda" (or "cuda:k"), numpy for "emu"."""
    if isinstance(device, str) and device.split(":")[0] == "cuda":  # "cuda:1": the caller's current device
        return import_cupy()
    if device == "emu":
        return np
    raise ValueError(f"device must be 'cuda' or 'emu', got {device!r}")


def check_kind(op, xp, device, name, a):
    """TypeError unless `a` is an array of `device` (xp: its array module, xp_of(device))."""
    if not isinstance(a, xp.ndarray):
        raise TypeError(f"{op}: {name} must be a {xp.__name__}.ndarray on device {device!r}, "
                        f"got {type(a).__module__}.{type(a).__name__}")


def prepare(op, device, **arrays):
    """Check the arrays' kind (numpy for emu, cupy for cuda), rank 4 and common float dtype;
    return them C-contiguous, in the keyword order given."""
    xp = xp_of(device)
    out, dtype = [], None
    for name, a in arrays.items():
        check_kind(op, xp, device, name, a)
        if a.ndim != 4:
            raise ValueError(f"{op}: {name} must be 4-D (NCHW or OIHW), got shape {tuple(a.shape)}")
        if a.dtype not in (np.float32, np.float64):
            raise ValueError(f"{op}: {name} must be float32 or float64, got {a.dtype}")
        if dtype is not None and a.dtype != dtype:
            raise ValueError(f"{op}: {name} has dtype {a.dtype} but {next(iter(arrays))} has {dtype}")
        dtype = a.dtype
        out.append(xp.ascontiguousarray(a))
    for a in out:
        if a.size > MAX_INDEXED_ELEMENTS:
            raise ValueError(f"{op}: arrays of {a.size} elements exceed the kernels' int indexing")
    return xp, out


def shape4(op, name, shape):
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"{op}: {name} must be 4 positive ints, got {shape}")
    return shape


def cdiv(a, b):
    return -(-a // b)


def elementwise_plan(file, kernel, total):
    """One thread per output element, grid-stride beyond MAX_BLOCKS blocks."""
    return Launch(file, kernel, (), (max(1, min(cdiv(total, THREADS), MAX_BLOCKS)),), (THREADS,))


def reduce_plan(file, kernel, n_outputs, terms, itemsize):
    """One block per output element; a power-of-two block of at most REDUCE_MAX_THREADS threads,
    no larger than the number of terms needs (minimum a warp), plus its shared memory."""
    threads = 32
    while threads < min(terms, REDUCE_MAX_THREADS):
        threads *= 2
    return Launch(file, kernel, (), (max(1, min(n_outputs, MAX_BLOCKS)),), (threads,), threads * itemsize)


def check_and_run(module, plan, args, where, itemsize):
    """Check `plan` (check: a GPU's limits, `where` names the call) and run it."""
    run(check(plan, itemsize, where), module, args)


def device_of(a):
    """The launch device of an array that prepare accepted: "emu" for numpy, else "cuda"."""
    return "emu" if isinstance(a, np.ndarray) else "cuda"


# ---- shared memory banks -----------------------------------------------------------------------

BANKS = 32  # shared-memory banks of 4-byte words (every GPU since Fermi)


def conflict_ways(addresses, itemsize):
    """Shared-memory passes one warp's load takes: `addresses` (element indices, one per thread of
    the warp) on BANKS banks of 4-byte words; threads reading one address share a pass. 8-byte
    elements are served a half-warp at a time (each half's passes add up)."""
    words = 1 if itemsize <= 4 else 2
    halves = [addresses] if words == 1 else [addresses[:16], addresses[16:]]
    total = 0
    for part in halves:
        banks = {}
        for a in set(part):
            for w in range(words):
                banks.setdefault((a * words + w) % BANKS, set()).add(a)
        total += max((len(v) for v in banks.values()), default=0)
    return total
