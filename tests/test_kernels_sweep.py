"""Every layer of every network (issue 16): the distinct conv, interleaved-secondary, permutation
and BatchNorm shapes of all CIFAR configurations and the five ImageNet models.

1. At the real batch sizes (CIFAR 64, ImageNet 256) every launch plan of every version of every
   op, float32 and float64, is legal (kernels/launch.py: threads, grid, shared memory). No launch.
2. Each distinct layer shape runs once on device "emu" at batch 1 (2 for BatchNorm, which needs two
   values a channel), forward and backward, with the default versions, in sanitizer mode
   ($IGC_NP_EMU_SANITIZE=1: outputs NaN-filled so an unwritten element shows), equal to the
   reference tier within the norm-relative bounds of tests/test_kernels_emu.py.
   CI runs the subset of the widest layers that broke before (IGC-L100M2 at 56x56 and 28x28: over
   the v3 thread limit) and CIFAR's IGC-L24M2; the rest is `-m slow`.

Shapes come from the layers' attributes (no forward): `layer_ops` walks a model as its forward runs.
"""
import importlib.util
import os

import numpy as np
import pytest

from igc_np import nets
from igc_np.kernels import batch_norm, conv, interleaved_secondary, launch, permutation, versions
from igc_np.kernels.launch import SANITIZE_ENV
from igc_np.nn import BatchNorm2d, Conv2d, IGCConv, MaxPool2d, Sequential

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_sweep_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


emu_checks = _load("test_kernels_emu")      # check_conv, check_permutation
fused_checks = _load("test_kernels_fused")  # check_interleaved, check_batch_norm

# The authors' CIFAR tables: plain and resnet (width C = L, M = 1) and the IGC nets at their L, M;
# depths 8/20/26 (plain, 3n+2) and 20/38/62 (resnet, 6n+2). Depth repeats layers: it adds no shape.
CIFAR = ([("plain", d, L, 1) for d in (8, 20, 26) for L in (16, 32)]
         + [("resnet", d, L, 1) for d in (20, 38, 62) for L in (16, 32)]
         + [("plain_igc", d, L, M) for d in (8, 20, 26) for L, M in ((4, 8), (24, 2), (32, 26))]
         + [("resnet_igc", d, L, M) for d in (20, 38, 62) for L, M in ((4, 8), (24, 2), (16, 32), (32, 26))])
IMAGENET = list(nets.IMAGENET_CONFIGS)
CIFAR_BATCH, IMAGENET_BATCH = 64, 256


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def layer_ops(model, x_shape):
    """{(kind, shape key)} of the kernel ops a forward of `model` on x (N, C, H, W) runs:
    ("conv", x shape, W shape, stride, padding, groups), ("interleaved", x shape, L, S),
    ("permute", x shape, b), ("bn", x shape, relu, residual)."""
    found = set()

    def conv(m, shape):
        N, C, H, W = shape
        (kh, kw), (sh, sw), (ph, pw) = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
        found.add(("conv", shape, tuple(m.weight.shape), (sh, sw), (ph, pw), m.groups))
        return (N, m.out_channels, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)

    def walk(m, shape, residual=False):
        if isinstance(m, Conv2d):
            return conv(m, shape)
        if isinstance(m, IGCConv):
            y = conv(m.primary, shape)
            if m.fused:
                found.add(("interleaved", y, m.L, m.S))
                return y
            found.add(("permute", y, m.L))
            y = conv(m.secondary, y)
            found.add(("permute", y, m.S))
            return y
        if isinstance(m, nets.ConvBN):
            y = walk(m.conv, shape)
            found.add(("bn", y, bool(m.relu or residual), residual))
            return y
        if isinstance(m, nets.ResidualBlock):
            if m.shortcut is not None:
                walk(m.shortcut, shape)
            return walk(m.conv2, walk(m.conv1, shape), residual=True)
        if isinstance(m, MaxPool2d):
            (k, _), (s, _), (p, _) = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
            N, C, H, W = shape
            return (N, C, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1)
        if isinstance(m, nets.Network):
            return walk(m.stages, walk(m.stem, shape))
        if isinstance(m, Sequential):
            for child in m._modules.values():
                shape = walk(child, shape)
            return shape
        if isinstance(m, BatchNorm2d):
            found.add(("bn", shape, False, False))
            return shape
        raise TypeError(f"layer_ops: no rule for {type(m).__name__}")

    walk(model, tuple(x_shape))
    return found


def _shallowest(configs):
    """One depth per (network, L, M): the shallowest of the table's with 2 or more layers (plain)
    or blocks (resnet) a stage. A stage's first layer changes the width, the second keeps it, and
    later ones repeat the second's shapes: deeper nets add no shape (test_depth_adds_no_shape)."""
    out = {}
    for name, depth, L, M in sorted(configs, key=lambda c: c[1]):
        n = (depth - 2) // (6 if name.startswith("resnet") else 3)
        if n >= 2:
            out.setdefault((name, L, M), depth)
    return [(name, depth, L, M) for (name, L, M), depth in out.items()]


def _all_layer_ops():
    """{op key with batch 1: the real batch} of every network configuration."""
    out = {}
    for name, depth, L, M in _shallowest(CIFAR):
        model = nets.get_network(name, depth, primary_partition=L, secondary_partition=M, rng=0)
        for key in layer_ops(model, (1, 3, 32, 32)):
            out[key] = CIFAR_BATCH
    for name in IMAGENET:
        for key in layer_ops(nets.imagenet_model(name, rng=0), (1, 3, 224, 224)):
            out[key] = max(out.get(key, 0), IMAGENET_BATCH)
    return out


LAYER_OPS = _all_layer_ops()


def _with_batch(shape, N):
    return (N,) + tuple(shape[1:])


def _plans(key, N, itemsize):
    """Every launch plan of every version of the op `key` at batch N (each is checked as made)."""
    kind, shape = key[0], _with_batch(key[1], N)
    plans = []
    if kind == "conv":
        _, _, W_shape, stride, padding, G = key
        _, dims = conv._conv_geometry("sweep", shape, W_shape, stride, padding, G)
        for op in conv.CONV_OPS:
            for v in versions.kernels(op):
                plans += conv.plan(op, v, dims, itemsize)
    elif kind == "interleaved":
        for op in ("interleaved_secondary_forward", "interleaved_secondary_backward_data",
                   "interleaved_secondary_backward_weight"):
            for v in versions.kernels("interleaved_secondary"):
                plans += interleaved_secondary.interleaved_plan(op, v, shape, key[2], key[3], itemsize)
    elif kind == "permute":
        plans += [permutation.permute_plan(v, *shape) for v in versions.kernels("permute_channels")]
        for P in plans:
            launch.check(P, itemsize, f"permute_channels {shape}")
    else:
        m = shape[0] * shape[2] * shape[3]
        for op in ("batch_norm_forward", "batch_norm_backward"):
            for v in versions.kernels("batch_norm"):
                for training in (True, False):
                    plans += batch_norm.batch_norm_plans(op, v, training, shape, batch_norm.bn_slices(shape[1], m),
                                                        itemsize)
    return plans


def test_depth_adds_no_shape():
    for name, L, M, depths in (("plain_igc", 4, 8, (8, 26)), ("resnet_igc", 4, 8, (20, 38)), ("resnet", 16, 1, (20, 62))):
        shallow, deep = (layer_ops(nets.get_network(name, d, primary_partition=L, secondary_partition=M, rng=0),
                                   (1, 3, 32, 32)) for d in depths)
        assert shallow == deep, (name, depths)


def test_the_sweep_covers_every_kind_and_the_widest_layers():
    kinds = {k[0] for k in LAYER_OPS}
    # resnet_igc's width-doubling convs (S*L = C_out/2) run P, W_d, P_S unfused: permutations
    assert kinds == {"conv", "interleaved", "permute", "bn"}, kinds
    convs = {(k[1][1:], k[2], k[5]) for k in LAYER_OPS if k[0] == "conv"}
    assert ((200, 56, 56), (200, 2, 3, 3), 100) in convs and ((400, 28, 28), (400, 2, 3, 3), 200) in convs
    assert ((3, 224, 224), (256, 3, 7, 7), 1) in convs  # IGC-L16M16's stem


@pytest.mark.parametrize("itemsize", [4, 8], ids=["float32", "float64"])
def test_every_launch_plan_of_every_layer_is_legal(itemsize):
    """Each plan is checked where it is made (LaunchPlanError otherwise); 4 x 5 models' worth."""
    count = 0
    for key, N in sorted(LAYER_OPS.items(), key=repr):
        plans = _plans(key, N, itemsize)
        assert plans, key
        count += len(plans)
    assert count > len(LAYER_OPS)


# ---- each distinct layer shape once on the emulator ----------------------------------------------------

def _is_ci(key):
    """The CI subset: the layers that broke (IGC-L100M2 at 56x56 and 28x28) and CIFAR's IGC-L24M2
    widths (48, 96, 192 channels at 32, 16, 8), every kind of op at those shapes."""
    C, H = key[1][1], key[1][2]
    return (C, H) in {(200, 56), (400, 28), (48, 32), (96, 16), (192, 8)}


def _run_on_emu(key, monkeypatch):
    monkeypatch.setenv(SANITIZE_ENV, "1")  # NaN-filled outputs (and the emulator's checks where it has them)
    kind = key[0]
    dtype = np.float32
    if kind == "conv":
        _, shape, W_shape, stride, padding, G = key
        emu_checks.check_conv((_with_batch(shape, 1), W_shape, stride, padding, G), dtype, "emu")
    elif kind == "interleaved":
        fused_checks.check_interleaved((_with_batch(key[1], 1), key[2], key[3]), dtype, None, **fused_checks.EMU)
    elif kind == "permute":
        emu_checks.check_permutation(_with_batch(key[1], 1), key[2], dtype, "emu")
    else:
        _, shape, relu, residual = key
        for training in (True, False):
            fused_checks.check_batch_norm(_with_batch(shape, 2), dtype, training, relu, residual, **fused_checks.EMU)


_KEYS = sorted(LAYER_OPS, key=repr)
_CASES = [pytest.param(k, id=repr(k).replace(" ", ""), marks=() if _is_ci(k) else pytest.mark.slow) for k in _KEYS]


@pytest.mark.parametrize("key", _CASES)
def test_every_layer_shape_on_emu_equals_the_reference(key, monkeypatch):
    _run_on_emu(key, monkeypatch)
