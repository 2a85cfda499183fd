"""Launcher of sgd.cu: the SGD step of igc_np.optim.SGD (momentum, Nesterov, weight decay) on
"cuda" (cupy arrays) or "emu" (numpy arrays, the CPU emulator).

    sgd_step(weights, grads, velocities, lr, momentum, nesterov, weight_decay, device, version=None)  (in place)

version: None (the one kernels/versions.py selects) or an int of op "sgd": 1 (one launch per
tensor) or 2 (one multi-tensor launch for all).
"""
from . import versions
from .launch import i32
from .loader import get_module
from .multi_tensor import check_tensors, run_multi_tensor, run_per_tensor

versions.register("sgd", {
    1: "sgd.cu: one launch per parameter",
    2: "sgd.cu: one multi-tensor launch per dtype"}, default=2)


def sgd_step(weights, grads, velocities, lr, momentum, nesterov, weight_decay, device, version=None):
    """In place, for each i: the SGD step of igc_np.optim.SGD on weights[i] with grads[i] and
    velocities[i] (ignored, may be None, when momentum is 0). Arrays of one dtype, C-contiguous,
    on `device`. version 1: one launch per tensor; 2: one launch for all (kernels/multi_tensor.py)."""
    op = "sgd_step"
    version = versions.resolve("sgd", version, where=op)
    use_momentum = momentum != 0
    dt, tensors = check_tensors(op, device, {"weights": weights, "grads": grads, "velocities": velocities},
                                unread=() if use_momentum else ("velocities",))
    hyper = (dt.type(lr), dt.type(momentum), dt.type(weight_decay), i32(use_momentum), i32(bool(nesterov)))
    run = run_per_tensor if version == 1 else run_multi_tensor
    run(get_module("sgd.cu", dt, device), "sgd.cu", ("sgd_update", "sgd_multi_tensor")[version - 1], tensors,
        hyper, op, dt.itemsize)
