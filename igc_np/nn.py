"""Layers: Module, Parameter and the building blocks of the IGC networks.

Parameter names. Every layer takes an optional ``name``; a named layer's parameters are called
``<name>_weight``, ``<name>_gamma``, ... and its BatchNorm statistics ``<name>_moving_mean`` /
``<name>_moving_var``, exactly as the authors' MXNet code stores them, so
weights trained by the authors' code map by name. Unnamed layers fall back to the attribute
path (``block.conv.weight``) as in PyTorch.

Conventions kept from the authors' (MXNet) code, which differ from PyTorch's: ``Conv2d`` has no
bias by default (a BatchNorm follows every conv); ``BatchNorm2d(momentum=0.9)`` is the weight of
the *old* running value (PyTorch's 0.1 is the weight of the new batch); weights are initialised
from the default generator that ``ig.manual_seed`` seeds, unless a layer gets ``rng=``.
"""
import math
import os
import types
import warnings
from collections import OrderedDict

import numpy as np

from . import backend
from . import functional as F
from .autograd import Tensor
from .ops.checks import conv_window, divisors, output_size, pair
from .ops.fused import batch_norm_relu
from .ops.mse import REDUCTIONS
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

    # Longer than the ~200-line guide: it is PyTorch's Module interface a user reaches for, in four
    # banner sections (traversal, state, modes and devices, description); splitting it into mixins
    # would make a reader open several classes to learn what one layer can do.

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
        """How errors name this layer: its MXNet name (``Conv2d 'g1_b1_p2_two1_conv1'``) when
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
        """(name, Parameter) pairs; the MXNet name where the layer has one."""
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

    def zero_grad(self, set_to_none=True):
        """Drop every parameter's gradient (PyTorch's default); set_to_none=False zeroes them in place."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self):
        """OrderedDict name -> NumPy array of every parameter and buffer (copies, on the CPU)."""
        state = OrderedDict((n, p.numpy().copy()) for n, p in self.named_parameters())
        for n, m, key in self.named_buffers():
            state[n] = backend.to_device(getattr(m, key), "cpu").copy()
        return state

    def load_state_dict(self, state, strict=True, prefix=""):
        """Copy arrays into parameters and buffers by name; shapes must match exactly.

        state: a dict name -> array (``model.state_dict()``, ``ig.load(path)``); each value is cast
        to the dtype of the parameter it replaces. strict: every name on both sides must match.
        prefix: read only the entries whose name starts with it, without it: ``prefix="model/"``
        takes the model out of a trainer checkpoint (whose other entries are the epoch, optimizer...).
        """
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            hint = (f"; load the file first: model.load_state_dict(ig.load({state!r}))"
                    if isinstance(state, (str, os.PathLike)) else "")
            raise TypeError(f"load_state_dict: expected a dict name -> array (model.state_dict(), "
                            f"ig.load(path)), got {type(state).__name__}{hint}")
        if prefix:
            if not any(k.startswith(prefix) for k in state.keys()):
                raise KeyError(f"load_state_dict: no entry starts with prefix {prefix!r}; the state's first "
                               f"entries are {list(state.keys())[:5]}")
            state = {k[len(prefix):]: state[k] for k in state.keys() if k.startswith(prefix)}
        elif is_trainer_checkpoint(state):
            raise ValueError(f"{type(self).__name__}.load_state_dict: this is a trainer checkpoint (entries "
                             "format, epoch, model/..., optimizer/...), not a model's state dict. Build the "
                             "model it trained with igc_np.app.predict.load_trained(path), or load its weights into "
                             "this model with model.load_state_dict(ckpt, prefix='model/')")
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
            if dtype == np.float16:  # refused here, before any parameter is cast (Tensor refuses it too)
                raise TypeError(f"{type(self).__name__}.to(dtype=float16): float16 is not supported: igc_np's "
                                "ops accumulate in the input's precision, so float16 gives wrong results "
                                "(BatchNorm of values ~300 returns zeros); use dtype=np.float32 (or float64). "
                                "The module is unchanged")
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

    # PyTorch's shorthands for .to(...); half() is refused there, naming float32
    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def half(self):
        return self.to(dtype=np.float16)

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze every parameter, PyTorch's fine-tuning habit; returns self.
        An optimizer skips frozen parameters while they are frozen."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # ---- description: repr, shapes and MACs -------------------------------------------------
    def extra_repr(self):
        """This layer's own settings, shown inside its repr (as PyTorch's ``extra_repr``); '' if none."""
        return ""

    def __repr__(self):
        """The layer tree as PyTorch prints it: ``Name(extra)`` for a leaf, else one ``(attribute): repr``
        line per sub-module, indented, after the extra_repr lines."""
        extra = self.extra_repr().split("\n") if self.extra_repr() else []
        children = [f"({k}): " + repr(m).replace("\n", "\n  ") for k, m in self._modules.items()]
        if len(extra) == 1 and not children:
            return f"{type(self).__name__}({extra[0]})"
        if not extra and not children:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(\n  " + "\n  ".join(extra + children) + "\n)"

    def walk(self, path, shape, visit):
        """Propagate one sample's shape, e.g. (C, H, W), through this layer without computing data:
        call ``visit(name, kind, out_shape, params, MACs)`` once per layer it holds and return the
        output shape. Each layer defines its own; ``nets.describe``/``count_macs`` are built on it.
        path: the attribute path that names the layer when it has no MXNet name."""
        raise TypeError(f"count/describe: cannot walk a {type(self).__name__} at {path or 'the top'!r}: its "
                        "forward is free Python; describe walks the library's layers, Sequential and the "
                        "networks of igc_np.nets (give the layer a walk(path, shape, visit) method)")

    def output_shape(self, input_shape):
        """The output shape for ONE sample of shape `input_shape` (no batch axis), e.g. (3, 32, 32)
        -> (10,) for a CIFAR network; only shapes are propagated."""
        return tuple(self.walk("", tuple(input_shape), lambda *row: None))

    def macs(self, input_shape):
        """Multiply-accumulates of one sample of shape `input_shape` (no batch axis) through this layer."""
        total = []
        self.walk("", tuple(input_shape), lambda name, kind, out, params, macs: total.append(macs))
        return sum(total)


def is_trainer_checkpoint(state):
    """Whether a dict of arrays is a trainer checkpoint (format, epoch, model/<name>, ...)."""
    keys = list(state.keys())
    return "format" in keys and "epoch" in keys and any(str(k).startswith("model/") for k in keys)


# ---- nn.utils ---------------------------------------------------------------------------------
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the gradients in place so that their total norm is at most max_norm; return the total
    norm before clipping (a 0-d Tensor), as PyTorch's ``torch.nn.utils.clip_grad_norm_``:

        total = || (||g_1||_p, ..., ||g_n||_p) ||_p        (p = norm_type; inf: the largest |g|)
        g_i  *= max_norm / (total + 1e-6)                  only where that factor is < 1

    parameters: a Tensor or an iterable of them; those without a gradient are skipped. The norms
    are summed in float64; the factor is applied in each gradient's dtype.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"clip_grad_norm_: parameter {i} is a {type(p).__name__}; pass model.parameters()")
    grads = [p for p in params if p.grad is not None]
    p_norm = float(norm_type)
    if not p_norm > 0:
        raise ValueError(f"clip_grad_norm_: norm_type must be > 0 (or inf), got {norm_type!r}")
    if not grads:
        return Tensor(np.zeros((), np.float32))
    dtype = grads[0].grad.dtype
    norms = []
    for p in grads:
        xp = backend.get_array_module(p.device)
        a = xp.abs(p.grad.astype(np.float64, copy=False))
        norms.append(float(a.max()) if p_norm == math.inf else float((a ** p_norm).sum()) ** (1 / p_norm))
    total = max(norms) if p_norm == math.inf else float(np.sum(np.asarray(norms) ** p_norm) ** (1 / p_norm))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
                           f"{total}, so it cannot be clipped; pass error_if_nonfinite=False to skip this check")
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1:
        with np.errstate(invalid="ignore"):  # an infinite total: coef 0, inf * 0 = nan, as PyTorch
            for p in grads:
                p.grad = p.grad * p.grad.dtype.type(coef)
    return Tensor(np.asarray(total, dtype))


utils = types.SimpleNamespace(clip_grad_norm_=clip_grad_norm_)  # nn.utils.clip_grad_norm_, as PyTorch


def _is_dtype_name(value):
    try:
        np.dtype(value)
    except TypeError:
        return False
    return value not in backend.DEVICES


def _pname(name, suffix):
    return f"{name}_{suffix}" if name else None


# ---- helpers of the layers' walk methods (describe, count_macs) -------------------------------
def layer_name(module, suffix, path):
    """The MXNet layer name (a parameter's name minus its suffix, e.g. ``g0_conv`` from
    ``g0_conv_weight``), else the attribute path."""
    name = getattr(module._params.get(suffix[1:]), "name", None)
    return name[: -len(suffix)] if name and name.endswith(suffix) else path


def own_params(module):
    """Learned values held by the module itself (not its sub-modules)."""
    return sum(int(p.size) for p in module._params.values() if p is not None)


def _where(module, path):
    return path or module.layer_label()


def _image_shape(module, path, shape):
    """(C, H, W) of one sample, or an error naming the layer when the shape has another rank."""
    if len(shape) != 3:
        raise ValueError(f"{_where(module, path)}: expects one image (C, H, W), got shape {tuple(shape)} "
                         "(a Flatten or Linear before it?)")
    return shape


def _check_fits(module, path, what, shape, out):
    if out[1] < 1 or out[2] < 1:
        raise ValueError(f"{_where(module, path)}: {what} does not fit input shape {tuple(shape)} "
                         f"(output {out[1]}x{out[2]}); the input is too small for this network")


def walk_in_order(module, path, shape, visit):
    """walk for a module whose forward applies its sub-modules one after the other (Sequential, nets.Network)."""
    for key, child in module._modules.items():
        shape = child.walk(f"{path}.{key}" if path else key, shape, visit)
    return shape


def _pair_repr(value):
    """kernel_size / stride / padding as PyTorch prints them: (3, 3); 'same' and 'valid' as given."""
    return repr(value) if isinstance(value, str) else str(pair(value, "", ""))


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
                     context=None, **args):
    """Validate a layer's size arguments: each an int > 0 (>= 0 for `nonnegative`; an int or a
    pair of ints for `pairs`). The error names the layer (its MXNet name when it has one),
    the argument and every size given, e.g. ``Conv2d 'g0_conv'(in_channels=3, ..., groups=0)``;
    context: the sizes to show when they are more than those checked (a dict)."""
    where = f"{layer} {name!r}" if name else layer
    shown = ", ".join(f"{k}={v!r}" for k, v in (context or args).items())
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
    """Normal with std sqrt(2 / fan_in): the authors' code's conv initialisation."""
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(dtype)


_default_rng = default_generator()  # the very object ig.manual_seed reseeds in place


class Conv2d(Module):
    """Grouped 2-D convolution, NCHW: x (N, C_in, H, W) -> (N, C_out, H', W');
    weight (C_out, C_in/groups, kh, kw), He-normal.

    kernel_size, stride, padding: an int or a pair (h, w), as PyTorch; padding may also be 'valid'
    (no padding) or 'same' (output H x W, stride 1 only, as PyTorch). They are checked and resolved
    once by ops.checks.conv_window, F.conv2d's own helper (walk sizes the output from the resolved
    pads); the values are kept as given (repr shows them as pairs) and passed to F.conv2d.
    dilation and padding_mode are taken at PyTorch's defaults (1, 'zeros') only.

    No bias by default (bias=False), unlike PyTorch: the authors' code follows every conv with a
    BatchNorm, whose beta makes a bias redundant; pass bias=True for one.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=False, name=None, rng=None, dilation=1, padding_mode="zeros"):
        super().__init__()
        sizes = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                     stride=stride, padding=padding, groups=groups)
        check_layer_args("Conv2d", name, pairs=(), context=sizes, in_channels=in_channels,
                         out_channels=out_channels, groups=groups)
        where = f"Conv2d{' ' + repr(name) if name else ''}({', '.join(f'{k}={v!r}' for k, v in sizes.items())})"
        # the one check of the window (F.conv2d's): kernel, stride, ((top, bottom), (left, right))
        self._window = conv_window(where, kernel_size, stride, padding)
        _check_unsupported(where, dilation=(dilation, 1, "a dilated conv is not implemented"),
                           padding_mode=(padding_mode, "zeros", "only zero padding is implemented"))
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d{' ' + repr(name) if name else ''}: in_channels={in_channels} and out_channels="
                             f"{out_channels} must both be divisible by groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = kernel_size, stride, padding, groups
        rng = rng or _default_rng
        kh, kw = self._window[0]
        fan_in = in_channels // groups * kh * kw
        self.weight = Parameter(he_normal(rng, (out_channels, in_channels // groups, kh, kw), fan_in),
                                name=_pname(name, "weight"))
        self.bias = Parameter(np.zeros(out_channels, np.float32), name=_pname(name, "bias")) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={_pair_repr(self.kernel_size)}, "
                f"stride={_pair_repr(self.stride)}")
        if isinstance(self.padding, str) or pair(self.padding, "", "") != (0, 0):
            text += f", padding={_pair_repr(self.padding)}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + (", bias=False" if self.bias is None else "")

    def walk(self, path, shape, visit):
        C, H, W = _image_shape(self, path, shape)
        if C != self.in_channels:
            raise ValueError(f"{_where(self, path)}: expects {self.in_channels} input channels, got shape {shape}")
        (kh, kw), (sh, sw), ((top, bottom), (left, right)) = self._window
        out = (self.out_channels, (H + top + bottom - kh) // sh + 1, (W + left + right - kw) // sw + 1)
        _check_fits(self, path, f"kernel {kh}x{kw}", shape, out)
        macs = self.weight.size * out[1] * out[2]  # each weight is used once per output pixel
        visit(layer_name(self, "_weight", path), f"Conv{kh}x{kw}/{sh} g={self.groups}", out, own_params(self), macs)
        return out


def _check_unsupported(where, **args):
    """PyTorch arguments taken at their default only: name -> (value, the default, why not others)."""
    for name, (value, default, why) in args.items():
        if (tuple(value) if isinstance(value, (list, tuple)) else value) not in (default, (default, default)):
            raise ValueError(f"{where}: {name}={value!r}: {why}; igc_np takes only {name}={default!r}")


class BatchNorm2d(Module):
    """BatchNorm over (N, H, W) of x (N, C, H, W); eps 2e-5 and momentum 0.9 as the authors' code
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

    def forward(self, x, residual=None, relu=False):
        """[relu](batch_norm(x) [+ residual]), x and residual (N, C, H, W). With relu or a residual
        the three are ONE op (ops/fused.py: one pass over memory on the CPU, 2 + 2 kernel launches
        on a GPU) with the unfused ops' maths; without, it is F.batch_norm."""
        return batch_norm_relu(x, self.gamma, self.beta, self.running_mean, self.running_var, self.training,
                               self.momentum, self.eps, relu=relu, residual=residual)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def walk(self, path, shape, visit):
        if shape[:1] != (self.num_features,):
            raise ValueError(f"{_where(self, path)}: expects {self.num_features} channels, got shape {shape}")
        visit(layer_name(self, "_gamma", path), "BatchNorm", shape, own_params(self), 0)
        return shape


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
    """y = x W^T + b; W uniform in +-sqrt(1 / fan_in), b = 0 (the authors' FC initialisation)."""

    def __init__(self, in_features, out_features, bias=True, name=None, rng=None):
        check_layer_args("Linear", name, in_features=in_features, out_features=out_features)
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        rng = rng or _default_rng
        # MXNet's Xavier(rnd_type='uniform', factor_type='in', magnitude=1), as the authors' code
        # uses: bound sqrt(magnitude / fan_in) (not sqrt(3 / fan_in): that would be magnitude 3)
        bound = math.sqrt(1.0 / in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32),
                                name=_pname(name, "weight"))
        self.bias = Parameter(np.zeros(out_features, np.float32), name=_pname(name, "bias")) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def walk(self, path, shape, visit):
        if math.prod(shape) != self.in_features:
            raise ValueError(f"{_where(self, path)}: expects {self.in_features} features, got shape {shape}")
        visit(layer_name(self, "_weight", path), "FullyConnected", (self.out_features,), own_params(self),
              self.weight.size)
        return (self.out_features,)


def _walk_unchanged(module, path, shape, visit, kind):
    """walk of a layer that keeps the shape and has no MACs (ReLU, Dropout, Identity)."""
    visit(module.__dict__.get("name") or path, kind, shape, own_params(module), 0)
    return shape


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)

    def walk(self, path, shape, visit):
        return _walk_unchanged(self, path, shape, visit, "ReLU")


class Identity(Module):
    """y = x (a placeholder, e.g. to replace a layer)."""

    def forward(self, x):
        return x

    def walk(self, path, shape, visit):
        return _walk_unchanged(self, path, shape, visit, "Identity")


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

    def extra_repr(self):
        return f"p={self.p}"

    def walk(self, path, shape, visit):
        return _walk_unchanged(self, path, shape, visit, "Dropout")


class CrossEntropyLoss(Module):
    """F.cross_entropy as a module: logits (N, K), integer labels (N,) -> the mean loss."""

    def forward(self, logits, labels):
        return F.cross_entropy(logits, labels)


class MSELoss(Module):
    """F.mse_loss as a module; reduction 'mean' (default), 'sum' or 'none'."""

    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in REDUCTIONS:  # said now, not at the first forward pass
            raise ValueError(f"MSELoss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)

    def extra_repr(self):
        return "" if self.reduction == "mean" else f"reduction={self.reduction!r}"


class MaxPool2d(Module):
    """Max pooling, x (N, C, H, W) -> (N, C, H', W'); kernel_size, stride and padding an int or a
    pair (h, w) each; stride defaults to kernel_size (as PyTorch)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        sizes = dict(kernel_size=kernel_size, padding=padding)
        if stride is not None:
            sizes["stride"] = stride
        check_layer_args(type(self).__name__, **sizes)
        _check_unsupported(type(self).__name__, ceil_mode=(ceil_mode, False, "the output size rounds down "
                                                           "(floor), as the authors' code; pad the input instead"))
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        stride = self.kernel_size if self.stride is None else self.stride
        return f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}"

    def walk(self, path, shape, visit):
        C, H, W = _image_shape(self, path, shape)
        k = pair(self.kernel_size, "", "")
        s = pair(self.stride if self.stride is not None else self.kernel_size, "", "")
        p = pair(self.padding, "", "")
        out = (C, output_size(H, k[0], s[0], p[0]), output_size(W, k[1], s[1], p[1]))
        _check_fits(self, path, f"window {k[0]}x{k[1]}", shape, out)
        visit(self.__dict__.get("name") or path, f"{type(self).__name__[:3]}Pool{k[0]}x{k[1]}/{s[0]}", out, 0, 0)
        return out


class AvgPool2d(MaxPool2d):
    """Average pooling (zero padding counted, as MXNet); stride defaults to kernel_size."""

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class GlobalAvgPool2d(Module):
    """The mean over H and W: x (N, C, H, W) -> (N, C) (AdaptiveAvgPool2d(1) keeps (N, C, 1, 1))."""

    def forward(self, x):
        return F.global_avg_pool2d(x)

    def walk(self, path, shape, visit):
        C, _, _ = _image_shape(self, path, shape)
        visit(self.__dict__.get("name") or path, "GlobalAvgPool", (C,), 0, 0)
        return (C,)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size, x (N, C, H, W) -> (N, C, oh, ow), as PyTorch's.

    output_size: an int or a pair (oh, ow); None in the pair keeps that input size. Implemented
    where oh divides H and ow divides W (equal, non-overlapping windows; 1 always does): other sizes
    need PyTorch's overlapping windows and are refused with the sizes that would work.
    """

    def __init__(self, output_size):
        super().__init__()
        sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if len(sizes) != 2 or any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                                     or v < 1) for v in sizes):
            raise ValueError(f"AdaptiveAvgPool2d(output_size={output_size!r}): output_size must be a positive "
                             "int or a pair of positive ints (or None to keep that input size)")
        self.output_size = output_size
        self._sizes = tuple(None if v is None else int(v) for v in sizes)

    def _out(self, H, W):
        oh, ow = (H if self._sizes[0] is None else self._sizes[0]), (W if self._sizes[1] is None else self._sizes[1])
        if H % oh or W % ow:
            raise ValueError(f"AdaptiveAvgPool2d(output_size={self.output_size!r}): input {H}x{W} does not "
                             f"split into {oh}x{ow} equal windows; output sizes that do: heights "
                             f"{divisors(H)}, widths {divisors(W)} (PyTorch's overlapping windows are not "
                             "implemented)")
        return oh, ow

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"AdaptiveAvgPool2d: expected x (N, C, H, W), got shape {tuple(x.shape)}")
        N, C, H, W = x.shape
        oh, ow = self._out(H, W)
        if (oh, ow) == (1, 1):  # the global mean, reshaped as PyTorch returns it
            return F.global_avg_pool2d(x).reshape(N, C, 1, 1)
        return F.avg_pool2d(x, (H // oh, W // ow))

    def extra_repr(self):
        return f"output_size={self.output_size!r}"

    def walk(self, path, shape, visit):
        C, H, W = _image_shape(self, path, shape)
        out = (C,) + self._out(H, W)
        visit(path, f"AdaptiveAvgPool{out[1]}x{out[2]}", out, 0, 0)
        return out


class Flatten(Module):
    """Merges the axes start_dim .. end_dim into one (PyTorch's defaults: (N, C, H, W) -> (N, C*H*W))."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for k, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"Flatten(start_dim={start_dim!r}, end_dim={end_dim!r}): {k} must be an int")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def _shape(self, shape):
        n = len(shape)
        s, e = self.start_dim % n if -n <= self.start_dim < n else None, \
            self.end_dim % n if -n <= self.end_dim < n else None
        if s is None or e is None or s > e:
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}): no such axes, or "
                             f"start after end, for an input of shape {tuple(shape)}")
        return tuple(shape[:s]) + (math.prod(shape[s:e + 1]),) + tuple(shape[e + 1:])

    def forward(self, x):
        if (self.start_dim, self.end_dim) == (1, -1):
            return x.flatten(1)
        return x.reshape(self._shape(x.shape))

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

    def walk(self, path, shape, visit):
        if self.start_dim == 0 or self.start_dim < -len(shape):
            raise ValueError(f"{_where(self, path)}: describe walks one sample; Flatten(start_dim="
                             f"{self.start_dim}) would merge the batch axis")
        out = self._shape((1,) + tuple(shape))[1:]  # the batch axis, then dropped
        visit(self.__dict__.get("name") or path, "Flatten", out, 0, 0)
        return out


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

    def walk(self, path, shape, visit):
        return walk_in_order(self, path, shape, visit)


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
    """A list of Parameters that registers them (named '0', '1', ... or their MXNet names)."""

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

    def extra_repr(self):
        return f"branch_factor={self.branch_factor}"

    def walk(self, path, shape, visit):
        visit(self.__dict__.get("name") or path, f"Reorder({self.branch_factor})", shape, 0, 0)
        return shape


class IGCConv(Module):
    """An interleaved group convolution (paper section 3), BN and ReLU not included:

        y = P_S W_d P W_p x        (P_S = P^T when S = C_out/L, every network of the paper)

    primary    W_p: k x k group conv, L groups, C_in -> C_out, stride s, pad k//2
    permute    P:   permute_channels(., L): secondary partition m gets member m of every primary one
    secondary  W_d: 1 x 1 group conv, S groups, C_out -> C_out
    unpermute  P_S: permute_channels(., S), back to primary order

    With S = C_out / L the last three steps run as ONE op, F.interleaved_secondary (P, W_d, P^T
    without a permuted copy); the result is the same. Parameter names follow the authors' code:
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

    def extra_repr(self):
        """L primary partitions, M = C_out/L channels each; S only where it is not M (P_S is not P^T)."""
        M = self.out_channels // self.L
        return (f"{self.in_channels}, {self.out_channels}, L={self.L}, M={M}"
                + ("" if self.S == M else f", S={self.S}"))

    def walk(self, path, shape, visit):
        # section 1: primary -> Reorder(L) -> secondary -> Reorder(S); the permutations move data only
        name = self.name or path
        y = self.primary.walk(path + ".primary", shape, visit)
        visit(f"{name}_reorder1", f"Reorder({self.L})", y, 0, 0)
        y = self.secondary.walk(path + ".secondary", y, visit)
        visit(f"{name}_reorder2", f"Reorder({self.S})", y, 0, 0)
        return y

