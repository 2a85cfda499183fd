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
import os

import numpy as np

from .loader import MAX_THREADS, launch_bounds, static_shared

MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_SHARED = 48 * 1024   # bytes of static + dynamic shared memory of a block without the opt-in
SANITIZE_ENV = "IGC_NP_EMU_SANITIZE"


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
    return device == "emu" and os.environ.get(SANITIZE_ENV) == "1"


def output(xp, shape, dtype, device):
    """An uninitialised array for a launch to write; NaN-filled in sanitizer mode (see the module doc)."""
    a = xp.empty(shape, dtype=dtype)
    if sanitizing(device):
        a.fill(np.nan)
    return a
