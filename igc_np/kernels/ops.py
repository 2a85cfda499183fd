"""The old name of the conv, permutation and interleaved-secondary launchers, kept so that
``from igc_np.kernels import ops`` (igc_np/ops/*.py, benchmarks) keeps working.

"ops" is igc_np/ops/ (the autograd ops and their tiers); the kernel launchers now live beside
their .cu files: kernels/conv.py, kernels/permutation.py, kernels/interleaved_secondary.py. New
code imports those. Nothing is defined here.
"""
from .conv import (CONV_OPS, Launch, conv2d_backward_data, conv2d_backward_weight,  # noqa: F401
                   conv2d_forward, plan, weight_slices)
from .interleaved_secondary import (interleaved_plan, interleaved_secondary_backward_data,  # noqa: F401
                                    interleaved_secondary_backward_weight, interleaved_secondary_forward,
                                    weight_chunks)
from .permutation import permute_channels, permute_plan  # noqa: F401

