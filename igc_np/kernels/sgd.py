"""Launcher of sgd.cu: the SGD step of igc_np.optim.SGD (momentum, Nesterov, weight decay) on
"cuda" (cupy arrays) or "emu" (numpy arrays, the CPU emulator).

    sgd_step(weights, grads, velocities, lr, momentum, nesterov, weight_decay, device, version=None)  (in place)

version: None (the one kernels/versions.py selects) or an int of op "sgd": 1 (one launch per
tensor) or 2 (one multi-tensor launch for all).
"""
import numpy as np

from . import versions
from .launch import MAX_BLOCKS, Launch, check_and_run, elementwise_plan, i32, xp_of
from .loader import get_module

versions.register("sgd", {
    1: "sgd.cu: one launch per parameter",
    2: "sgd.cu: one multi-tensor launch per dtype"}, default=2)

SGD_CHUNK = 4096     # elements per block of the multi-tensor launch
SGD_THREADS = 256


def _scalar(dtype, v):
    return np.dtype(dtype).type(v)


def _address(a):
    """The device address of an array's first element (CuPy: a.data.ptr; the emulator: host memory)."""
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def sgd_step(weights, grads, velocities, lr, momentum, nesterov, weight_decay, device, version=None):
    """In place, for each i: the SGD step of igc_np.optim.SGD on weights[i] with grads[i] and
    velocities[i] (ignored, may be None, when momentum is 0). Arrays of one dtype, C-contiguous,
    on `device`. version 1: one launch per tensor; 2: one launch for all."""
    op = "sgd_step"
    xp = xp_of(device)
    version = versions.resolve("sgd", version, where=op)
    if not (len(weights) == len(grads) == len(velocities)) or not weights:
        raise ValueError(f"{op}: needs as many weights, grads and velocities (at least one), got "
                         f"{len(weights)}, {len(grads)}, {len(velocities)}")
    use_momentum = momentum != 0
    dt = weights[0].dtype
    if dt not in (np.float32, np.float64):
        raise ValueError(f"{op}: weights must be float32 or float64, got {dt}")
    for i, (w, g, v) in enumerate(zip(weights, grads, velocities)):
        for name, a in (("weight", w), ("grad", g)) + ((("velocity", v),) if use_momentum else ()):
            if not isinstance(a, xp.ndarray):
                raise TypeError(f"{op}: {name} {i} must be a {xp.__name__}.ndarray on device {device!r}, "
                                f"got {type(a).__module__}.{type(a).__name__}")
            if a.dtype != dt or a.shape != w.shape or not a.flags.c_contiguous:
                raise ValueError(f"{op}: {name} {i} (shape {tuple(a.shape)}, {a.dtype}) must be a C-contiguous "
                                 f"{dt} array of the weight's shape {tuple(w.shape)}")
        if w.size >= 2**31:
            raise ValueError(f"{op}: weight {i} of {w.size} elements exceeds the kernel's int indexing")
    hyper = (_scalar(dt, lr), _scalar(dt, momentum), _scalar(dt, weight_decay), i32(use_momentum),
             i32(bool(nesterov)))
    module = get_module("sgd.cu", dt, device)
    if version == 1:
        for i, (w, g, v) in enumerate(zip(weights, grads, velocities)):
            check_and_run(module, elementwise_plan("sgd.cu", "sgd_update", w.size),
                          (w, g, v if use_momentum else w, i32(w.size)) + hyper,
                          f"{op} v1 (weight {i}, shape {tuple(w.shape)})", dt.itemsize)
        return
    rows, chunks = [], []
    for t, (w, g, v) in enumerate(zip(weights, grads, velocities)):
        rows.append((_address(w), _address(g), _address(v if use_momentum else w), w.size))
        chunks.extend((t, start) for start in range(0, w.size, SGD_CHUNK))
    table = np.array([c for row in rows for c in row] + [c for ch in chunks for c in ch], dtype=np.uint64)
    table = xp.asarray(table)  # host -> device copy (asynchronous on a GPU); no sync
    # CuPy's memory pool is stream-ordered: `table` may be freed on return, the launch still reads it
    plan = Launch("sgd.cu", "sgd_multi_tensor", (), (min(len(chunks), MAX_BLOCKS),), (SGD_THREADS,))
    check_and_run(module, plan, (table, i32(len(rows)), i32(len(chunks)), i32(SGD_CHUNK)) + hyper,
                  f"{op} v2 ({len(rows)} tensors, {len(chunks)} chunks)", dt.itemsize)
