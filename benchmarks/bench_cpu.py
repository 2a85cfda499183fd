"""CPU speed of igc_np against PyTorch's CPU build, measured side by side in one run.

    pip install torch==2.13.0          # the benchmark's reference only; never a dependency of igc_np
    python benchmarks/bench_cpu.py     # --quick for fewer repetitions

1. One IGC conv (primary 3x3 group conv, L groups -> permutation -> secondary 1x1 group conv ->
   permutation), forward + backward, batch 64, for (C=48, L=24, M=2, 32x32), (C=96, L=24, M=4, 16x16),
   (C=192, L=24, M=8, 8x8): igc_np vs PyTorch NCHW and channels_last.
2. A full training step (forward, cross-entropy, backward, Nesterov SGD) of resnet_igc-20 IGC-L24M2 on
   CIFAR-sized input, batch 64: images/s of each, and the ratios.

Times are medians of repeated runs after a warm-up; the two libraries alternate in the same process, so
the ratios are comparable even on a noisy machine (absolute times are not, across runs).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import igc_np as ig  # noqa: E402
from igc_np import functional as F  # noqa: E402

SHAPES = [(48, 24, 2, 32), (96, 24, 4, 16), (192, 24, 8, 8)]  # (C, L, M, H=W)
BATCH = 64


def median_ms(fn, repeats):
    fn()  # warm-up: allocations, caches, thread pools
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


# ---- PyTorch reference ---------------------------------------------------------------------------
def torch_igc_step(torch, C, L, M, H, channels_last):
    nn = torch.nn.functional
    x = torch.randn(BATCH, C, H, H)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w1 = torch.randn(C, C // L, 3, 3, requires_grad=True)
    w2 = torch.randn(C, L, 1, 1, requires_grad=True)
    gy = torch.randn(BATCH, C, H, H)

    def permute(z, b):
        n, c, h, w = z.shape
        return z.reshape(n, b, c // b, h, w).transpose(1, 2).reshape(n, c, h, w)

    def step():
        y = nn.conv2d(x, w1, padding=1, groups=L)
        y = permute(nn.conv2d(permute(y, L), w2, groups=M), M)
        y.backward(gy)
        x.grad = w1.grad = w2.grad = None
    return step


def torch_resnet_igc(torch, depth, L, M, num_classes=10):
    """resnet_igc as IGC_SPEC.md section 2, in PyTorch (same layout as ig.nets.get_network)."""
    tnn = torch.nn

    class Permute(tnn.Module):
        def __init__(self, b):
            super().__init__()
            self.b = b

        def forward(self, z):
            n, c, h, w = z.shape
            return z.reshape(n, self.b, c // self.b, h, w).transpose(1, 2).reshape(n, c, h, w)

    def igc(cin, cout, stride, S):
        return tnn.Sequential(tnn.Conv2d(cin, cout, 3, stride, 1, groups=L, bias=False), Permute(L),
                              tnn.Conv2d(cout, cout, 1, groups=S, bias=False), Permute(S),
                              tnn.BatchNorm2d(cout, eps=2e-5, momentum=0.1))

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            # IGC_SPEC section 2: the first IGC conv has S = C_in/L secondary groups, the second C_out/L
            self.a, self.b = igc(cin, cout, stride, cin // L), igc(cout, cout, 1, cout // L)
            self.short = None if cin == cout and stride == 1 else tnn.Sequential(
                tnn.Conv2d(cin, cout, 1, stride, groups=L, bias=False), tnn.BatchNorm2d(cout, eps=2e-5))

        def forward(self, x):
            s = x if self.short is None else self.short(x)
            return torch.relu(self.b(torch.relu(self.a(x))) + s)

    C = L * M
    n = (depth - 2) // 6
    layers = [tnn.Conv2d(3, C, 3, 1, 1, bias=False), tnn.BatchNorm2d(C, eps=2e-5), tnn.ReLU()]
    cin = C
    for stage, width in enumerate((C, 2 * C, 4 * C)):
        for i in range(n):
            layers.append(Block(cin, width, 2 if (i == 0 and stage > 0) else 1))
            cin = width
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(cin, num_classes)]
    return tnn.Sequential(*layers)


def torch_train_step(torch, channels_last):
    model = torch_resnet_igc(torch, 20, 24, 2)
    x = torch.randn(BATCH, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (BATCH,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    return step


# ---- igc_np ---------------------------------------------------------------------------------------
def igc_np_igc_step(C, L, M, H):
    rng = np.random.default_rng(0)
    conv = ig.nn.IGCConv(C, C, L, M)
    # inside a network the input arrives in the conv's (C, H, W, N) memory; start from there
    x_chwn = rng.standard_normal((C, H, H, BATCH), dtype=np.float32)
    x = ig.Tensor(x_chwn.transpose(3, 0, 1, 2), requires_grad=True)
    gy = rng.standard_normal((C, H, H, BATCH), dtype=np.float32).transpose(3, 0, 1, 2)

    def step():
        conv(x).backward(gy)
        x.grad = None
        conv.zero_grad()
    return step


def igc_np_train_step():
    rng = np.random.default_rng(0)
    model = ig.nets.get_network("resnet_igc", 20, 10, primary_partition=24, secondary_partition=2)
    x = ig.Tensor(rng.standard_normal((BATCH, 3, 32, 32), dtype=np.float32))
    labels = rng.integers(0, 10, BATCH)
    opt = ig.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        opt.step()
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--skip-layers", action="store_true", help="only the training step")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("bench_cpu.py compares against PyTorch's CPU build: pip install torch==2.13.0")
    torch.manual_seed(0)
    reps = 3 if args.quick else 7
    print(f"igc_np {ig.__version__} threads={ig.ops.parallel.THREADS}; torch {torch.__version__} "
          f"threads={torch.get_num_threads()}; batch {BATCH}")
    if not args.skip_layers:
        print("\nIGC conv forward+backward (ms, median)        igc_np   torch NCHW  torch CL   vs NCHW  vs CL")
        for C, L, M, H in SHAPES:
            ours = median_ms(igc_np_igc_step(C, L, M, H), reps)
            nchw = median_ms(torch_igc_step(torch, C, L, M, H, False), reps)
            cl = median_ms(torch_igc_step(torch, C, L, M, H, True), reps)
            print(f"  C={C:3d} L={L} M={M} {H:2d}x{H:<2d}                      {ours:8.1f}  {nchw:9.1f}  "
                  f"{cl:8.1f}   {nchw / ours:5.2f}x  {cl / ours:5.2f}x")
    # the two networks must be the same network, or the comparison means nothing
    n_ours = ig.nets.count_params(ig.nets.get_network("resnet_igc", 20, 10, 24, 2))
    n_torch = sum(p.numel() for p in torch_resnet_igc(torch, 20, 24, 2).parameters())
    if n_ours != n_torch:
        sys.exit(f"bench_cpu.py: the PyTorch reference has {n_torch} parameters, igc_np's {n_ours}")
    steps = 3 if args.quick else 5
    ours = median_ms(igc_np_train_step(), steps)
    nchw = median_ms(torch_train_step(torch, False), steps)
    cl = median_ms(torch_train_step(torch, True), steps)
    print(f"\nresnet_igc-20 IGC-L24M2 ({n_ours:,} parameters in both) training step, batch 64   images/s")
    print(f"  igc_np                 {BATCH / ours * 1e3:7.1f}")
    print(f"  PyTorch NCHW           {BATCH / nchw * 1e3:7.1f}   igc_np is {nchw / ours:.2f}x")
    print(f"  PyTorch channels_last  {BATCH / cl * 1e3:7.1f}   igc_np is {cl / ours:.2f}x")


if __name__ == "__main__":
    main()
