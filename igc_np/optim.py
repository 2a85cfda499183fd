"""Optimizers (SGD, Adam, AdamW) and a multi-step learning-rate schedule.

SGD is the authors' trainer (MXNet's NAG optimizer): with g = grad + wd * w,
    v <- momentum * v + g;    w <- w - lr * (g + momentum * v)    (Nesterov)
    v <- momentum * v + g;    w <- w - lr * v                      (classic momentum)

Adam and AdamW are PyTorch's (AMSGrad included), adam_reference below.

Tiers, as the ops': on "cpu" each step is the NumPy code of this file (the reference, the
specification). On "cuda" and "emu" it is a fused kernel, the same maths in the same order:
igc_np/kernels/sgd.cu (launcher kernels/sgd.py) and igc_np/kernels/adam.cu (launcher
kernels/adam.py), one launch per dtype for all the parameters (version 2 of ops "sgd" and "adam"
in kernels/versions.py; version 1 is one launch per parameter) instead of about six array
operations per parameter. Their state (velocities; Adam's m and v) then starts as zeros (one
buffer, one launch), so that the first step v = momentum * 0 + g = g is the CPU's v = g.

As PyTorch: ``optimizer.param_groups[0]["lr"]`` reads and sets the rate (``optimizer.lr`` too);
parameters with ``requires_grad=False`` (frozen) stay in the group and are skipped at each step
while frozen (one unfrozen later trains); parameters without a gradient at a step are left alone;
``step(closure)`` and ``zero_grad(set_to_none=...)`` as PyTorch's. One parameter group: per-parameter options are refused with an error.
"""
import math

import numpy as np

from . import backend
from .autograd import Tensor, no_grad
from .kernels import adam as adam_kernels
from .kernels import sgd as sgd_kernels


class Optimizer:
    """What SGD and Adam share: the parameters (those that require a gradient), ``param_groups``
    (one group: ``{"params": [...], "lr": ..., <hyper-parameters>}``) and zero_grad."""

    def __init__(self, params, defaults):
        name = type(self).__name__
        if hasattr(params, "parameters") and callable(params.parameters):
            raise TypeError(f"{name}: got the module {type(params).__name__}; pass model.parameters()")
        if isinstance(params, Tensor):
            raise TypeError(f"{name}: params must be an iterable of Tensors, e.g. model.parameters() or [w], "
                            "got one Tensor")
        params = list(params)
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        for i, p in enumerate(params):
            if isinstance(p, dict):
                raise TypeError(f"{name}: parameter groups (dicts with their own options) are not supported; "
                                f"make one {name} per group of options, or pass model.parameters()")
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: parameter {i} is a {type(p).__name__}; pass Tensors that require "
                                "a gradient, e.g. model.parameters()")
        if not any(p.requires_grad for p in params):
            raise TypeError(f"{name}: all {len(params)} parameters are frozen (Tensors without requires_grad): "
                            "nothing to optimize; pass Tensors that require a gradient, e.g. model.parameters()")
        # frozen ones stay (as in PyTorch) so that one unfrozen later (fine-tuning) trains; _active skips them
        self.params = params
        self.param_groups = [dict(params=self.params, **defaults)]

    @property
    def lr(self):
        """The learning rate, i.e. ``param_groups[0]["lr"]`` (what the schedule sets)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        self.param_groups[0]["lr"] = value

    def zero_grad(self, set_to_none=True):
        """Drop the gradients (PyTorch's default); set_to_none=False zeroes them in place instead."""
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    def _active(self, i):
        """Whether parameter i takes this step: it has a gradient and is not frozen."""
        p = self.params[i]
        return p.grad is not None and p.requires_grad

    def _mark_stepped(self):
        """The parameters just updated in place (by adam_reference or a kernel) count as changed, as
        PyTorch's in-place step: a graph built before the step is refused at backward (on every device)."""
        for i, p in enumerate(self.params):
            if self._active(i):
                p._mark_changed()

    @staticmethod
    def _closure_loss(closure):
        """PyTorch's step(closure): re-evaluate the model (forward, backward) before the update."""
        if closure is None:
            return None
        if not callable(closure):
            raise TypeError(f"step(closure): closure must be a function that returns the loss, got "
                            f"{type(closure).__name__}")
        return closure()

    def _device_groups(self, state_ok):
        """Indices of the parameters on "cuda"/"emu" whose weight and grad share a dtype and are
        C-contiguous (and whose state passes state_ok(i, dtype)), grouped by (device, dtype)."""
        groups = {}
        for i, p in enumerate(self.params):
            g = p.grad
            if p.device == "cpu" or not self._active(i) or g.dtype != p.data.dtype or g.shape != p.data.shape \
                    or not (p.data.flags.c_contiguous and g.flags.c_contiguous) or not state_ok(i, p.data.dtype):
                continue
            groups.setdefault((p.device, p.data.dtype), []).append(i)
        return groups

    def _zeros_like_params(self, device, dtype, idx):
        """Zero arrays shaped as the parameters `idx`: views of one zero buffer (a single launch)."""
        xp = backend.get_array_module(device)
        sizes = [self.params[i].size for i in idx]
        flat = xp.zeros(sum(sizes), dtype)
        out, offset = [], 0
        for i, n in zip(idx, sizes):
            out.append(flat[offset:offset + n].reshape(self.params[i].shape))
            offset += n
        return out

    def _load_array(self, state, key, i):
        """state[key] as the i-th parameter's array on its device (None for an empty entry)."""
        name = type(self).__name__
        if key not in state:
            raise KeyError(f"{name}.load_state_dict: no {key}: the state does not belong to this optimizer's "
                           f"{len(self.params)} parameters (entries: {sorted(state)[:6]}...)")
        p = self.params[i]
        v = backend.to_device(state[key], "cpu")
        if v.size == 0:
            return None
        if v.shape != p.shape:
            raise ValueError(f"{name}.load_state_dict: {key} shape {v.shape} != parameter shape {p.shape}")
        return backend.to_device(v.astype(p.dtype), p.device)


class SGD(Optimizer):
    """SGD with the authors' trainer's defaults, which differ from ``torch.optim.SGD``'s: Nesterov
    momentum (``nesterov=True``), ``momentum=0.9``, ``weight_decay=1e-4`` on every parameter (BN and
    biases included) and ``lr=0.1``. PyTorch's defaults are plain SGD without momentum or decay; pass
    ``nesterov=False, momentum=0, weight_decay=0`` for them. The Nesterov update is the formula above,
    the same as PyTorch's ``nesterov=True``.

    params: an iterable of Tensors, e.g. ``model.parameters()``; frozen ones (requires_grad=False)
    are skipped.
    """

    def __init__(self, params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))
        self.velocity = [None] * len(self.params)

    def step(self, closure=None):
        """One update of every parameter with a gradient; returns closure()'s loss (None without one)."""
        loss = self._closure_loss(closure)
        group = self.param_groups[0]
        lr, momentum, nesterov, weight_decay = group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]
        with no_grad():
            fused = self._fused_step(lr, momentum, nesterov, weight_decay)
            for i, p in enumerate(self.params):
                if not self._active(i) or i in fused:
                    continue
                g = p.grad + weight_decay * p.data if weight_decay else p.grad
                if momentum:
                    v = self.velocity[i]
                    v = g.copy() if v is None else momentum * v + g
                    self.velocity[i] = v
                    g = g + momentum * v if nesterov else v
                p._data -= (lr * g).astype(p.data.dtype, copy=False)
            self._mark_stepped()
        return loss

    def _fused_step(self, lr, momentum, nesterov, weight_decay):
        """Step the parameters on "cuda"/"emu" with the fused kernel, one launch per (device, dtype);
        return their indices (the others take the array-op path of step())."""
        def velocity_ok(i, dtype):
            v = self.velocity[i]
            return not momentum or v is None or (v.dtype == dtype and v.flags.c_contiguous)
        groups = self._device_groups(velocity_ok)
        for (device, dtype), idx in groups.items():
            if momentum:
                fresh = [i for i in idx if self.velocity[i] is None]
                for i, v in zip(fresh, self._zeros_like_params(device, dtype, fresh) if fresh else []):
                    self.velocity[i] = v
            sgd_kernels.sgd_step([self.params[i].data for i in idx], [self.params[i].grad for i in idx],
                               [self.velocity[i] for i in idx], lr, momentum, nesterov, weight_decay, device)
        return {i for idx in groups.values() for i in idx}

    def state_dict(self):
        """Velocities as CPU arrays (absent entries stored as empty arrays), plus the learning rate."""
        state = {"lr": np.float64(self.lr)}
        for i, v in enumerate(self.velocity):
            state[f"velocity_{i}"] = (np.zeros(0, np.float32) if v is None
                                      else backend.to_device(v, "cpu").copy())
        return state

    def load_state_dict(self, state):
        self.lr = float(state["lr"])
        self.velocity = [self._load_array(state, f"velocity_{i}", i) for i in range(len(self.params))]


# ---- Adam / AdamW ------------------------------------------------------------------------------
def adam_reference(w, g, m, v, step, lr, betas, eps, weight_decay, decoupled, v_max=None):
    """One Adam (decoupled: AdamW) step t = `step` on arrays w, m, v (and v_max) in place, g the
    gradient: PyTorch's algorithm (torch.optim.Adam / AdamW docs) in its own operation order.

        AdamW: w = w * (1 - lr * weight_decay)       Adam: g = g + weight_decay * w
        m = m + (1 - beta1) * (g - m)                 v = v * beta2 + (1 - beta2) * g * g
        AMSGrad (v_max given): v_max = max(v_max, v), used instead of v below
        w = w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    i.e. w -= lr * m_hat / (sqrt(v_hat) + eps) with m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t).
    Scalars are computed in double and used in the arrays' dtype (as adam.cu)."""
    T = w.dtype.type
    beta1, beta2 = betas
    if weight_decay:
        if decoupled:
            w *= T(1 - lr * weight_decay)
        else:
            g = g + T(weight_decay) * w
    m += T(1 - beta1) * (g - m)
    v *= T(beta2)
    v += T(1 - beta2) * (g * g)
    if v_max is not None:
        np.maximum(v_max, v, out=v_max)
    denom = np.sqrt(v if v_max is None else v_max) / T(math.sqrt(1 - beta2 ** step)) + T(eps)
    w -= T(lr / (1 - beta1 ** step)) * (m / denom)


class Adam(Optimizer):
    """Adam (Kingma and Ba) with PyTorch's defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0 (added to the gradient, L2), amsgrad=False. See adam_reference for the step.

    State per parameter (created at its first step with a gradient, as PyTorch): m (exp_avg),
    v (exp_avg_sq), with amsgrad the maximum of v so far (max_exp_avg_sq), and its own step count t.
    """

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False):
        name = type(self).__name__
        betas = tuple(betas)
        if not 0.0 <= lr:
            raise ValueError(f"{name}: lr must be >= 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{name}: betas must be two numbers in [0, 1), got {betas}")
        if not 0.0 <= eps or not 0.0 <= weight_decay:
            raise ValueError(f"{name}: eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=bool(amsgrad)))
        n = len(self.params)
        self.exp_avg, self.exp_avg_sq, self.max_exp_avg_sq, self.steps = [None] * n, [None] * n, [None] * n, [0] * n

    def step(self, closure=None):
        """One update of every parameter with a gradient; returns closure()'s loss (None without one)."""
        loss = self._closure_loss(closure)
        group = self.param_groups[0]
        hyper = (group["lr"], tuple(group["betas"]), group["eps"], group["weight_decay"], self.decoupled)
        amsgrad = group["amsgrad"]
        with no_grad():
            fused = self._fused_step(hyper, amsgrad)
            for i, p in enumerate(self.params):
                if not self._active(i) or i in fused:
                    continue
                if self.exp_avg[i] is None:
                    xp = backend.get_array_module(p.device)
                    self.exp_avg[i], self.exp_avg_sq[i] = xp.zeros_like(p.data), xp.zeros_like(p.data)
                if amsgrad and self.max_exp_avg_sq[i] is None:
                    self.max_exp_avg_sq[i] = backend.get_array_module(p.device).zeros_like(p.data)
                self.steps[i] += 1
                adam_reference(p.data, p.grad.astype(p.data.dtype, copy=False), self.exp_avg[i],
                               self.exp_avg_sq[i], self.steps[i], *hyper,
                               v_max=self.max_exp_avg_sq[i] if amsgrad else None)
            self._mark_stepped()
        return loss

    def _fused_step(self, hyper, amsgrad):
        """Step the parameters on "cuda"/"emu" with adam.cu, one launch per (device, dtype, step
        count) (all parameters share one step count unless some missed a gradient); return their
        indices (the others take the array-op path of step())."""
        def state_ok(i, dtype):
            arrays = (self.exp_avg[i], self.exp_avg_sq[i]) + ((self.max_exp_avg_sq[i],) if amsgrad else ())
            return all(a is None or (a.dtype == dtype and a.flags.c_contiguous) for a in arrays)
        done = set()
        for (device, dtype), idx in self._device_groups(state_ok).items():
            lists = (self.exp_avg, self.exp_avg_sq) + ((self.max_exp_avg_sq,) if amsgrad else ())
            fresh = [(arrays, i) for arrays in lists for i in idx if arrays[i] is None]
            if fresh:  # every new state array: views of one zero buffer
                zeros = self._zeros_like_params(device, dtype, [i for _, i in fresh])
                for (arrays, i), z in zip(fresh, zeros):
                    arrays[i] = z
            by_step = {}
            for i in idx:
                self.steps[i] += 1
                by_step.setdefault(self.steps[i], []).append(i)
            for t, ids in by_step.items():
                adam_kernels.adam_step([self.params[i].data for i in ids], [self.params[i].grad for i in ids],
                                       [self.exp_avg[i] for i in ids], [self.exp_avg_sq[i] for i in ids],
                                       t, *hyper, device,
                                       max_exp_avg_sqs=[self.max_exp_avg_sq[i] for i in ids] if amsgrad else None)
            done.update(idx)
        return done

    def state_dict(self):
        """CPU arrays: lr, betas, eps, weight_decay, amsgrad, and per parameter i step_i, exp_avg_i,
        exp_avg_sq_i (and max_exp_avg_sq_i with amsgrad) (empty arrays before its first step)."""
        group = self.param_groups[0]
        state = {"lr": np.float64(group["lr"]), "betas": np.asarray(group["betas"], np.float64),
                 "eps": np.float64(group["eps"]), "weight_decay": np.float64(group["weight_decay"]),
                 "amsgrad": np.bool_(group["amsgrad"])}
        empty = np.zeros(0, np.float32)
        for i in range(len(self.params)):
            state[f"step_{i}"] = np.int64(self.steps[i])
            for key, arrays in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq),
                                ("max_exp_avg_sq", self.max_exp_avg_sq))[:3 if group["amsgrad"] else 2]:
                a = arrays[i]
                state[f"{key}_{i}"] = empty if a is None else backend.to_device(a, "cpu").copy()
        return state

    def load_state_dict(self, state):
        group = self.param_groups[0]
        group["lr"], group["eps"], group["weight_decay"] = (float(state[k]) for k in ("lr", "eps", "weight_decay"))
        group["betas"] = tuple(float(b) for b in np.asarray(state["betas"]))
        group["amsgrad"] = bool(state["amsgrad"])
        n = len(self.params)
        self.exp_avg = [self._load_array(state, f"exp_avg_{i}", i) for i in range(n)]
        self.exp_avg_sq = [self._load_array(state, f"exp_avg_sq_{i}", i) for i in range(n)]
        self.max_exp_avg_sq = [self._load_array(state, f"max_exp_avg_sq_{i}", i) if group["amsgrad"] else None
                               for i in range(n)]
        self.steps = [int(state[f"step_{i}"]) for i in range(n)]


class AdamW(Adam):
    """AdamW (Loshchilov and Hutter): Adam with decoupled weight decay, w *= 1 - lr * weight_decay
    before the Adam step, instead of adding weight_decay * w to the gradient. PyTorch's defaults:
    lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


# ---- schedule ----------------------------------------------------------------------------------
class MultiStepLR:
    """lr = base_lr * factor ** (number of milestones <= epoch): the authors' 1/2, 3/4, 7/8 schedule.

    Two ways to drive it, as PyTorch allows: ``step()`` once per epoch (after the epoch's batches; the
    constructor has set the rate of epoch 0), or ``step(epoch)`` with the 0-based epoch about to run.
    Both return the rate set. factor is MXNet's name of PyTorch's gamma (either keyword works).
    The rate is recomputed from base_lr each time (not multiplied in place), so a rate set by hand
    is overwritten at the next step.
    """

    def __init__(self, optimizer, milestones, factor=None, gamma=None, last_epoch=-1):
        if factor is not None and gamma is not None:
            raise TypeError("MultiStepLR: give factor (MXNet's name) or gamma (PyTorch's), not both")
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"MultiStepLR: expected an optimizer (SGD, Adam, AdamW), got {type(optimizer).__name__}")
        self.optimizer, self.milestones = optimizer, sorted(milestones)
        self.factor = 0.1 if factor is None and gamma is None else (factor if gamma is None else gamma)
        self.base_lr = optimizer.param_groups[0]["lr"]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, epoch):
        return self.base_lr * self.factor ** sum(epoch >= m for m in self.milestones)

    def step(self, epoch=None):
        """Set the learning rate for `epoch` (0-based), or for the next epoch when None."""
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        self.optimizer.param_groups[0]["lr"] = self.lr_at(self.last_epoch)
        return self.optimizer.param_groups[0]["lr"]

    def get_last_lr(self):
        """[the rate last set], as PyTorch's (one entry per parameter group)."""
        return [self.optimizer.param_groups[0]["lr"]]

    def state_dict(self):
        return {"milestones": list(self.milestones), "factor": self.factor, "base_lr": self.base_lr,
                "last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        missing = {"milestones", "factor", "base_lr", "last_epoch"} - set(state)
        if missing:
            raise KeyError(f"MultiStepLR.load_state_dict: missing {sorted(missing)}; expected a "
                           "MultiStepLR.state_dict()")
        self.milestones, self.factor = sorted(int(m) for m in state["milestones"]), float(state["factor"])
        self.base_lr, self.last_epoch = float(state["base_lr"]), int(state["last_epoch"])
        # the rate of the restored epoch, so that a resume is right even without the optimizer's
        # state (the same value optimizer.load_state_dict restores; before, the rate of epoch 0 stayed)
        self.optimizer.param_groups[0]["lr"] = self.lr_at(self.last_epoch)
