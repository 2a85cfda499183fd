"""Hand-written CUDA kernels of igc_np (one concept per .cu file) and their launchers.

- ``group_conv.cu``, ``group_conv_v2.cu``, ``group_conv_v3.cu``: grouped 2-D conv forward,
  backward-data, backward-weight, versions 1 to 3 of a ladder;
- ``permutation.cu``: the IGC channel permutation (Reorder);
- ``interleaved_secondary.cu``: permutation -> 1x1 group conv -> permutation, fused;
- ``batch_norm.cu``: BatchNorm fused with the ReLU and the residual add; ``sgd.cu``: the SGD step.

``ops`` (conv, permutation, interleaved secondary) and ``fused_ops`` (BatchNorm, SGD) hold the
launchers the engine calls (device "cuda" through CuPy, or "emu" through the CPU emulator in
igc_np.emu); ``versions`` says which version of each kernel they run (``use_version(sgd=1)`` or
$IGC_NP_KERNELS); ``get_module`` loads one compiled file. Importing this package needs neither
CuPy nor a compiler: both are looked for at the first launch.
"""
# ops and fused_ops register their kernels' versions on import: import both, so that
# versions (and $IGC_NP_KERNELS) knows every op whichever launcher runs first
from . import fused_ops, ops, versions
from .loader import KERNEL_DIR, get_module, kernel_files, read_source
from .versions import use_version

versions.check_environment()  # a bad $IGC_NP_KERNELS is an error at start, on every device

__all__ = ["ops", "fused_ops", "versions", "use_version", "get_module", "kernel_files", "read_source",
           "KERNEL_DIR"]
