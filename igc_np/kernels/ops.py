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

# Private names of the old module, for launchers written against it (e.g. a new optimizer's);
# kernels/launch.py has them under their public names.
from .launch import MAX_BLOCKS, THREADS, elementwise_plan, i32, prepare as _prepare, run, xp_of as _xp  # noqa: E402,F401


def _elementwise_launch(fn, total, args):
    """fn over `total` elements, one thread each (launch.elementwise_plan's geometry: 256-thread
    blocks, at most MAX_BLOCKS of them, always within a GPU's limits)."""
    geometry = elementwise_plan("", "", total)
    fn(geometry.grid, geometry.block, args)
