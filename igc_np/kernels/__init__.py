"""Hand-written CUDA kernels of igc_np (one concept per .cu file) and their launchers.

- ``group_conv.cu``, ``group_conv_v2.cu``, ``group_conv_v3.cu``: grouped 2-D conv forward,
  backward-data, backward-weight, versions 1 to 3 of a ladder (``versions``: which one runs;
  ``use_version(conv2d_forward=1)`` or $IGC_NP_KERNELS switch);
- ``permutation.cu``: the IGC channel permutation (Reorder);
- ``interleaved_secondary.cu``: permutation -> 1x1 group conv -> permutation, fused.

``ops`` holds the launchers the engine calls (device "cuda" through CuPy, or "emu" through the CPU
emulator in igc_np.emu); ``get_module`` loads one compiled file. Importing this package needs
neither CuPy nor a compiler: both are looked for at the first launch.
"""
from . import ops, versions
from .loader import KERNEL_DIR, get_module, kernel_files, read_source
from .versions import use_version

__all__ = ["ops", "versions", "use_version", "get_module", "kernel_files", "read_source", "KERNEL_DIR"]
