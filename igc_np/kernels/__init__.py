"""Hand-written CUDA kernels of igc_np and their launchers, llm.c-style: each op's .cu file (its
versions, a ladder) beside the Python launcher that holds its launch geometry.

| kernels (versions)                                   | launcher (geometry: ``plan``)       |
|------------------------------------------------------|-------------------------------------|
| group_conv.cu (1), group_conv_v2.cu (2), _v3.cu (3)  | conv.py: conv2d_forward, _backward_data, _backward_weight |
| permutation.cu (1, 2; 0 the shape rule)              | permutation.py: permute_channels    |
| interleaved_secondary.cu (1, 2)                      | interleaved_secondary.py: forward, backward_data, backward_weight |
| batch_norm.cu (1, 2): BatchNorm + ReLU + residual    | batch_norm.py: batch_norm_forward, batch_norm_backward |
| sgd.cu (1, 2)                                        | sgd.py: sgd_step                    |
| adam.cu (1, 2): Adam, AdamW, AMSGrad                 | adam.py: adam_step                  |

sgd.py and adam.py share ``multi_tensor`` (their array checks, version 1's per-tensor launches,
version 2's table of addresses and chunks). Shared by all: ``launch`` (a launch as data, checked
against a GPU's limits where it is planned; array checks; NaN-filled outputs in the emulator's
sanitizer mode), ``loader`` (compiles a .cu for "cuda" through CuPy or "emu" through igc_np.emu,
and reads its #defines, __launch_bounds__ and __shared__ sizes: the tile constants are stated
once, in the .cu), ``versions`` (which version runs: ``use_version(sgd=1)`` or $IGC_NP_KERNELS,
checked on import), ``sass`` and ``nvrtc`` (what a GPU would run, without one). ``ops`` and
``fused_ops`` are the launchers' old names, kept as re-exports. Importing this package needs
neither CuPy nor a compiler: both are looked for at the first launch.
"""
# every launcher module registers its kernels' versions on import: import them all, so that
# versions (and $IGC_NP_KERNELS) knows every op whichever launcher runs first
from . import adam, batch_norm, conv, interleaved_secondary, multi_tensor, permutation, sgd, versions
from . import fused_ops, ops  # the old names (re-exports)
from .loader import KERNEL_DIR, get_module, kernel_files, read_source
from .versions import use_version

versions.check_environment()  # a bad $IGC_NP_KERNELS is an error at start, on every device

__all__ = ["conv", "permutation", "interleaved_secondary", "batch_norm", "sgd", "adam", "multi_tensor", "versions",
           "use_version", "get_module", "kernel_files", "read_source", "KERNEL_DIR", "ops", "fused_ops"]
