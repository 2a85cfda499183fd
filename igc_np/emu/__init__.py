"""A CPU emulator for CUDA kernels: the same .cu source, compiled by g++ against cuda_emu.h.

Blocks run one after another and the threads of a block as cooperative fibers, so
``__syncthreads()`` and ``__shared__`` memory behave as on a GPU. Launch through
``EmuModule(code, name_expressions).get_function(name)(grid, block, args, shared_mem=0)``,
the call shape of ``cupy.RawModule``. Launches over a GPU's limits are refused; with
IGC_NP_EMU_SANITIZE=1 (``sanitizing()``) kernels are built with bounds, initialisation and
shared-memory race checks (see docs/emulator.md).
"""
from .loader import (EmuFunction, EmuModule, EmulatorCompileError, EmulatorError, LaunchLimitError, cache_dir,
                     SANITIZE_ENV, private_cache_dir, sanitizing)

__all__ = ["EmuModule", "EmuFunction", "EmulatorError", "EmulatorCompileError", "LaunchLimitError", "cache_dir",
           "private_cache_dir", "sanitizing", "SANITIZE_ENV"]
