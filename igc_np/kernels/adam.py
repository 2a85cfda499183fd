"""Launcher of the Adam / AdamW step kernels (adam.cu): igc_np.optim.Adam's step on "cuda" and "emu".

    adam_step(weights, grads, exp_avgs, exp_avg_sqs, step, lr, betas, eps, weight_decay, decoupled,
              device, version=None, max_exp_avg_sqs=None)                         (in place)

weights[i], grads[i], exp_avgs[i] (m), exp_avg_sqs[i] (v): arrays of one shape each, all of one
dtype (float32 or float64), C-contiguous, on `device` ("cuda": cupy arrays; "emu": numpy arrays run
by the CPU emulator). step: the step number t (>= 1) of every tensor given, which sets the bias
corrections. decoupled: AdamW's weight decay (w *= 1 - lr * weight_decay) instead of Adam's
(g += weight_decay * w). max_exp_avg_sqs: AMSGrad's running maxima of v (arrays as v), or None.

version: None (the one kernels/versions.py selects) or op "adam" 1 (one launch per tensor) or
2 (one launch for all, default). The launch geometry is here, beside its kernel: v1 one thread
per element (THREADS per block, grid-stride beyond MAX_BLOCKS), v2 one block per chunk of CHUNK
elements (THREADS threads striding over it), chunks listed in a table uploaded with the addresses.
"""
import math

import numpy as np

from . import versions
from .loader import get_module

THREADS = 256        # threads per block, both versions
MAX_BLOCKS = 1 << 20  # v1 loops (grid-stride) over whatever a grid this size leaves; v2 loops over chunks
CHUNK = 4096         # v2: elements per chunk (a block takes chunks b, b + gridDim.x, ...)

versions.register("adam", {
    1: "adam.cu: one launch per parameter",
    2: "adam.cu: one multi-tensor launch per dtype"}, default=2)


def _xp(device):
    if isinstance(device, str) and device.split(":")[0] == "cuda":
        import cupy  # lazily: only the GPU path needs it
        return cupy
    if device == "emu":
        return np
    raise ValueError(f"adam_step: device must be 'cuda' or 'emu', got {device!r}")


def _address(a):
    """The device address of an array's first element (CuPy: a.data.ptr; the emulator: host memory)."""
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def hyper_parameters(step, lr, betas, eps, weight_decay, decoupled, amsgrad, dtype):
    """The kernel's scalars for step t, computed in double and cast to `dtype` (adam.cu's header)."""
    beta1, beta2 = betas
    T = np.dtype(dtype).type
    step_size = lr / (1 - beta1 ** step)
    bc2_sqrt = math.sqrt(1 - beta2 ** step)
    return (T(1 - beta1), T(beta2), T(1 - beta2), T(eps), T(step_size), T(bc2_sqrt), T(weight_decay),
            T(1 - lr * weight_decay), np.int32(bool(decoupled)), np.int32(bool(amsgrad)))


def _check(op, xp, device, weights, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs):
    if not (len(weights) == len(grads) == len(exp_avgs) == len(exp_avg_sqs) == len(max_exp_avg_sqs)) or not weights:
        raise ValueError(f"{op}: needs as many weights, grads, exp_avgs, exp_avg_sqs (and max_exp_avg_sqs) "
                         f"(at least one), got {len(weights)}, {len(grads)}, {len(exp_avgs)}, {len(exp_avg_sqs)}, "
                         f"{len(max_exp_avg_sqs)}")
    dt = weights[0].dtype
    if dt not in (np.float32, np.float64):
        raise ValueError(f"{op}: weights must be float32 or float64, got {dt}")
    for i, arrays in enumerate(zip(weights, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs)):
        w = arrays[0]
        for name, a in zip(("weight", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), arrays):
            if not isinstance(a, xp.ndarray):
                raise TypeError(f"{op}: {name} {i} must be a {xp.__name__}.ndarray on device {device!r}, "
                                f"got {type(a).__module__}.{type(a).__name__}")
            if a.dtype != dt or a.shape != w.shape or not a.flags.c_contiguous:
                raise ValueError(f"{op}: {name} {i} (shape {tuple(a.shape)}, {a.dtype}) must be a C-contiguous "
                                 f"{dt} array of the weight's shape {tuple(w.shape)}")
        if w.size >= 2**31:
            raise ValueError(f"{op}: weight {i} of {w.size} elements exceeds the kernel's int indexing")
    return dt


def adam_step(weights, grads, exp_avgs, exp_avg_sqs, step, lr, betas, eps, weight_decay, decoupled, device,
              version=None, max_exp_avg_sqs=None):
    """In place, for each i: igc_np.optim's Adam (decoupled: AdamW) step t = `step` on weights[i]
    with grads[i], updating exp_avgs[i] and exp_avg_sqs[i] (and max_exp_avg_sqs[i]: AMSGrad).
    version 1: one launch per tensor; 2: one launch for all."""
    op = "adam_step"
    xp = _xp(device)
    version = versions.resolve("adam", version, where=op)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{op}: step must be an int >= 1 (the step number t of the bias corrections), got {step!r}")
    amsgrad = max_exp_avg_sqs is not None
    vmaxs = list(max_exp_avg_sqs) if amsgrad else list(exp_avg_sqs)  # not read without amsgrad
    dt = _check(op, xp, device, weights, grads, exp_avgs, exp_avg_sqs, vmaxs)
    hyper = hyper_parameters(int(step), lr, betas, eps, weight_decay, decoupled, amsgrad, dt)
    module = get_module("adam.cu", dt, device)
    if version == 1:
        fn = module.get_function("adam_update")
        for w, g, m, v, vmax in zip(weights, grads, exp_avgs, exp_avg_sqs, vmaxs):
            if not w.size:
                continue
            blocks = min((w.size + THREADS - 1) // THREADS, MAX_BLOCKS)
            fn((blocks,), (THREADS,), (w, g, m, v, vmax, np.int32(w.size)) + hyper)
        return
    rows, chunks = [], []
    for t, (w, g, m, v, vmax) in enumerate(zip(weights, grads, exp_avgs, exp_avg_sqs, vmaxs)):
        rows.append((_address(w), _address(g), _address(m), _address(v), _address(vmax), w.size))
        chunks.extend((t, start) for start in range(0, w.size, CHUNK))
    if not chunks:
        return
    table = np.array([c for row in rows for c in row] + [c for ch in chunks for c in ch], dtype=np.uint64)
    table = xp.asarray(table)  # host -> device copy (asynchronous on a GPU); no sync
    # CuPy's memory pool is stream-ordered: `table` may be freed on return, the launch still reads it
    module.get_function("adam_multi_tensor")(
        (min(len(chunks), MAX_BLOCKS),), (THREADS,),
        (table, np.int32(len(rows)), np.int32(len(chunks)), np.int32(CHUNK)) + hyper)
