"""SGD with (Nesterov) momentum and weight decay, and a multi-step learning-rate schedule.

The reference trainer (MXNet's NAG optimizer): with g = grad + wd * w,
    v <- momentum * v + g;    w <- w - lr * (g + momentum * v)    (Nesterov)
    v <- momentum * v + g;    w <- w - lr * v                      (classic momentum)

On "cpu" the step is the NumPy code below (the reference). On "cuda" and "emu" it is the fused
kernel of igc_np/kernels/sgd.cu: the same maths, in the same order, in one launch per dtype for
all the parameters (op "sgd" of kernels/versions.py: version 1 is one launch per parameter) instead of
about six array operations per parameter. The velocities then start as zeros (one buffer, one
launch), so that the first step v = momentum * 0 + g = g is the CPU's v = g.
"""
import numpy as np

from . import backend
from .autograd import Tensor, no_grad


class SGD:
    """SGD with the reference trainer's defaults, which differ from ``torch.optim.SGD``'s: Nesterov
    momentum (``nesterov=True``), ``momentum=0.9``, ``weight_decay=1e-4`` on every parameter (BN and
    biases included) and ``lr=0.1``. PyTorch's defaults are plain SGD without momentum or decay; pass
    ``nesterov=False, momentum=0, weight_decay=0`` for them. The Nesterov update is the formula above,
    the same as PyTorch's ``nesterov=True``.

    params: an iterable of Tensors that require a gradient, e.g. ``model.parameters()``.
    """

    def __init__(self, params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4):
        if hasattr(params, "parameters") and callable(params.parameters):
            raise TypeError(f"SGD: got the module {type(params).__name__}; pass model.parameters()")
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD: got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise TypeError(f"SGD: parameter {i} is a {type(p).__name__}"
                                f"{'' if not isinstance(p, Tensor) else ' without requires_grad'}; "
                                "pass Tensors that require a gradient, e.g. model.parameters()")
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self.velocity = [None] * len(self.params)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        with no_grad():
            fused = self._fused_step()
            for i, p in enumerate(self.params):
                if p.grad is None or i in fused:
                    continue
                g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
                if self.momentum:
                    v = self.velocity[i]
                    v = g.copy() if v is None else self.momentum * v + g
                    self.velocity[i] = v
                    g = g + self.momentum * v if self.nesterov else v
                p.data -= (self.lr * g).astype(p.data.dtype, copy=False)

    def _fused_step(self):
        """Step the parameters on "cuda"/"emu" whose weight, grad and velocity share a dtype and
        are C-contiguous with the fused kernel, one launch per (device, dtype); return their
        indices (the others take the array-op path of step())."""
        groups = {}
        for i, p in enumerate(self.params):
            g = p.grad
            if p.device == "cpu" or g is None or g.dtype != p.data.dtype or g.shape != p.data.shape \
                    or not (p.data.flags.c_contiguous and g.flags.c_contiguous):
                continue
            v = self.velocity[i]
            if self.momentum and v is not None and (v.dtype != p.data.dtype or not v.flags.c_contiguous):
                continue
            groups.setdefault((p.device, p.data.dtype), []).append(i)
        if not groups:
            return set()
        from .kernels import fused_ops
        for (device, dtype), idx in groups.items():
            if self.momentum:
                self._zero_velocities(device, dtype, [i for i in idx if self.velocity[i] is None])
            fused_ops.sgd_step([self.params[i].data for i in idx], [self.params[i].grad for i in idx],
                               [self.velocity[i] for i in idx], self.lr, self.momentum, self.nesterov,
                               self.weight_decay, device)
        return {i for idx in groups.values() for i in idx}

    def _zero_velocities(self, device, dtype, idx):
        """Velocities of the parameters `idx`: views of one zero buffer (a single launch)."""
        if not idx:
            return
        xp = backend.get_array_module(device)
        sizes = [self.params[i].size for i in idx]
        flat = xp.zeros(sum(sizes), dtype)
        offset = 0
        for i, n in zip(idx, sizes):
            self.velocity[i] = flat[offset:offset + n].reshape(self.params[i].shape)
            offset += n

    def state_dict(self):
        """Velocities as CPU arrays (absent entries stored as empty arrays), plus hyper-parameters."""
        state = {"lr": np.float64(self.lr)}
        for i, v in enumerate(self.velocity):
            state[f"velocity_{i}"] = (np.zeros(0, np.float32) if v is None
                                      else backend.to_device(v, "cpu"))
        return state

    def load_state_dict(self, state):
        self.lr = float(state["lr"])
        for i, p in enumerate(self.params):
            key = f"velocity_{i}"
            if key not in state:
                raise KeyError(f"SGD.load_state_dict: no {key}: the state has "
                               f"{sum(k.startswith('velocity_') for k in state)} velocities, the optimizer "
                               f"{len(self.params)} parameters")
            v = backend.to_device(state[key], "cpu")
            if v.size == 0:
                self.velocity[i] = None
            elif v.shape != p.shape:
                raise ValueError(f"SGD.load_state_dict: {key} shape {v.shape} != parameter shape {p.shape}")
            else:
                self.velocity[i] = backend.to_device(v.astype(p.dtype), p.device)


class MultiStepLR:
    """lr = base_lr * factor ** (number of milestones <= epoch): the reference's 1/2, 3/4, 7/8 schedule."""

    def __init__(self, optimizer, milestones, factor=0.1):
        self.optimizer, self.milestones, self.factor = optimizer, sorted(milestones), factor
        self.base_lr = optimizer.lr

    def lr_at(self, epoch):
        return self.base_lr * self.factor ** sum(epoch >= m for m in self.milestones)

    def step(self, epoch):
        """Set the learning rate for `epoch` (0-based)."""
        self.optimizer.lr = self.lr_at(epoch)
        return self.optimizer.lr
