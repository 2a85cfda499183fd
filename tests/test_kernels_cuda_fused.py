"""The cuda branch's kernels on a real GPU: every version of the permutation, the fused interleaved
secondary conv, the fused BatchNorm(+ReLU, +residual) and the fused SGD, against float64 NumPy
references with a norm-relative bound (the checks of tests/test_kernels_fused.py, run on "cuda").

Skipped, with the reason, where device "cuda" is unusable (no CuPy, no GPU, or CuPy that cannot
compile: backend.cuda_unavailable_reason()).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import igc_np as ig
from igc_np.kernels import versions

from strategies import divisors
import test_kernels_fused as checks

pytestmark = pytest.mark.skipif(not ig.cuda_available(), reason=str(ig.backend.cuda_unavailable_reason()))


def _device():
    cupy = ig.backend.cupy_module()
    return dict(device="cuda", to_device=cupy.asarray, to_host=cupy.asnumpy)


@pytest.mark.parametrize("version", sorted(versions.versions("permute_channels")))
@pytest.mark.parametrize("dtype", checks.DTYPES)
@settings(max_examples=30, deadline=None)
@given(case=checks.interleaved_cases(max_C=64), data=st.data())
def test_permutation_versions_cuda(case, data, dtype, version):
    x_shape = case[0]
    b = data.draw(st.sampled_from(divisors(x_shape[1])))
    checks.check_permutation(x_shape, b, dtype, version, **_device())


@pytest.mark.parametrize("version", sorted(versions.versions("interleaved_secondary")))
@pytest.mark.parametrize("dtype", checks.DTYPES)
@settings(max_examples=40, deadline=None)
@given(case=checks.interleaved_cases(max_C=64))
def test_interleaved_versions_cuda(case, dtype, version):
    checks.check_interleaved(case, dtype, version, **_device())


@pytest.mark.parametrize("version", sorted(versions.versions("interleaved_secondary")))
@pytest.mark.parametrize("case", [
    ((16, 48, 32, 32), 24, 2),   # CIFAR IGC-L24M2 stage 1
    ((16, 96, 16, 16), 24, 2),   # stage 2, first conv of a block (S = C_in/L)
    ((16, 192, 8, 8), 24, 8),    # stage 3
    ((4, 128, 56, 56), 4, 32),   # ImageNet IGC-L4M32
    ((4, 200, 56, 56), 100, 2),  # ImageNet IGC-L100M2
])
def test_interleaved_igc_shapes_cuda(case, version):
    checks.check_interleaved(case, np.float32, version, **_device())


@pytest.mark.parametrize("version", sorted(versions.versions("batch_norm")))
@pytest.mark.parametrize("dtype", checks.DTYPES)
@settings(max_examples=40, deadline=None)
@given(shape=checks.bn_shapes(), training=st.booleans(), relu=st.booleans(), with_residual=st.booleans(),
       slices=st.integers(1, 7))
def test_batch_norm_fused_cuda(shape, dtype, training, relu, with_residual, slices, version):
    slices = min(slices, shape[0] * shape[2] * shape[3]) if version == 2 else None
    checks.check_batch_norm(shape, dtype, training, relu, with_residual, **_device(), version=version, slices=slices)


@pytest.mark.parametrize("version", sorted(versions.versions("batch_norm")))
@pytest.mark.parametrize("shape", [(64, 48, 32, 32), (64, 192, 8, 8), (2, 3, 1, 1)])
def test_batch_norm_fused_cifar_shapes_cuda(shape, version):
    for training in (True, False):
        checks.check_batch_norm(shape, np.float32, training, True, True, **_device(), version=version)


@pytest.mark.parametrize("version", sorted(versions.versions("sgd")))
@pytest.mark.parametrize("dtype", checks.DTYPES)
def test_sgd_versions_cuda(dtype, version):
    shapes = [(48, 2, 3, 3), (48,), (48, 24, 1, 1), (10, 192), (10,), (1,), (70000,)]
    for momentum, nesterov, wd in [(0.9, True, 1e-4), (0.9, False, 0.0), (0.0, True, 1e-4)]:
        checks.check_sgd(shapes, dtype, momentum, nesterov, wd, version, **_device())


def test_sgd_optimizer_on_cuda_matches_cpu():
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(6, 3, 3, 3), (6,), (4, 6)]]
    grads = [[rng.standard_normal(w.shape).astype(np.float32) for w in init] for _ in range(3)]
    final = {}
    for dev in ("cpu", "cuda"):
        params = [ig.nn.Parameter(w.copy()).to(dev) for w in init]
        opt = ig.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = ig.backend.to_device(g, dev)
            opt.step()
        final[dev] = [p.numpy() for p in params]
    for a, b in zip(final["cpu"], final["cuda"]):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)  # FMA contraction: last bits may differ
