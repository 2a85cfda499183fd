"""CPU speed of igc_np against PyTorch's CPU build, measured side by side in one run.

    pip install torch==2.13.0          # the benchmark's comparison only; never a dependency of igc_np
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cpu.py    # --quick: fewer runs

Unset those two variables for the benchmark alone: where they are set they force OpenBLAS's older,
slower kernels (the header prints the kernel threadpoolctl sees; tests and CI keep them).

1. One IGC conv (primary 3x3 group conv, L groups -> permutation -> secondary 1x1 group conv ->
   permutation), forward + backward, batch 64: (C=48, L=24, M=2, 32x32), (C=96, L=24, M=4, 16x16),
   (C=192, L=24, M=8, 8x8).
2. Training step (forward, cross-entropy, backward, Nesterov SGD) and evaluation (forward only, no
   graph) of resnet_igc-20 IGC-L24M2, plain_igc-38 IGC-L24M2 and resnet-20 (C=16), CIFAR-sized
   input, batch 64; and the peak memory of a training step, each in a fresh subprocess.

PyTorch runs every network in both layouts, NCHW and channels_last, written as a PyTorch user would
write them for speed: model and input converted to channels_last, a channel shuffle that stays in
the tensor's layout, in-place ReLU. igc_np is compared with the FASTER of the two ("vs best").
The two implementations of each network must have the same parameter count, or the run stops.

Times are medians over rounds in which every candidate runs once, in the same process, both
libraries on the same number of threads: the ratios are comparable on a noisy machine, absolute
times across runs are not.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import igc_np as ig  # noqa: E402
from igc_np import functional as F  # noqa: E402

SHAPES = [(48, 24, 2, 32), (96, 24, 4, 16), (192, 24, 8, 8)]  # (C, L, M, H=W)
# (name, depth, L, M) as ig.nets.get_network takes them; resnet-20 is the usual 16-32-64 one
NETWORKS = [("resnet_igc", 20, 24, 2), ("plain_igc", 38, 24, 2), ("resnet", 20, 16, 1)]
BATCH = 64


def net_label(name, depth, L, M):
    return f"{name}-{depth} " + (f"IGC-L{L}M{M}" if "igc" in name else f"C={L * M}")


def median_times(fns, repeats):
    """Median seconds of each callable; rounds run every callable once, so load drifts hit all."""
    for fn in fns:  # warm-up: allocations, caches, thread pools, oneDNN primitive caches
        fn()
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


# ---- the machine ----------------------------------------------------------------------------------
def machine_header(torch):
    cpu = "unknown CPU"
    try:
        info = dict(line.split(":", 1) for line in open("/proc/cpuinfo") if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu = f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"
    except OSError:
        pass
    from threadpoolctl import threadpool_info
    blas = [f"{d['internal_api']} {d.get('version')} kernel={d.get('architecture')} threads={d['num_threads']}"
            for d in threadpool_info() if d["user_api"] == "blas" and "numpy" in d["filepath"]]
    forced = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ]
    lines = [f"machine: {cpu}, {os.cpu_count()} cores",
             f"igc_np {ig.__version__}: threads={ig.ops.parallel.THREADS}, NumPy {np.__version__}, "
             f"BLAS {'; '.join(blas) or 'unknown'}",
             f"torch {torch.__version__}: threads={torch.get_num_threads()}, "
             f"oneDNN={'yes' if torch.backends.mkldnn.is_available() else 'no'}",
             f"batch {BATCH}, float32; load average before the run {os.getloadavg()[0]:.1f} "
             f"(above ~0.5 other processes share the cores: ratios move, PyTorch's OpenMP threads most)"]
    if forced:
        lines.append(f"WARNING: {', '.join(forced)} set: OpenBLAS runs forced (older) kernels; "
                     "run with env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE")
    return "\n".join(lines)


# ---- the same networks in PyTorch ------------------------------------------------------------------
def torch_modules(torch):
    """The PyTorch layers the compared networks are built from (torch is imported late)."""
    tnn = torch.nn

    class ChannelShuffle(tnn.Module):
        """IGC's permutation: the (b, C/b) grid of channels transposed (= nn.ChannelShuffle(b)).

        In channels_last memory the channel axis is the innermost one: shuffle it there (an NHWC
        view, one copy, an NHWC view back), or every shuffle converts the tensor to NCHW and back.
        Without autograd (evaluation) the native kernel is faster; with it, its backward is not
        (64x48x32x32 channels_last, 1 thread: forward 1.0 vs 2.6 ms, forward+backward 13.5 vs 4.6 ms).
        """

        def __init__(self, b):
            super().__init__()
            self.b = b

        def forward(self, z):
            if not torch.is_grad_enabled():
                return torch.nn.functional.channel_shuffle(z, self.b)
            n, c, h, w = z.shape
            if z.is_contiguous(memory_format=torch.channels_last):
                t = z.permute(0, 2, 3, 1).reshape(n, h, w, self.b, c // self.b)
                return t.transpose(3, 4).reshape(n, h, w, c).permute(0, 3, 1, 2)
            return z.reshape(n, self.b, c // self.b, h, w).transpose(1, 2).reshape(n, c, h, w)

    def conv_bn(cin, cout, k, stride, momentum, relu=True, groups=1):
        layers = [tnn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                  tnn.BatchNorm2d(cout, eps=2e-5, momentum=1 - momentum)]  # igc_np/MXNet momentum
        return layers + [tnn.ReLU(inplace=True)] if relu else layers

    def igc_bn(cin, cout, L, S, stride, momentum, relu=True):
        """docs/reference_protocol.md, the IGC conv: primary 3x3 (L groups), Reorder(L), secondary 1x1 (S groups), Reorder(S)."""
        layers = [tnn.Conv2d(cin, cout, 3, stride, 1, groups=L, bias=False), ChannelShuffle(L),
                  tnn.Conv2d(cout, cout, 1, groups=S, bias=False), ChannelShuffle(S),
                  tnn.BatchNorm2d(cout, eps=2e-5, momentum=1 - momentum)]
        return layers + [tnn.ReLU(inplace=True)] if relu else layers

    class Block(tnn.Module):
        """relu(body(x) + shortcut(x)), as torchvision's BasicBlock (in-place add and ReLU)."""

        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = tnn.Sequential(*body), shortcut
            self.relu = tnn.ReLU(inplace=True)

        def forward(self, x):
            out = self.body(x)
            out += x if self.shortcut is None else self.shortcut(x)
            return self.relu(out)

    return tnn, conv_bn, igc_bn, Block


def torch_network(torch, name, depth, L, M, num_classes=10):
    """The network of ig.nets.get_network(name, depth, num_classes, L, M) (docs/reference_protocol.md)."""
    tnn, conv_bn, igc_bn, Block = torch_modules(torch)
    resnet = name.startswith("resnet")
    n = (depth - 2) // (6 if resnet else 3)
    momentum = 0.9 if resnet else 0.99
    C = L * M
    layers, cin = conv_bn(3, C, 3, 1, momentum), C
    for cout in (C, 2 * C, 4 * C):
        for _ in range(n):
            stride = 1 if cin == cout else 2
            if name == "plain":
                layers += conv_bn(cin, cout, 3, stride, momentum)
            elif name == "plain_igc":
                layers += igc_bn(cin, cout, L, cout // L, stride, momentum)
            else:
                if name == "resnet":
                    body = conv_bn(cin, cout, 3, stride, momentum) + conv_bn(cout, cout, 3, 1, momentum, False)
                    groups = 1
                else:  # resnet_igc: S = C_in/L in the first IGC conv, C_out/L in the second
                    body = (igc_bn(cin, cout, L, cin // L, stride, momentum)
                            + igc_bn(cout, cout, L, cout // L, 1, momentum, False))
                    groups = L
                short = None if cin == cout else tnn.Sequential(*conv_bn(cin, cout, 1, 2, momentum, False, groups))
                layers.append(Block(body, short))
            cin = cout
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(cin, num_classes)]
    return tnn.Sequential(*layers)


def torch_igc_step(torch, C, L, M, H, channels_last):
    """One IGC conv forward + backward in PyTorch (the layers of torch_network's igc_bn)."""
    tnn, _, igc_bn, _ = torch_modules(torch)
    conv = tnn.Sequential(*igc_bn(C, C, L, M, 1, 0.9)[:4])
    x = torch.randn(BATCH, C, H, H)
    gy = torch.randn(BATCH, C, H, H)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x, gy = x.to(memory_format=torch.channels_last), gy.to(memory_format=torch.channels_last)
    x.requires_grad_()

    def step():
        conv(x).backward(gy)
        x.grad = None
        conv.zero_grad(set_to_none=True)
    return step


def torch_steps(torch, net, channels_last):
    """(train step, eval step) callables of the PyTorch network, batch BATCH."""
    model = torch_network(torch, *net)
    x = torch.randn(BATCH, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (BATCH,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()

    def evaluate():
        model.eval()
        with torch.inference_mode():
            model(x)
    return train, evaluate


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


def igc_np_steps(net):
    rng = np.random.default_rng(0)
    name, depth, L, M = net
    model = ig.nets.get_network(name, depth, 10, primary_partition=L, secondary_partition=M, rng=0)
    x = ig.Tensor(rng.standard_normal((BATCH, 3, 32, 32), dtype=np.float32))
    labels = rng.integers(0, 10, BATCH)
    opt = ig.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def train():
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        opt.step()

    def evaluate():
        model.eval()
        with ig.no_grad():
            model(x)
    return train, evaluate


def check_same_network(torch, net):
    """Stop unless both libraries' networks have the same number of learned parameters."""
    name, depth, L, M = net
    n_ours = ig.nets.count_params(ig.nets.get_network(name, depth, 10, L, M))
    n_torch = sum(p.numel() for p in torch_network(torch, *net).parameters())
    if n_ours != n_torch:
        sys.exit(f"bench_cpu.py: {net_label(*net)}: the PyTorch network has {n_torch:,} parameters, "
                 f"igc_np's {n_ours:,}; the comparison would mean nothing")
    return n_ours


# ---- peak memory of a training step, in a fresh process -------------------------------------------
def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def probe_memory(lib, net, channels_last):
    """Run in a subprocess: MiB of resident memory a training step adds to the built model + batch.

    Peak resident set (VmHWM) over three steps minus the resident set before the first one. This
    counts activations, gradients, optimizer state, workspaces and what the allocator keeps.
    """
    if lib == "torch":
        import torch
        torch.set_num_threads(ig.ops.parallel.THREADS)
        train, _ = torch_steps(torch, net, channels_last)
    else:
        train, _ = igc_np_steps(net)
    before = _rss_kib("VmRSS")
    for _ in range(3):
        train()
    return (_rss_kib("VmHWM") - before) / 1024


def memory_in_subprocess(lib, net, channels_last):
    cmd = [sys.executable, __file__, "--probe-memory", json.dumps([lib, list(net), channels_last])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---- main -----------------------------------------------------------------------------------------
def set_threads(n):
    """igc_np's worker threads and NumPy's BLAS threads = n (PyTorch follows ig.ops.parallel.THREADS).

    With one igc_np thread the engine calls BLAS outside any parallel region, so BLAS itself must be
    held to n too; the memory subprocesses inherit n through IGC_NP_THREADS.
    """
    from threadpoolctl import threadpool_limits
    ig.ops.parallel.THREADS = n
    os.environ["IGC_NP_THREADS"] = str(n)
    threadpool_limits(n, user_api="blas")


def ratio(ours, theirs):
    return f"{theirs / ours:.2f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--skip-layers", action="store_true", help="only the networks")
    parser.add_argument("--skip-memory", action="store_true", help="no peak-memory subprocesses")
    parser.add_argument("--networks", nargs="*", default=[n[0] for n in NETWORKS],
                        choices=[n[0] for n in NETWORKS], help="which networks (default: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of both libraries (default: igc_np's, os.cpu_count() or IGC_NP_THREADS)")
    parser.add_argument("--probe-memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        set_threads(args.threads)
    if args.probe_memory:  # the subprocess of memory_in_subprocess
        set_threads(ig.ops.parallel.THREADS)
        lib, net, channels_last = json.loads(args.probe_memory)
        print(json.dumps(probe_memory(lib, tuple(net), channels_last)))
        return
    try:
        import torch
    except ImportError:
        sys.exit("bench_cpu.py compares against PyTorch's CPU build: pip install torch==2.13.0")
    torch.manual_seed(0)
    torch.set_num_threads(ig.ops.parallel.THREADS)  # the same number of threads for both
    reps = 3 if args.quick else 7
    print(machine_header(torch))
    if not args.skip_layers:
        print("\n| IGC conv, forward + backward (ms) | igc_np | PyTorch NCHW | PyTorch channels_last | igc_np vs best |")
        print("|---|---|---|---|---|")
        for C, L, M, H in SHAPES:
            ours, nchw, cl = median_times([igc_np_igc_step(C, L, M, H), torch_igc_step(torch, C, L, M, H, False),
                                           torch_igc_step(torch, C, L, M, H, True)], reps)
            print(f"| C={C}, L={L}, M={M}, {H}x{H} | {1e3 * ours:.1f} | {1e3 * nchw:.1f} | {1e3 * cl:.1f} | "
                  f"{ratio(ours, min(nchw, cl))} |", flush=True)
    nets = [n for n in NETWORKS if n[0] in args.networks]
    rows = []
    for net in nets:
        params = check_same_network(torch, net)
        ours, nchw, cl = igc_np_steps(net), torch_steps(torch, net, False), torch_steps(torch, net, True)
        train = median_times([ours[0], nchw[0], cl[0]], reps)
        evaluate = median_times([ours[1], nchw[1], cl[1]], reps)
        mem = ["-"] * 3
        if not args.skip_memory:
            mem = [f"{memory_in_subprocess(lib, net, layout):.0f}"
                   for lib, layout in (("igc_np", False), ("torch", False), ("torch", True))]
        rows.append((net, params, train, evaluate, mem))
        print(f"  measured {net_label(*net)}", file=sys.stderr, flush=True)
    print("\n| network (batch 64) | parameters | | training images/s | vs best | eval images/s | vs best "
          "| training-step peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for net, params, train, evaluate, mem in rows:
        for k, who in enumerate(("igc_np", "PyTorch NCHW", "PyTorch channels_last")):
            tr = ratio(train[0], min(train[1:])) if k == 0 else ""
            ev = ratio(evaluate[0], min(evaluate[1:])) if k == 0 else ""
            head = f"{net_label(*net)} | {params:,}" if k == 0 else " | "
            print(f"| {head} | {who} | {BATCH / train[k]:.0f} | {tr} | {BATCH / evaluate[k]:.0f} | {ev} "
                  f"| {mem[k]} |")
    print("\nvs best: igc_np's speed / the faster PyTorch layout's (above 1: igc_np is faster). Peak memory: "
          "resident-set high-water of three training steps in a fresh process, minus its size with the "
          "model and batch built.")


if __name__ == "__main__":
    main()
