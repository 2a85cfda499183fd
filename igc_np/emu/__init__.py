"""A CPU emulator for CUDA kernels: the same .cu source, compiled by g++ against cuda_emu.h.

Blocks run one after another and the threads of a block as cooperative fibers, so
``__syncthreads()`` and ``__shared__`` memory behave as on a GPU. Launch through
``EmuModule(code, name_expressions).get_function(name)(grid, block, args, shared_mem=0)``,
the call shape of ``cupy.RawModule``.
"""
from .loader import EmuFunction, EmuModule, EmulatorCompileError, EmulatorError, cache_dir

__all__ = ["EmuModule", "EmuFunction", "EmulatorError", "EmulatorCompileError", "cache_dir"]
