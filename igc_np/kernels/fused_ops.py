"""The old name of the BatchNorm and SGD launchers, kept so that ``from igc_np.kernels import
fused_ops`` (igc_np/ops/*.py, igc_np/optim.py, benchmarks) keeps working.

"fused" names one thing, the BN+ReLU(+residual) op (igc_np/ops/fused.py); its kernels' launchers
are kernels/batch_norm.py, the SGD step's kernels/sgd.py. New code imports those. Nothing is
defined here.
"""
from .batch_norm import batch_norm_backward, batch_norm_forward, batch_norm_plans, bn_slices  # noqa: F401
from .sgd import sgd_step  # noqa: F401
