"""Launcher of the Adam / AdamW step kernels (adam.cu): igc_np.optim.Adam's step on "cuda" and "emu".

    adam_step(weights, grads, exp_avgs, exp_avg_sqs, step, lr, betas, eps, weight_decay, decoupled,
              device, version=None, max_exp_avg_sqs=None)                         (in place)

weights[i], grads[i], exp_avgs[i] (m), exp_avg_sqs[i] (v): arrays of one shape each, all of one
dtype (float32 or float64), C-contiguous, on `device` ("cuda": cupy arrays; "emu": numpy arrays run
by the CPU emulator). step: the step number t (>= 1) of every tensor given, which sets the bias
corrections. decoupled: AdamW's weight decay (w *= 1 - lr * weight_decay) instead of Adam's
(g += weight_decay * w). max_exp_avg_sqs: AMSGrad's running maxima of v (arrays as v), or None.

version: None (the one kernels/versions.py selects) or op "adam" 1 (one launch per tensor) or
2 (one launch for all, default). Both geometries, and the array checks, are SGD's: they live in
kernels/multi_tensor.py (v1 one thread per element, v2 one block per chunk of multi_tensor.CHUNK
elements, the chunks listed in a table uploaded with the arrays' addresses).
"""
import math

import numpy as np

from . import versions
from .loader import get_module
from .multi_tensor import check_tensors, run_multi_tensor, run_per_tensor

versions.register("adam", {
    1: "adam.cu: one launch per parameter",
    2: "adam.cu: one multi-tensor launch per dtype"}, default=2)


def hyper_parameters(step, lr, betas, eps, weight_decay, decoupled, amsgrad, dtype):
    """The kernel's scalars for step t, computed in double and cast to `dtype` (adam.cu's header)."""
    beta1, beta2 = betas
    T = np.dtype(dtype).type
    step_size = lr / (1 - beta1 ** step)
    bc2_sqrt = math.sqrt(1 - beta2 ** step)
    return (T(1 - beta1), T(beta2), T(1 - beta2), T(eps), T(step_size), T(bc2_sqrt), T(weight_decay),
            T(1 - lr * weight_decay), np.int32(bool(decoupled)), np.int32(bool(amsgrad)))


def adam_step(weights, grads, exp_avgs, exp_avg_sqs, step, lr, betas, eps, weight_decay, decoupled, device,
              version=None, max_exp_avg_sqs=None):
    """In place, for each i: igc_np.optim's Adam (decoupled: AdamW) step t = `step` on weights[i]
    with grads[i], updating exp_avgs[i] and exp_avg_sqs[i] (and max_exp_avg_sqs[i]: AMSGrad).
    version 1: one launch per tensor; 2: one launch for all."""
    op = "adam_step"
    version = versions.resolve("adam", version, where=op)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{op}: step must be an int >= 1 (the step number t of the bias corrections), got {step!r}")
    amsgrad = max_exp_avg_sqs is not None
    lists = {"weights": weights, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs,
             "max_exp_avg_sqs": max_exp_avg_sqs if amsgrad else weights}  # without amsgrad: not read
    dt, tensors = check_tensors(op, device, lists, unread=() if amsgrad else ("max_exp_avg_sqs",))
    hyper = hyper_parameters(int(step), lr, betas, eps, weight_decay, decoupled, amsgrad, dt)
    run = run_per_tensor if version == 1 else run_multi_tensor
    run(get_module("adam.cu", dt, device), "adam.cu", ("adam_update", "adam_multi_tensor")[version - 1], tensors,
        hyper, op, dt.itemsize)
