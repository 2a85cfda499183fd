"""Layers: Module, Parameter and the building blocks of the IGC networks.

Parameter names. Every layer takes an optional ``name``; a named layer's parameters are called
``<name>_weight``, ``<name>_gamma``, ... and its BatchNorm statistics ``<name>_moving_mean`` /
``<name>_moving_var``, exactly as the reference MXNet code stores them, so
weights trained by the reference code map by name. Unnamed layers fall back to the attribute
path (``block.conv.weight``) as in PyTorch.

Conventions kept from the reference (MXNet) code, which differ from PyTorch's: ``Conv2d`` has no
bias by default (a BatchNorm follows every conv); ``BatchNorm2d(momentum=0.9)`` is the weight of
the *old* running value (PyTorch's 0.1 is the weight of the new batch); weights are initialised
from the default generator that ``ig.manual_seed`` seeds, unless a layer gets ``rng=``.
"""
import math
import os
import warnings
from collections import OrderedDict

import numpy as np

from . import backend
from . import functional as F
from .autograd import Tensor
from .ops.checks import divisors
from .random import default_generator


class Parameter(Tensor):
    """A Tensor that a Module learns (requires_grad=True)."""

    def __init__(self, data, name=None, device=None):
        super().__init__(data, requires_grad=True, device=device)
        self.name = name

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.shape}, dtype={self.dtype}, device='{self.device}')"


class Module:
    """Base class: holds Parameters, buffers (running statistics) and sub-Modules as attributes."""

    def __init__(self):
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())  # attribute -> (public name or None)
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "device", "cpu")

    def __setattr__(self, key, value):
        if "_modules" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        _refuse_plain_container(self, key, value)
        self._params.pop(key, None)  # a reassigned attribute (self.fc = None) stops being registered
        self._modules.pop(key, None)
        if isinstance(value, Parameter):
            self._params[key] = value
        elif isinstance(value, Module):
            self._modules[key] = value
        object.__setattr__(self, key, value)

    def __delattr__(self, key):
        self._params.pop(key, None)
        self._modules.pop(key, None)
        self._buffers.pop(key, None)
        object.__delattr__(self, key)

    def register_buffer(self, key, array, name=None):
        """A non-learned array saved in state_dict (BatchNorm running mean/var)."""
        self._buffers[key] = name
        object.__setattr__(self, key, array)

    def __call__(self, *args, **kwargs):
        try:
            return self.forward(*args, **kwargs)
        except (ValueError, TypeError) as e:
            # name the innermost layer whose forward failed: an op's error ("conv2d: weight shape
            # (16, 4, 3, 3) expects ...") alone does not say which of a network's 20 convs it was
            if getattr(e, "layer", None) is not None or type(e) not in (ValueError, TypeError):
                raise
            err = type(e)(f"in layer {self.layer_label()}: {e}")
            err.layer = self.layer_label()
            raise err.with_traceback(e.__traceback__) from None

    def layer_label(self):
        """How errors name this layer: its reference name (``Conv2d 'g1_b1_p2_two1_conv1'``) when
        it has one, else its repr (``Conv2d(16, 16, k=3, stride=1, groups=4)``)."""
        name = self.__dict__.get("name")
        if name is None:
            for p in self._params.values():  # a named layer's parameters are <name>_<suffix>
                if p.name:
                    name = p.name.rsplit("_", 1)[0]
                    if name.endswith("_moving"):
                        name = name[:-len("_moving")]
                    break
        if name:
            return f"{type(self).__name__} {name!r}"
        return repr(self).split("\n")[0].rstrip("(")

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} defines no forward(self, x)")

    # ---- traversal -------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """(path, module) for self and every sub-module, depth first, iteratively."""
        stack = [(prefix, self)]
        while stack:
            path, m = stack.pop()
            yield path, m
            children = [(f"{path}.{k}" if path else k, c) for k, c in m._modules.items()]
            stack.extend(reversed(children))

    def modules(self):
        """self and every sub-module, depth first (as named_modules, without the paths)."""
        return (m for _, m in self.named_modules())

    def named_children(self):
        """(attribute, module) for the direct sub-modules only, in assignment order."""
        return iter(list(self._modules.items()))

    def children(self):
        return (m for _, m in self.named_children())

    def apply(self, fn):
        """fn(m) for every sub-module, children before parents (as PyTorch); returns self.
        E.g. ``net.apply(my_init)`` to re-initialise every layer that my_init recognises."""
        for m in reversed(list(self.modules())):
            fn(m)
        return self

    def named_parameters(self):
        """(name, Parameter) pairs; the reference name where the layer has one."""
        seen = set()
        for path, m in self.named_modules():
            for key, p in m._params.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (p.name or (f"{path}.{key}" if path else key)), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for path, m in self.named_modules():
            for key, name in m._buffers.items():
                yield (name or (f"{path}.{key}" if path else key)), m, key

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self):
        """OrderedDict name -> NumPy array of every parameter and buffer (copies, on the CPU)."""
        state = OrderedDict((n, p.numpy().copy()) for n, p in self.named_parameters())
        for n, m, key in self.named_buffers():
            state[n] = backend.to_device(getattr(m, key), "cpu").copy()
        return state

    def load_state_dict(self, state, strict=True):
        """Copy arrays into parameters and buffers by name; shapes must match exactly.

        state: a dict name -> array (``model.state_dict()``, ``ig.load(path)``); each value is cast
        to the dtype of the parameter it replaces. strict: every name on both sides must match.
        """
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            hint = (f"; load the file first: model.load_state_dict(ig.load({state!r}))"
                    if isinstance(state, (str, os.PathLike)) else "")
            raise TypeError(f"load_state_dict: expected a dict name -> array (model.state_dict(), "
                            f"ig.load(path)), got {type(state).__name__}{hint}")
        targets = {n: ("param", p) for n, p in self.named_parameters()}
        targets.update({n: ("buffer", (m, key)) for n, m, key in self.named_buffers()})
        missing = [n for n in targets if n not in state]
        unexpected = [n for n in state if n not in targets]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        for n, (kind, target) in targets.items():
            if n not in state:
                continue
            value = state[n]
            if not hasattr(value, "shape") or getattr(value, "dtype", np.dtype("O")).kind not in "biuf":
                raise TypeError(f"load_state_dict: {n}: expected a numeric array, got "
                                f"{type(value).__name__}{' of dtype ' + str(value.dtype) if hasattr(value, 'dtype') else ''}")
            value = backend.to_device(value, "cpu")  # numpy, or a device array
            current = target.data if kind == "param" else getattr(*target)
            if value.shape != current.shape:
                raise ValueError(f"load_state_dict: {n}: shape {value.shape} in the state != "
                                 f"{current.shape} in the model")
            value = backend.to_device(value.astype(current.dtype, copy=False), self.device)
            if kind == "param":
                target.data = value.copy()
            else:
                m, key = target
                object.__setattr__(m, key, value.copy())

    # ---- modes and devices -----------------------------------------------------------------
    def train(self, mode=True):
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Move every parameter and buffer to `device` and/or cast to `dtype`, in place.

        device: 'cpu', 'cuda' or 'emu'; dtype: a floating point dtype (np.float32, 'float64').
        Returns the module, so ``model = Net().to("emu")`` works as in PyTorch.
        """
        if isinstance(device, (str, type, np.dtype)) and dtype is None and _is_dtype_name(device):
            raise ValueError(f"{type(self).__name__}.to({device!r}): that is a dtype, not a device; "
                             f"write .to(dtype={device!r}) (devices: {', '.join(backend.DEVICES)})")
        if dtype is not None:
            try:
                dtype = np.dtype(dtype)
            except TypeError:
                raise TypeError(f"{type(self).__name__}.to(dtype={dtype!r}): not a NumPy dtype") from None
            if dtype.kind != "f":  # an integer weight cannot take a gradient step
                raise ValueError(f"{type(self).__name__}.to(dtype={dtype}): parameters must be floating "
                                 "point (float32 or float64)")
        device = backend.check_device(device) if device else self.device
        for _, m in self.named_modules():
            object.__setattr__(m, "device", device)
            for key, p in m._params.items():
                data = p.data.astype(dtype) if dtype is not None else p.data
                p.data = backend.to_device(data, device)
                p.device, p.grad = device, None
            for key in m._buffers:
                data = getattr(m, key)
                data = data.astype(dtype) if dtype is not None else data
                object.__setattr__(m, key, backend.to_device(data, device))
        return self

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    def __repr__(self):
        lines = [type(self).__name__ + "("]
        for k, m in self._modules.items():
            lines.append("  (" + k + "): " + repr(m).replace("\n", "\n  "))
        return "\n".join(lines) + ")" if len(lines) > 1 else type(self).__name__ + "()"


def _is_dtype_name(value):
    try:
        np.dtype(value)
    except TypeError:
        return False
    return value not in backend.DEVICES


def _pname(name, suffix):
    return f"{name}_{suffix}" if name else None


def _refuse_plain_container(module, key, value):
    """A list, tuple or dict holding Modules or Parameters is not seen by parameters(): training
    would silently skip them (a test network once registered 306 of its 658 parameters)."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, dict):
        items = list(value.values())
    else:
        return
    kinds = {type(v).__name__ for v in items if isinstance(v, (Module, Parameter))}
    if not kinds:
        return
    hint = {"list": "nn.ModuleList([...])", "tuple": "nn.ModuleList([...])",
            "dict": "nn.ModuleDict({...})"}.get(type(value).__name__, "nn.ModuleList([...])")
    if any(isinstance(v, Parameter) for v in items):
        hint += " of modules, or nn.ParameterList([...]) for Parameters"
    raise TypeError(f"{type(module).__name__}.{key}: a plain {type(value).__name__} of "
                    f"{', '.join(sorted(kinds))} is not registered, so parameters(), state_dict(), "
                    f".to() and the optimizer would not see them; wrap it: self.{key} = {hint}")


def check_layer_args(layer, name=None, pairs=("kernel_size", "stride", "padding"), nonnegative=("padding",),
                     **args):
    """Validate a layer's size arguments: each an int > 0 (>= 0 for `nonnegative`; an int or a
    pair of ints for `pairs`). The error names the layer (its reference name when it has one),
    the argument and every size given, e.g. ``Conv2d 'g0_conv'(in_channels=3, ..., groups=0)``."""
    where = f"{layer} {name!r}" if name else layer
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    for k, v in args.items():
        pair = k in pairs and isinstance(v, (tuple, list))
        values = tuple(v) if pair else (v,)
        if (pair and len(values) != 2) or any(isinstance(u, bool) or not isinstance(u, (int, np.integer))
                                              for u in values):
            kind = "an int or a pair of ints" if k in pairs else "an int"
            raise TypeError(f"{where}({shown}): {k} must be {kind}, got {v!r}")
        low = 0 if k in nonnegative else 1
        if any(u < low for u in values):
            raise ValueError(f"{where}({shown}): {k} must be {'>= 0' if low == 0 else '>= 1'}, got {v!r}")


def he_normal(rng, shape, fan_in, dtype=np.float32):
    """Normal with std sqrt(2 / fan_in): the reference code's conv initialisation."""
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(dtype)


_default_rng = default_generator()  # the very object ig.manual_seed reseeds in place


class Conv2d(Module):
    """Grouped k x k convolution, NCHW: x (N, C_in, H, W) -> (N, C_out, H', W');
    weight (C_out, C_in/groups, k, k), He-normal.

    No bias by default (bias=False), unlike PyTorch: the reference code follows every conv with a
    BatchNorm, whose beta makes a bias redundant; pass bias=True for one.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=False, name=None, rng=None):
        super().__init__()
        check_layer_args("Conv2d", name, in_channels=in_channels, out_channels=out_channels,
                         kernel_size=kernel_size, stride=stride, padding=padding, groups=groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d{' ' + repr(name) if name else ''}: in_channels={in_channels} and out_channels="
                             f"{out_channels} must both be divisible by groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = kernel_size, stride, padding, groups
        rng = rng or _default_rng
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        fan_in = in_channels // groups * kh * kw
        self.weight = Parameter(he_normal(rng, (out_channels, in_channels // groups, kh, kw), fan_in),
                                name=_pname(name, "weight"))
        self.bias = Parameter(np.zeros(out_channels, np.float32), name=_pname(name, "bias")) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, k={self.kernel_size}, "
                f"stride={self.stride}, groups={self.groups})")


class BatchNorm2d(Module):
    """BatchNorm over (N, H, W) of x (N, C, H, W); eps 2e-5 and momentum 0.9 as the reference
    (0.99 in its plain nets).

    momentum is MXNet's: the weight of the OLD running value,
        running = momentum * running + (1 - momentum) * batch statistic,
    the opposite of PyTorch's (where 0.1 is the weight of the new batch: PyTorch's 0.1 is 0.9
    here). A momentum below 0.5 is almost always a PyTorch habit, so it gets a warning.
    """

    def __init__(self, num_features, momentum=0.9, eps=2e-5, name=None):
        super().__init__()
        _check_batch_norm(type(self).__name__, name, num_features, momentum, eps)
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.gamma = Parameter(np.ones(num_features, np.float32), name=_pname(name, "gamma"))
        self.beta = Parameter(np.zeros(num_features, np.float32), name=_pname(name, "beta"))
        self.register_buffer("running_mean", np.zeros(num_features, np.float32), _pname(name, "moving_mean"))
        self.register_buffer("running_var", np.ones(num_features, np.float32), _pname(name, "moving_var"))

    def forward(self, x):
        return F.batch_norm(x, self.gamma, self.beta, self.running_mean, self.running_var,
                            self.training, self.momentum, self.eps)

    def __repr__(self):
        return f"{type(self).__name__}({self.num_features}, momentum={self.momentum})"


def _check_batch_norm(layer, name, num_features, momentum, eps):
    check_layer_args(layer, name, num_features=num_features)
    where = f"{layer} {name!r}" if name else layer
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{where}({num_features}): momentum must lie in [0, 1], got {momentum}")
    if not eps > 0:
        raise ValueError(f"{where}({num_features}): eps must be > 0, got {eps}")
    if momentum < 0.5:
        warnings.warn(f"{where}(momentum={momentum}): momentum here is MXNet's, the weight of the OLD "
                      f"running value (running = {momentum} * running + {1 - momentum:g} * batch); "
                      f"PyTorch's momentum={momentum} is momentum={1 - momentum:g} here",
                      UserWarning, stacklevel=3)


class BatchNorm1d(BatchNorm2d):
    """BatchNorm over N of x (N, C) (PyTorch's BatchNorm1d on 2-D input), same conventions as
    BatchNorm2d; runs as BatchNorm2d on (N, C, 1, 1)."""

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm1d({self.num_features}): expected input (N, {self.num_features}), "
                             f"got shape {x.shape}")
        return super().forward(x.reshape(x.shape + (1, 1))).reshape(x.shape)


class Linear(Module):
    """y = x W^T + b; W uniform in +-sqrt(1 / fan_in), b = 0 (the reference FC initialisation)."""

    def __init__(self, in_features, out_features, bias=True, name=None, rng=None):
        check_layer_args("Linear", name, in_features=in_features, out_features=out_features)
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        rng = rng or _default_rng
        # MXNet's Xavier(rnd_type='uniform', factor_type='in', magnitude=1), as the reference code
        # uses: bound sqrt(magnitude / fan_in) (not sqrt(3 / fan_in): that would be magnitude 3)
        bound = math.sqrt(1.0 / in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32),
                                name=_pname(name, "weight"))
        self.bias = Parameter(np.zeros(out_features, np.float32), name=_pname(name, "bias")) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features})"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Identity(Module):
    """y = x (a placeholder, e.g. to replace a layer)."""

    def forward(self, x):
        return x


class Dropout(Module):
    """Inverted dropout (F.dropout): drops with probability p in training, identity in eval().
    rng: a numpy Generator; None uses the default one (ig.manual_seed)."""

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p is the probability of dropping an element, in [0, 1], got {p}")
        self.p, self.rng = p, rng

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.rng)

    def __repr__(self):
        return f"Dropout(p={self.p})"


class CrossEntropyLoss(Module):
    """F.cross_entropy as a module: logits (N, K), integer labels (N,) -> the mean loss."""

    def forward(self, logits, labels):
        return F.cross_entropy(logits, labels)


class MSELoss(Module):
    """F.mse_loss as a module; reduction 'mean' (default), 'sum' or 'none'."""

    def __init__(self, reduction="mean"):
        super().__init__()
        from .ops.mse import REDUCTIONS
        if reduction not in REDUCTIONS:  # said now, not at the first forward pass
            raise ValueError(f"MSELoss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)


class MaxPool2d(Module):
    """k x k max pooling, x (N, C, H, W) -> (N, C, H', W'); stride defaults to kernel_size."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        sizes = dict(kernel_size=kernel_size, padding=padding)
        if stride is not None:
            sizes["stride"] = stride
        check_layer_args(type(self).__name__, **sizes)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(MaxPool2d):
    """k x k average pooling (zero padding counted, as MXNet); stride defaults to kernel_size."""

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class GlobalAvgPool2d(Module):
    def forward(self, x):
        return F.global_avg_pool2d(x)


class Flatten(Module):
    def forward(self, x):
        return x.flatten(1)


class Sequential(Module):
    """Modules applied in order; sub-modules are named '0', '1', ..."""

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            raise TypeError("Sequential: give the layers as arguments, Sequential(*layers), not one "
                            f"{type(layers[0]).__name__} of {len(layers[0])} layers")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):  # a plain attribute would be skipped by forward
                raise TypeError(f"Sequential: layer {i} must be a Module, got {type(layer).__name__} "
                                f"{layer!r:.60}")
            setattr(self, str(i), layer)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        layers = list(self._modules.values())
        return Sequential(*layers[i]) if isinstance(i, slice) else _pick(self, layers, i)

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x


def _pick(container, items, i):
    """items[i] with an IndexError that names the container and its length."""
    try:
        return items[i]
    except IndexError:
        raise IndexError(f"{type(container).__name__}[{i}]: index out of range for {len(items)} "
                         f"items (valid: {-len(items)} .. {len(items) - 1})") from None
    except TypeError:
        raise TypeError(f"{type(container).__name__}[{i!r}]: an index must be an int or a slice") from None


class ModuleList(Module):
    """A list of Modules that registers them (sub-modules '0', '1', ...). Unlike Sequential it has
    no forward: the owner decides how to call them."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.append: expected a Module, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        layers = list(self._modules.values())
        return ModuleList(layers[i]) if isinstance(i, slice) else _pick(self, layers, i)


class ModuleDict(Module):
    """A dict of Modules that registers them under their keys (strings)."""

    def __init__(self, modules=None):
        super().__init__()
        for key, m in dict(modules or {}).items():
            self[key] = m

    def __setitem__(self, key, module):
        if not isinstance(key, str) or not isinstance(module, Module):
            raise TypeError(f"ModuleDict[{key!r}]: expected a str key and a Module, got {type(module).__name__}")
        if hasattr(ModuleDict, key) or key.startswith("_") or key in ("training", "device"):
            raise KeyError(f"ModuleDict[{key!r}]: the key would hide the attribute {key!r} of every "
                           "Module; choose another name")
        setattr(self, key, module)

    def __getitem__(self, key):
        if key not in self._modules:
            raise KeyError(f"ModuleDict[{key!r}]: no such key; keys: {list(self._modules)}")
        return self._modules[key]

    def __contains__(self, key):
        return key in self._modules

    def __iter__(self):
        return iter(self._modules)

    def __len__(self):
        return len(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()


class ParameterList(Module):
    """A list of Parameters that registers them (named '0', '1', ... or their reference names)."""

    def __init__(self, params=()):
        super().__init__()
        for p in params:
            self.append(p)

    def append(self, p):
        if not isinstance(p, Parameter):
            raise TypeError(f"ParameterList.append: expected a Parameter, got {type(p).__name__}")
        setattr(self, str(len(self._params)), p)
        return self

    def __iter__(self):
        return iter(self._params.values())

    def __len__(self):
        return len(self._params)

    def __getitem__(self, i):
        return _pick(self, list(self._params.values()), i)


class PermuteChannels(Module):
    """IGC's permutation (Reorder) as a layer: see F.permute_channels."""

    def __init__(self, branch_factor):
        super().__init__()
        check_layer_args("PermuteChannels", branch_factor=branch_factor)
        self.branch_factor = branch_factor

    def forward(self, x):
        return F.permute_channels(x, self.branch_factor)


class IGCConv(Module):
    """An interleaved group convolution (paper section 3), BN and ReLU not included:

        y = P_S W_d P W_p x        (P_S = P^T when S = C_out/L, every network of the paper)

    primary    W_p: k x k group conv, L groups, C_in -> C_out, stride s, pad k//2
    permute    P:   permute_channels(., L): secondary partition m gets member m of every primary one
    secondary  W_d: 1 x 1 group conv, S groups, C_out -> C_out
    unpermute  P_S: permute_channels(., S), back to primary order

    With S = C_out / L the last three steps run as ONE op, F.interleaved_secondary (P, W_d, P^T
    without a permuted copy); the result is the same. Parameter names follow the reference:
    ``<name>_conv1_weight`` (W_p), ``<name>_conv2_weight`` (W_d).
    """

    def __init__(self, in_channels, out_channels, L, S, kernel_size=3, stride=1, name=None, rng=None):
        check_layer_args("IGCConv", name, in_channels=in_channels, out_channels=out_channels, L=L, S=S, kernel_size=kernel_size, stride=stride)
        super().__init__()
        if in_channels % L or out_channels % L:
            raise ValueError(f"IGCConv{' ' + repr(name) if name else ''}: in_channels={in_channels} and out_channels="
                             f"{out_channels} must be divisible by L={L} primary partitions; L could be "
                             f"one of {[d for d in divisors(in_channels) if out_channels % d == 0]}")
        if out_channels % S:
            raise ValueError(f"IGCConv{' ' + repr(name) if name else ''}: out_channels={out_channels} must be divisible by "
                             f"S={S} secondary partitions; S could be one of {divisors(out_channels)}")
        self.L, self.S, self.name = L, S, name
        self.in_channels, self.out_channels = in_channels, out_channels
        self.primary = Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=L,
                              name=_pname(name, "conv1"), rng=rng)
        self.permute = PermuteChannels(L)
        self.secondary = Conv2d(out_channels, out_channels, 1, groups=S, name=_pname(name, "conv2"), rng=rng)
        self.unpermute = PermuteChannels(S)
        self.fused = S * L == out_channels  # P_S is P^T: the interleaved secondary of the paper

    def forward(self, x):
        y = self.primary(x)                                                   # W_p
        if self.fused:                                                        # P, W_d, P^T in one op
            return F.interleaved_secondary(y, self.secondary.weight, self.L)
        return self.unpermute(self.secondary(self.permute(y)))               # P_S W_d P

    def __repr__(self):
        return f"IGCConv({self.in_channels}, {self.out_channels}, L={self.L}, S={self.S})"

