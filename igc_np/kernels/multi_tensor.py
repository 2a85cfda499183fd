"""What the optimizer-step launchers (sgd.py, adam.py) share: the per-tensor array checks and
their two launch geometries.

An optimizer step updates a list of tensors in place, each with its own companions (SGD: grad,
velocity; Adam: grad, m, v, vmax), every array of a tensor of the weight's shape. Both kernels
come in the same two versions:

    v1 (``run_per_tensor``): one launch per tensor, one thread per element (launch.elementwise_plan);
       the kernel takes the tensor's arrays, its element count n, then the hyper-parameters.
    v2 (``run_multi_tensor``): ONE launch for all the tensors of a dtype. A table of uint64 is
       uploaded: for tensor t its arrays' device addresses and its size (len(arrays) + 1 entries),
       then for every chunk of CHUNK elements (tensor, first element). Block b takes chunks
       b, b + gridDim.x, ...; the kernel takes (table, n_tensors, n_chunks, chunk, hyper...).

A tensor with no element launches nothing (v1) and has no chunk (v2).
"""
import numpy as np

from .launch import (MAX_BLOCKS, MAX_INDEXED_ELEMENTS, THREADS, Launch, check_and_run, check_kind, device_of,
                     elementwise_plan, i32, xp_of)

CHUNK = 4096   # v2: elements per chunk (the threads of a block stride over it)


def address(a):
    """The device address of an array's first element (CuPy: a.data.ptr; the emulator: host memory)."""
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def check_tensors(op, device, lists, unread=()):
    """Check the tensor lists of an optimizer step; return (dtype, per-tensor tuples of arrays).

    lists: {argument name: list of arrays}, the weights first; every list as long as the weights
    (at least one), every array a C-contiguous array of `device` ("cuda": cupy, "emu": numpy) with
    its weight's shape and the weights' dtype (float32 or float64). A list named in `unread` is
    not read by the kernel (SGD's velocities without momentum): its entries may be anything, the
    weight takes their place in the tuples (the kernel gets a valid address it never touches)."""
    xp = xp_of(device)
    names = list(lists)
    counts = [len(lists[n]) for n in names]
    if len(set(counts)) != 1 or not counts[0]:
        raise ValueError(f"{op}: needs as many {', '.join(names)} (at least one), got "
                         f"{', '.join(map(str, counts))}")
    weights = lists[names[0]]
    check_kind(op, xp, device, f"{names[0]}[0]", weights[0])
    dtype = weights[0].dtype
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"{op}: {names[0]} must be float32 or float64, got {dtype}")
    tensors = []
    for i in range(counts[0]):
        w = weights[i]
        for name in names:
            a = lists[name][i] if name not in unread else w
            check_kind(op, xp, device, f"{name}[{i}]", a)
            if a.size > MAX_INDEXED_ELEMENTS:  # before the layout: a broadcast view says this too
                raise ValueError(f"{op}: {name}[{i}] of {a.size} elements exceeds the kernels' int indexing "
                                 f"(at most {MAX_INDEXED_ELEMENTS})")
            if a.dtype != dtype or a.shape != w.shape or not a.flags.c_contiguous:
                raise ValueError(f"{op}: {name}[{i}] (shape {tuple(a.shape)}, {a.dtype}) must be a C-contiguous "
                                 f"{dtype} array of {names[0]}[{i}]'s shape {tuple(w.shape)}")
        tensors.append(tuple(lists[n][i] if n not in unread else w for n in names))
    return dtype, tensors


def run_per_tensor(module, file, kernel, tensors, hyper, where, itemsize):
    """v1: one launch of `kernel` per tensor with (arrays..., n) + hyper; `where` names the call."""
    for i, arrays in enumerate(tensors):
        n = arrays[0].size
        if n:
            check_and_run(module, elementwise_plan(file, kernel, n), arrays + (i32(n),) + hyper,
                          f"{where} v1 (tensor {i}, shape {tuple(arrays[0].shape)})", itemsize)


def run_multi_tensor(module, file, kernel, tensors, hyper, where, itemsize):
    """v2: one launch of `kernel` for all `tensors` with (table, n_tensors, n_chunks, CHUNK) + hyper."""
    rows, chunks = [], []
    for t, arrays in enumerate(tensors):
        rows.extend([address(a) for a in arrays] + [arrays[0].size])
        chunks.extend((t, start) for start in range(0, arrays[0].size, CHUNK))
    if not chunks:
        return
    xp = xp_of(device_of(tensors[0][0]))
    table = xp.asarray(np.array(rows + [c for ch in chunks for c in ch], dtype=np.uint64))
    # host -> device copy, asynchronous on a GPU (no sync); CuPy's memory pool is stream-ordered:
    # `table` may be freed on return, the launch still reads it
    plan = Launch(file, kernel, (), (min(len(chunks), MAX_BLOCKS),), (THREADS,))
    check_and_run(module, plan, (table, i32(len(tensors)), i32(len(chunks)), i32(CHUNK)) + hyper,
                  f"{where} v2 ({len(tensors)} tensors, {len(chunks)} chunks)", itemsize)
