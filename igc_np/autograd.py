"""A small define-by-run autograd engine: Tensor, Function, backward.

Running the forward pass builds the graph: every ``Function.apply`` records its inputs on the
function and itself as the ``creator`` of its outputs. ``Tensor.backward`` walks that graph once,
in reverse topological order, calling each function's ``backward`` with the gradients of its
outputs. The graph is touched in those two places only.

An op is a subclass of ``Function``. An op whose maths is plain array code (ops/math.py) defines

    forward(self, xp, *arrays)   -> array or tuple of arrays   (saves what backward needs on self)
    backward(self, xp, *grads)   -> one gradient (or None) per input

where ``xp`` is ``numpy`` or ``cupy`` (see ``backend.py``), so one code path serves every device.
An op with tiers of its own (conv, BatchNorm, the permutation, ...) defines instead, per tier,

    forward_reference / backward_reference   the reference tier (ops/reference.py), NumPy
    forward_cpu / backward_cpu               the fast CPU tier (NumPy; ops/cpu_conv.py ...)
    forward_gpu(xp, ...) / backward_gpu      our CUDA kernels (igc_np/kernels): xp = cupy on
                                             'cuda'; on 'emu' the same kernels run in the CPU
                                             emulator and xp = numpy

and ``Function.apply`` picks the tier once (``backend.tier``): 'gpu' on 'cuda' and 'emu',
'reference' on 'cpu' inside ``backend.use_reference()`` (or with IGC_NP_REFERENCE=1), else 'cpu'.
Backward runs on the tier its forward ran on.
"""
import contextlib

import numpy as np

from . import backend

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Inside this block no graph is recorded (evaluation, optimizer updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


class Tensor:
    """An n-dimensional array with an optional gradient.

    data:  the numpy/cupy array;  grad: array of the same shape, or None until backward;
    device: 'cpu', 'cuda' or 'emu';  creator: the Function that produced it (None for leaves).

    Array habits from NumPy and PyTorch (see also ops/math.py and ops/indexing.py):

    * ``t.size`` is NumPy's element count (an int); calling it, ``t.size()`` / ``t.size(d)``,
      answers as PyTorch does (the shape / one dimension). ``numel()`` and ``dim()`` exist too.
    * ``np.asarray(t)``, ``float(t)``, ``int(t)``, ``t.tolist()``, ``t.item()`` give the data
      (copied from the GPU); none of them is recorded in the graph.
    * Comparisons (``t < 0``, ``t == u``) return a plain boolean array, not a Tensor: they have
      no gradient. ``t.argmax()`` likewise returns an integer array.
    * NumPy functions refuse Tensors (``np.exp(t)`` is a TypeError): they would act on the data
      and silently drop the graph. Use the Tensor's methods, or ``np.exp(t.numpy())`` for data.
    """

    # NumPy defers every operator (ndarray * Tensor -> Tensor.__rmul__) and refuses ufuncs
    __array_ufunc__ = None
    __hash__ = object.__hash__  # identity, although __eq__ compares values

    def __init__(self, data, requires_grad=False, device=None):
        if isinstance(data, Tensor):
            data = data.data
        if device is None:
            device = backend.device_of(data)
        self.device = backend.check_device(device)
        if self.device == "cuda" or backend.device_of(data) == "cuda":
            data = backend.to_device(data, self.device)
        elif not isinstance(data, np.ndarray):
            data = np.asarray(data)
        if data.dtype.kind not in "biuf":  # strings, objects (None, ragged lists), complex
            raise TypeError(f"Tensor: data must be numbers (bool, int or float), got dtype {data.dtype} "
                            f"from {type(data).__name__ if data.dtype.kind != 'O' else 'objects'}"
                            + (f" of shape {data.shape}" if data.ndim else ""))
        if requires_grad and data.dtype.kind != "f":
            # an integer leaf has no gradient: the update x - lr * grad would not even be an int
            raise TypeError(f"Tensor: requires_grad=True needs floating point data, got dtype "
                            f"{data.dtype} (shape {data.shape}); convert it: np.asarray(data, np.float32)")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator = None
        self.index = 0  # which output of `creator` this tensor is

    # ---- array-like attributes -------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: _Size(self.data.size, self.data.shape))

    def numel(self):
        """Number of elements (PyTorch's name for ``.size``)."""
        return self.data.size

    def dim(self):
        """Number of dimensions (PyTorch's name for ``.ndim``)."""
        return self.data.ndim

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d Tensor (a scalar): use .item() or float(t)")
        return len(self.data)

    def __iter__(self):  # rows, each a Tensor in the graph (x[0], x[1], ...)
        return (self[i] for i in range(len(self)))

    # ---- conversions to Python and NumPy: data only, never recorded --------------------------
    def __array__(self, dtype=None, copy=None):
        """np.asarray(t): the data as a NumPy array (NumPy 2's copy=: True always copies,
        False refuses when a copy is needed - always for a GPU tensor)."""
        on_gpu = backend.device_of(self.data) == "cuda"
        if copy is False and (on_gpu or (dtype is not None and np.dtype(dtype) != self.dtype)):
            raise ValueError(f"np.asarray(Tensor, copy=False): a copy is needed (device "
                             f"'{self.device}', dtype {self.dtype} -> {dtype})")
        a = self.numpy()
        if dtype is not None:
            a = a.astype(dtype, copy=False)
        return a.copy() if copy and a is self.data else a

    def _scalar(self, kind):
        if self.data.size != 1:
            raise TypeError(f"{kind}(Tensor): only a one-element Tensor converts to a Python "
                            f"{kind}, got shape {self.shape}")
        return self.item()

    def __float__(self):
        return float(self._scalar("float"))

    def __int__(self):
        return int(self._scalar("int"))

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a Tensor of shape {self.shape} is ambiguous: "
                             "use (t > 0).any() or .all() on the comparison's array")
        return bool(self.item())

    def tolist(self):
        """The data as (nested) Python lists, as ndarray.tolist."""
        return self.numpy().tolist()

    def __setitem__(self, key, value):
        raise TypeError("Tensor does not support item assignment (an in-place change would corrupt "
                        "the graph of every op that saved this tensor): build a new Tensor, or edit "
                        "t.data inside ig.no_grad() for data that needs no gradient")

    def __repr__(self):
        flag = ", requires_grad=True" if self.requires_grad else ""
        if self.data.size > _REPR_MAX_ELEMENTS:  # a big (maybe GPU) array: no copy just to print it
            return f"Tensor(shape={self.shape}, dtype={self.dtype}, device='{self.device}'{flag})"
        values = np.array2string(self.numpy(), separator=", ", prefix="Tensor(")
        return f"Tensor({values}, dtype={self.dtype}, device='{self.device}'{flag})"

    def numpy(self):
        """The data as a NumPy array (copied from the GPU if needed)."""
        return backend.to_device(self.data, "cpu")

    def item(self):
        """The one element of a one-element Tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item(): only a one-element Tensor has an item, got shape {self.shape} "
                             f"({self.data.size} elements); use .tolist() or .numpy()")
        return self.numpy().item()

    def detach(self):
        return Tensor(self.data, requires_grad=False, device=self.device)

    def to(self, device):
        """A copy on `device` ('cpu', 'cuda', 'emu'); a leaf, keeping requires_grad."""
        device = backend.check_device(device)
        if device == self.device:
            return self
        return Tensor(backend.to_device(self.data, device), self.requires_grad, device)

    def zero_grad(self):
        self.grad = None

    # ---- backward --------------------------------------------------------------------------
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` that requires a gradient.

        With no argument, self must be a scalar (one element) and the seed is 1.
        The graph is freed as it is walked, so call backward once per forward pass.
        """
        xp = backend.get_array_module(self.device)
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward: grad can be omitted only for a scalar, got shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad shape {grad.shape} != tensor shape {self.shape}")
        if self.creator is None:
            if not self.requires_grad:  # silently doing nothing would leave every .grad None
                raise RuntimeError(f"backward: this Tensor (shape {self.shape}) does not require a "
                                   "gradient and has no graph: no input had requires_grad=True, or "
                                   "it was computed inside ig.no_grad()")
            self.grad = grad if self.grad is None else self.grad + grad
            return
        # Gradients of intermediate tensors, keyed by (function, output index); each entry is
        # popped when its function runs, so memory does not grow with depth.
        pending = {(self.creator, self.index): grad}
        given = set()  # ids of arrays already stored in some leaf's .grad during this walk
        for fn in _topological_order(self.creator):
            grads_out = [pending.pop((fn, i), None) for i in range(fn.n_outputs)]
            if all(g is None for g in grads_out):
                fn.release()
                continue
            grads_out = [xp.zeros(s, d) if g is None else g
                         for g, (s, d) in zip(grads_out, fn.output_meta)]
            grads_in = fn.backward(xp, *grads_out)
            if not isinstance(grads_in, tuple):
                grads_in = (grads_in,)
            inputs = fn.inputs
            fn.release()  # saved arrays are no longer needed
            if len(grads_in) != len(inputs):
                raise RuntimeError(f"{type(fn).__name__}.backward returned {len(grads_in)} "
                                   f"gradients for {len(inputs)} inputs")
            for x, gx in zip(inputs, grads_in):
                if gx is None or not x.requires_grad:
                    continue
                if gx.shape != x.shape:
                    raise RuntimeError(f"{type(fn).__name__}.backward: gradient shape {gx.shape} "
                                       f"!= input shape {x.shape}")
                if x.creator is None:  # a leaf: accumulate into .grad
                    if x.grad is not None:
                        x.grad = x.grad + gx
                    else:  # an op may pass one array to several inputs (add): never share it
                        x.grad = gx.copy() if id(gx) in given else gx
                    given.add(id(x.grad))
                else:
                    key = (x.creator, x.index)
                    pending[key] = gx if key not in pending else pending[key] + gx

    # Arithmetic operators (+, *, reshape, sum, ...) are attached in ops/math.py.


_REPR_MAX_ELEMENTS = 1000  # NumPy's own summarisation threshold


class _Size(int):
    """``Tensor.size``: NumPy's element count, an int. Called, it answers as PyTorch's
    ``size()``: ``t.size()`` is the shape, ``t.size(d)`` its d-th entry."""

    def __new__(cls, n, shape):
        self = super().__new__(cls, n)
        self.shape = shape
        return self

    def __call__(self, dim=None):
        return tuple(self.shape) if dim is None else self.shape[dim]

    def __reduce__(self):  # pickles (and deep-copies) as the plain int it is
        return int, (int(self),)


def _topological_order(root):
    """Functions reachable from `root`, each after every function that consumes its outputs.

    Iterative depth-first search (a ResNet-110 graph would overflow Python's recursion limit).
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        fn, expanded = stack.pop()
        if expanded:
            order.append(fn)
            continue
        if fn in visited:
            continue
        if fn.inputs is None:
            raise RuntimeError(f"backward through {type(fn).__name__} a second time: the graph is "
                               "freed after the first backward; run the forward pass again")
        visited.add(fn)
        stack.append((fn, True))
        for x in fn.inputs:
            if x.creator is not None and x.creator not in visited:
                stack.append((x.creator, False))
    order.reverse()
    return order


def as_tensor(value, like):
    """Wrap a Python number or array as a constant Tensor on `like`'s device with its dtype."""
    if isinstance(value, Tensor):
        return value
    xp = backend.get_array_module(like.device)
    value = xp.asarray(value)
    if like.dtype.kind == "f" and value.dtype.kind in "biuf" and (value.ndim == 0 or value.dtype.kind != "f"):
        # Python numbers and integer constants take the tensor's float type; a float array of
        # another precision is left alone, so that the op reports the mismatch
        value = value.astype(like.dtype)
    return Tensor(value, device=like.device)


class Function:
    """Base class of every differentiable op. Subclasses define forward and backward."""

    inputs = None

    def __call__(self, *inputs):
        return self.apply(*inputs)

    def apply(self, *inputs):
        """Run forward on the inputs' arrays; record the graph when a gradient is needed."""
        tensors = [x if isinstance(x, Tensor) else None for x in inputs]
        first = next((t for t in tensors if t is not None), None)
        if first is None:
            raise TypeError(f"{type(self).__name__}: at least one input must be a Tensor")
        tensors = [t if t is not None else as_tensor(x, first) for t, x in zip(tensors, inputs)]
        device = first.device
        for t in tensors:
            if t.device != device:
                raise ValueError(f"{type(self).__name__}: inputs on different devices "
                                 f"({', '.join(repr(u.device) for u in tensors)}); move them with .to(device)")
        self.device = device
        self.tier = backend.tier(device)
        xp = backend.get_array_module(device)
        outputs = self.forward(xp, *[t.data for t in tensors])
        single = not isinstance(outputs, tuple)
        if single:
            outputs = (outputs,)
        needs_grad = _grad_enabled and any(t.requires_grad for t in tensors)
        results = [Tensor(y, requires_grad=needs_grad, device=device) for y in outputs]
        if needs_grad:
            # backward may skip the gradient of an input that needs none (e.g. the data)
            self.needs_input_grad = tuple(t.requires_grad for t in tensors)
            self.inputs = tensors
            self.n_outputs = len(results)
            self.output_meta = [(y.shape, y.dtype) for y in outputs]
            for i, r in enumerate(results):
                r.creator, r.index = self, i
        return results[0] if single else tuple(results)

    # ---- the one dispatch: plain-xp ops override forward/backward, tiered ops the methods below --
    def forward(self, xp, *xs):
        if self.tier == "gpu":
            return self.forward_gpu(xp, *xs)
        return getattr(self, "forward_" + self.tier)(*xs)

    def backward(self, xp, *gys):
        if self.tier == "gpu":
            return self.backward_gpu(xp, *gys)
        return getattr(self, "backward_" + self.tier)(*gys)

    def _missing(self, method):
        raise NotImplementedError(f"{type(self).__name__} defines neither forward/backward(xp, ...) "
                                  f"nor {method} (tier {self.tier!r}, device {self.device!r})")

    def forward_reference(self, *xs):
        self._missing("forward_reference")

    def backward_reference(self, *gys):
        self._missing("backward_reference")

    def forward_cpu(self, *xs):
        self._missing("forward_cpu")

    def backward_cpu(self, *gys):
        self._missing("backward_cpu")

    def forward_gpu(self, xp, *xs):
        self._missing("forward_gpu")

    def backward_gpu(self, xp, *gys):
        self._missing("backward_gpu")

    def release(self):
        """Drop inputs and saved arrays once backward has used them."""
        self.__dict__.clear()
        self.inputs = None

    # functions are graph nodes: identity semantics for hashing
    __hash__ = object.__hash__
