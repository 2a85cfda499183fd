"""Finite-difference gradient check (use float64 inputs).

Compares the gradient that backward computes with a central difference of the function along a
random direction v:  <grad f(x), v>  vs  (f(x + h v) - f(x - h v)) / 2h, for every input, where
f = sum(outputs * random weights). One direction per input is cheap and, drawn at random,
catches any wrong entry with probability 1.
"""
import numpy as np

from . import backend
from .autograd import Tensor, no_grad


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, seed=0, directions=2):
    """fn(*inputs) -> Tensor or tuple of Tensors. Raises AssertionError with details on mismatch.

    inputs: a Tensor, or a tuple/list of Tensors (float64, requires_grad=True for those to check;
    at least one) and other values passed through. Returns True when every checked input agrees.
    """
    if isinstance(inputs, Tensor):  # one input: gradcheck(fn, x) as gradcheck(fn, (x,))
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise TypeError(f"gradcheck: inputs must be a Tensor or a tuple/list of them, got "
                        f"{type(inputs).__name__}")
    rng = np.random.default_rng(seed)
    tensors = [x for x in inputs if isinstance(x, Tensor) and x.requires_grad]
    if not tensors:  # nothing to check: returning True here would pass any backward
        raise ValueError("gradcheck: no input is a Tensor with requires_grad=True, so there is no "
                         "gradient to check; pass ig.Tensor(x, requires_grad=True)")
    for x in tensors:
        if x.dtype != np.float64:
            raise ValueError(f"gradcheck: use float64 inputs, got {x.dtype} for shape {x.shape}")
        x.grad = None

    def outputs(args):
        out = fn(*args)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    outs = outputs(inputs)
    weights = [rng.standard_normal(o.shape) for o in outs]
    total = None
    for o, w in zip(outs, weights):
        term = (o * Tensor(w, device=o.device)).sum()
        total = term if total is None else total + term
    total.backward()

    def scalar(args):
        with no_grad():
            return sum(float((o.numpy() * w).sum()) for o, w in zip(outputs(args), weights))

    for k, x in enumerate(tensors):
        analytic_full = backend.to_device(x.grad, "cpu") if x.grad is not None else np.zeros(x.shape)
        for _ in range(directions):
            v = rng.standard_normal(x.shape)
            plus = [Tensor(x.numpy() + eps * v, device=x.device) if a is x else a for a in inputs]
            minus = [Tensor(x.numpy() - eps * v, device=x.device) if a is x else a for a in inputs]
            numeric = (scalar(plus) - scalar(minus)) / (2 * eps)
            analytic = float((analytic_full * v).sum())
            if not np.isclose(analytic, numeric, atol=atol, rtol=rtol):
                raise AssertionError(f"gradcheck: input {k} of shape {x.shape}: analytic directional "
                                     f"derivative {analytic:.10g} != numeric {numeric:.10g}")
    return True
