"""Our CUDA kernels vs cuDNN on the IGC conv shapes, forward and backward.

    python benchmarks/bench_gpu.py [--batch 64] [--repeat 20] [--dtype float32]

For each IGC conv (primary 3x3 group conv with L groups, then the secondary 1x1 conv with S = M
groups between the two permutations) it times, on the GPU:
  - primary:   forward, backward-data, backward-weight: igc_np.kernels.ops vs cuDNN (grouped conv);
  - secondary: the fused kernels vs cuDNN's 1x1 group conv plus the two permutation copies;
and prints milliseconds and the ratio ours / cuDNN (below 1: ours is faster). cuDNN is reached
through PyTorch when it is importable with CUDA, else through CuPy's cuDNN binding; without either
only our timings are printed. Every result is checked against cuDNN's before it is timed.
Needs a CUDA GPU and CuPy; exits with a message otherwise.
"""
import argparse
import sys

import numpy as np

from igc_np.kernels import ops

# (name, N is --batch, C, H=W, L, M); S = M secondary partitions, C = L*M
CASES = [
    ("CIFAR IGC-L24M2 stage 1", 48, 32, 24, 2),
    ("CIFAR IGC-L24M4 stage 2", 96, 16, 24, 4),
    ("CIFAR IGC-L24M8 stage 3", 192, 8, 24, 8),
    ("ImageNet IGC-L4M32 stage 1", 128, 56, 4, 32),
    ("ImageNet IGC-L100M2 stage 1", 200, 56, 100, 2),
]


def gpu_or_exit():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
        why = "CuPy sees no CUDA device"
    except ImportError:
        why = "CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x)"
    except Exception as e:  # driver missing, etc.
        why = f"CUDA is unavailable: {e}"
    sys.exit(f"bench_gpu.py needs a CUDA GPU: {why}.")


def cupy_timer(cupy, fn, repeat):
    """Median milliseconds of fn() on the GPU, measured with CUDA events after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def torch_timer(torch, fn, repeat):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return float(np.median(times))


class TorchCudnn:
    """cuDNN through PyTorch: grouped conv and its two backward passes, and the permutations."""
    name = "cuDNN (PyTorch)"

    def __init__(self, torch):
        self.torch = torch
        torch.backends.cudnn.benchmark = True   # let cuDNN pick its fastest algorithm
        torch.backends.cudnn.allow_tf32 = False  # compare float32 with float32

    def tensor(self, a):
        return self.torch.as_tensor(np.asarray(a), device="cuda")

    def to_numpy(self, t):
        return t.detach().cpu().numpy()

    def conv(self, x, W, stride, padding, groups):
        return self.torch.nn.functional.conv2d(x, W, None, stride, padding, 1, groups)

    def conv_backward(self, gy, x, W, stride, padding, groups, which):
        mask = [which == "data", which == "weight", False]
        gx, gW, _ = self.torch.ops.aten.convolution_backward(
            gy, x, W, None, list(stride), list(padding), [1, 1], False, [0, 0], groups, mask)
        return gx if which == "data" else gW

    def permute(self, x, b):
        N, C, H, W = x.shape
        return x.view(N, b, C // b, H, W).transpose(1, 2).reshape(N, C, H, W)

    def timer(self, fn, repeat):
        return torch_timer(self.torch, fn, repeat)


class CupyCudnn(TorchCudnn):
    """cuDNN through CuPy's binding (cupyx.cudnn), when PyTorch is absent."""
    name = "cuDNN (CuPy)"

    def __init__(self, cupy, cudnn):
        self.cupy, self.cudnn = cupy, cudnn

    def tensor(self, a):
        return self.cupy.asarray(a)

    def to_numpy(self, t):
        return self.cupy.asnumpy(t)

    def _out_shape(self, x, W, stride, padding):
        N, _, H, Wd = x.shape
        C_out, _, kh, kw = W.shape
        return (N, C_out, (H + 2 * padding[0] - kh) // stride[0] + 1, (Wd + 2 * padding[1] - kw) // stride[1] + 1)

    def conv(self, x, W, stride, padding, groups):
        y = self.cupy.empty(self._out_shape(x, W, stride, padding), dtype=x.dtype)
        self.cudnn.convolution_forward(x, W, None, y, padding, stride, (1, 1), groups,
                                       auto_tune=True, tensor_core="never")
        return y

    def conv_backward(self, gy, x, W, stride, padding, groups, which):
        if which == "data":
            gx = self.cupy.empty_like(x)
            self.cudnn.convolution_backward_data(W, gy, None, gx, padding, stride, (1, 1), groups,
                                                 deterministic=False, auto_tune=True, tensor_core="never")
            return gx
        gW = self.cupy.empty_like(W)
        self.cudnn.convolution_backward_filter(x, gy, gW, padding, stride, (1, 1), groups,
                                               deterministic=False, auto_tune=True, tensor_core="never")
        return gW

    def permute(self, x, b):
        N, C, H, W = x.shape
        return self.cupy.ascontiguousarray(x.reshape(N, b, C // b, H, W).transpose(0, 2, 1, 3, 4)).reshape(N, C, H, W)

    def timer(self, fn, repeat):
        return cupy_timer(self.cupy, fn, repeat)


def find_cudnn(cupy):
    try:
        import torch
        if torch.cuda.is_available():
            return TorchCudnn(torch)
    except Exception:  # not installed, or a build that cannot see this GPU
        pass
    try:
        from cupyx import cudnn  # raises when CuPy was built or installed without cuDNN
        return CupyCudnn(cupy, cudnn)
    except Exception:
        pass
    return None


def check(name, ours, theirs, dtype):
    tol = 1e-3 if dtype == np.float32 else 1e-9
    scale = max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(ours - theirs).max()) / scale
    if not err < tol:
        raise AssertionError(f"{name}: ours differs from cuDNN by {err:.3g} (relative to max |value|)")


def bench_case(cupy, ref, name, N, C, HW, L, M, dtype, repeat):
    rng = np.random.default_rng(0)
    S = M
    x_h = rng.standard_normal((N, C, HW, HW)).astype(dtype)
    # scale first, cast last: a NumPy float64 scalar would promote a float32 array to float64
    W_h = (rng.standard_normal((C, C // L, 3, 3)) * np.sqrt(2 / (9 * C // L))).astype(dtype)
    W2_h = (rng.standard_normal((C, C // S, 1, 1)) * np.sqrt(2 / (C // S))).astype(dtype)
    gy_h = rng.standard_normal((N, C, HW, HW)).astype(dtype)
    x, W, W2, gy = (cupy.asarray(a) for a in (x_h, W_h, W2_h, gy_h))
    st, pad = (1, 1), (1, 1)

    ours = {
        "primary fwd": lambda: ops.conv2d_forward(x, W, st, pad, L, "cuda"),
        "primary bwd-data": lambda: ops.conv2d_backward_data(gy, W, x.shape, st, pad, L, "cuda"),
        "primary bwd-weight": lambda: ops.conv2d_backward_weight(x, gy, W.shape, st, pad, L, "cuda"),
        "secondary fwd": lambda: ops.interleaved_secondary_forward(x, W2, L, S, "cuda"),
        "secondary bwd-data": lambda: ops.interleaved_secondary_backward_data(gy, W2, L, S, "cuda"),
        "secondary bwd-weight": lambda: ops.interleaved_secondary_backward_weight(x, gy, W2.shape, L, S, "cuda"),
    }
    theirs = {}
    if ref is not None:
        tx, tW, tW2, tgy = (ref.tensor(a) for a in (x_h, W_h, W2_h, gy_h))
        C_S = C // S
        theirs = {
            "primary fwd": lambda: ref.conv(tx, tW, st, pad, L),
            "primary bwd-data": lambda: ref.conv_backward(tgy, tx, tW, st, pad, L, "data"),
            "primary bwd-weight": lambda: ref.conv_backward(tgy, tx, tW, st, pad, L, "weight"),
            # permute(L) -> 1x1 conv with S groups -> permute(S), and the chain's gradients
            "secondary fwd": lambda: ref.permute(ref.conv(ref.permute(tx, L), tW2, (1, 1), (0, 0), S), S),
            "secondary bwd-data": lambda: ref.permute(ref.conv_backward(
                ref.permute(tgy, C_S), ref.permute(tx, L), tW2, (1, 1), (0, 0), S, "data"), C // L),
            "secondary bwd-weight": lambda: ref.conv_backward(
                ref.permute(tgy, C_S), ref.permute(tx, L), tW2, (1, 1), (0, 0), S, "weight"),
        }
    print(f"\n{name}: N={N} C={C} {HW}x{HW} L={L} M={M} ({dtype.__name__})")
    print(f"  {'op':<22}{'ours ms':>10}{'cuDNN ms':>10}{'ratio':>8}")
    for op, fn in ours.items():
        if op in theirs:
            check(f"{name} {op}", cupy.asnumpy(fn()), ref.to_numpy(theirs[op]()), dtype)
        t_ours = cupy_timer(cupy, fn, repeat)
        if op in theirs:
            t_ref = ref.timer(theirs[op], repeat)
            print(f"  {op:<22}{t_ours:>10.3f}{t_ref:>10.3f}{t_ours / t_ref:>8.2f}")
        else:
            print(f"  {op:<22}{t_ours:>10.3f}{'-':>10}{'-':>8}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args(argv)
    cupy = gpu_or_exit()
    ref = find_cudnn(cupy)
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    print(f"GPU: {props['name'].decode() if isinstance(props['name'], bytes) else props['name']}; "
          f"reference: {ref.name if ref else 'none (no PyTorch with CUDA, no cupyx.cudnn)'}")
    for name, C, HW, L, M in CASES:
        bench_case(cupy, ref, name, args.batch, C, HW, L, M, np.dtype(args.dtype).type, args.repeat)


if __name__ == "__main__":
    main()
