"""A small define-by-run autograd engine: Tensor, Function, backward.

Running the forward pass builds the graph: every ``Function.apply`` records its inputs on the
function and itself as the ``creator`` of its outputs. ``Tensor.backward`` walks that graph once,
in reverse topological order, calling each function's backward with the gradients of its
outputs. The graph is touched in those two places only.

An op is a subclass of ``Function`` with ONE protocol: its forward and backward methods take

    forward(self, xp, *arrays)  -> array or tuple of arrays   (saves what backward needs on self)
    backward(self, xp, *grads)  -> one gradient (or None) per input

where ``xp`` is ``numpy`` or ``cupy`` (see ``backend.py``), and its class attribute ``tiers``
names, for each tier, the (forward, backward) pair of methods that computes it:

    reference   the reference tier (ops/reference.py), NumPy, device 'cpu' under use_reference()
    cpu         the fast CPU tier (NumPy; ops/cpu_conv.py ...)
    gpu         our CUDA kernels (igc_np/kernels): xp = cupy on 'cuda'; on 'emu' the same
                kernels run in the CPU emulator and xp = numpy

The default table gives every tier the methods ``forward`` / ``backward``: an op whose maths is
plain array code (ops/math.py) writes those two and serves every device. An op with code per tier
(conv, BatchNorm, the permutation, ...) declares its own table, e.g.

    tiers = {"reference": ("forward_reference", "backward_reference"),
             "cpu": ("forward_cpu", "backward_cpu"),
             "gpu": ("forward_gpu", "backward_gpu")}

``Function.apply`` picks the tier, in one place, from ``backend.tier(device)``: 'gpu' on 'cuda'
and 'emu', 'reference' on 'cpu' inside ``backend.use_reference()``, else 'cpu'. Backward runs on
the tier its forward ran on. An op built of other ops runs them through the same two calls,
``run_forward`` and ``run_backward`` (see ops/fused.py).

Per thread: the grad mode (``no_grad``) and the reference switch belong to the thread that sets
them, so two threads may train two models at once.

Versions: every Tensor counts the changes made to it after creation (``_version``: an assignment
to ``.data``, ``t.data += 1`` included). Backward refuses to run through an op whose input changed
after the op used it, since the values the op saved for its gradient are stale. A write INTO the
array (``t.data[...] = 0``, ``np.copyto(t.data, ...)``) is not seen, as in PyTorch.
"""
import contextlib
import threading

import numpy as np

from . import backend


class _GradMode(threading.local):
    """The grad mode of the calling thread (each thread starts with gradients on)."""
    enabled = True


_grad_mode = _GradMode()


@contextlib.contextmanager
def no_grad():
    """Inside this block no graph is recorded (evaluation, optimizer updates); this thread only."""
    previous, _grad_mode.enabled = _grad_mode.enabled, False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


def is_grad_enabled():
    """False inside no_grad() in the calling thread."""
    return _grad_mode.enabled


def _check_dtype(data, what):
    """Numbers only, and no float16: the ops accumulate in the input's precision, so float16 gives
    wrong results (BatchNorm of values ~300 returns zeros, an average pool of 60000s is inf)."""
    if data.dtype.kind not in "biuf":  # strings, objects (None, ragged lists), complex
        raise TypeError(f"{what}: data must be numbers (bool, int or float), got dtype {data.dtype} "
                        f"from {type(data).__name__ if data.dtype.kind != 'O' else 'objects'}"
                        + (f" of shape {data.shape}" if data.ndim else ""))
    if data.dtype == np.float16:
        raise TypeError(f"{what}: float16 is not supported (shape {data.shape}): igc_np's ops accumulate "
                        "in the input's precision, and float16 gives wrong results (BatchNorm of values "
                        "~300 returns zeros); use float32: x.astype(np.float32), or model.to(dtype=np.float32)")


# ~200 lines: the one class users hold (the array, its NumPy/PyTorch conversions and habits, the
# entry to backward); the graph walk is _walk, the operators are attached in ops/math.py.
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
            data = data._data
        if device is None:
            device = backend.device_of(data)
        self.device = backend.check_device(device)
        if self.device == "cuda" or backend.device_of(data) == "cuda":
            data = backend.to_device(data, self.device)
        elif not isinstance(data, np.ndarray):
            data = np.asarray(data)
        _check_dtype(data, "Tensor")
        if requires_grad and data.dtype.kind != "f":
            # an integer leaf has no gradient: the update x - lr * grad would not even be an int
            raise TypeError(f"Tensor: requires_grad=True needs floating point data, got dtype "
                            f"{data.dtype} (shape {data.shape}); convert it: np.asarray(data, np.float32)")
        self._data = data
        self._versions = [0]  # a box, shared with detach(): a change through either is seen by both
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator = None
        self.index = 0  # which output of `creator` this tensor is

    @property
    def data(self):
        """The array (numpy or cupy). Assigning it (``t.data = a``, ``t.data -= lr * g``) counts
        as a change: backward refuses graphs that used the old values (see ``_version``)."""
        return self._data

    @data.setter
    def data(self, value):
        if isinstance(value, Tensor) or not (hasattr(value, "dtype") and hasattr(value, "shape")):
            raise TypeError(f"Tensor.data must be a numpy/cupy array, got {type(value).__name__}")
        _check_dtype(value, "Tensor.data")
        self._data = value
        self._versions[0] += 1

    def _mark_changed(self):
        """Count a change made INTO the array (an optimizer's in-place update, a kernel writing the
        weights), which the .data setter cannot see: a graph that used the old values is refused."""
        self._versions[0] += 1

    # how many times the data was changed through the Tensor API (PyTorch's name); the op that
    # made the tensor (PyTorch's name for creator, None for a leaf); no op made it
    _version = property(lambda self: self._versions[0])
    grad_fn = property(lambda self: self.creator)
    is_leaf = property(lambda self: self.creator is None)

    def requires_grad_(self, requires_grad=True):
        """Set requires_grad in place and return self (PyTorch's habit: ``w = ig.Tensor(a).requires_grad_()``)."""
        if self.creator is not None and not requires_grad:
            raise RuntimeError(f"requires_grad_(False): this tensor (shape {self.shape}) was made by "
                               f"{type(self.creator).__name__} and is part of a graph; use .detach()")
        if requires_grad and self._data.dtype.kind != "f":
            raise TypeError(f"requires_grad_(): needs floating point data, got dtype {self.dtype} "
                            f"(shape {self.shape}); convert it: np.asarray(data, np.float32)")
        self.requires_grad = bool(requires_grad)
        return self

    # ---- array-like attributes -------------------------------------------------------------
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: _Size(self._data.size, self._data.shape))

    def numel(self):
        """Number of elements (PyTorch's name for ``.size``)."""
        return self._data.size

    def dim(self):
        """Number of dimensions (PyTorch's name for ``.ndim``)."""
        return self._data.ndim

    def __len__(self):
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d Tensor (a scalar): use .item() or float(t)")
        return len(self._data)

    def __iter__(self):  # rows, each a Tensor in the graph (x[0], x[1], ...)
        return (self[i] for i in range(len(self)))

    # ---- conversions to Python and NumPy: data only, never recorded --------------------------
    def __array__(self, dtype=None, copy=None):
        """np.asarray(t): the data as a NumPy array (NumPy 2's copy=: True always copies,
        False refuses when a copy is needed - always for a GPU tensor)."""
        on_gpu = backend.device_of(self._data) == "cuda"
        if copy is False and (on_gpu or (dtype is not None and np.dtype(dtype) != self.dtype)):
            raise ValueError(f"np.asarray(Tensor, copy=False): a copy is needed (device "
                             f"'{self.device}', dtype {self.dtype} -> {dtype})")
        a = self.numpy()
        if dtype is not None:
            a = a.astype(dtype, copy=False)
        return a.copy() if copy and a is self._data else a

    def _scalar(self, kind):
        if self._data.size != 1:
            raise TypeError(f"{kind}(Tensor): only a one-element Tensor converts to a Python "
                            f"{kind}, got shape {self.shape}")
        return self.item()

    def __float__(self):
        return float(self._scalar("float"))

    def __int__(self):
        return int(self._scalar("int"))

    def __bool__(self):
        if self._data.size != 1:
            raise ValueError(f"the truth value of a Tensor of shape {self.shape} is ambiguous: "
                             "use (t > 0).any() or .all() on the comparison's array")
        return bool(self.item())

    def tolist(self):
        """The data as (nested) Python lists, as ndarray.tolist."""
        return self.numpy().tolist()

    def __setitem__(self, key, value):
        raise TypeError("Tensor does not support item assignment (an in-place change would corrupt "
                        "the graph of every op that saved this tensor): build a new Tensor, or assign "
                        "t.data = new_array inside ig.no_grad() for data that needs no gradient")

    def __repr__(self):
        """PyTorch's form: the values (or, past 1000 elements, the shape), dtype, device, and the
        op that made the tensor (grad_fn) or requires_grad for a leaf that needs a gradient."""
        flag = (f", grad_fn=<{type(self.creator).__name__}>" if self.creator is not None
                else ", requires_grad=True" if self.requires_grad else "")
        if self._data.size > _REPR_MAX_ELEMENTS:  # a big (maybe GPU) array: no copy just to print it
            return f"Tensor(shape={self.shape}, dtype={self.dtype}, device='{self.device}'{flag})"
        values = np.array2string(self.numpy(), separator=", ", prefix="Tensor(")
        return f"Tensor({values}, dtype={self.dtype}, device='{self.device}'{flag})"

    def numpy(self):
        """The data as a NumPy array (copied from the GPU if needed)."""
        return backend.to_device(self._data, "cpu")

    def item(self):
        """The one element of a one-element Tensor as a Python number."""
        if self._data.size != 1:
            raise ValueError(f"item(): only a one-element Tensor has an item, got shape {self.shape} "
                             f"({self._data.size} elements); use .tolist() or .numpy()")
        return self.numpy().item()

    def detach(self):
        """The same array as a leaf outside the graph (no copy; it shares the version counter)."""
        t = Tensor(self._data, requires_grad=False, device=self.device)
        t._versions = self._versions
        return t

    def to(self, device=None, dtype=None):
        """A copy on `device` ('cpu', 'cuda', 'emu'), a leaf keeping requires_grad; and/or cast to
        `dtype` (float32/float64: in the graph, as PyTorch's). As PyTorch, ``t.to(np.float64)``
        takes a dtype in the device's place. self when nothing changes."""
        if device is not None and dtype is None and _is_dtype(device):
            device, dtype = None, device
        t = self
        if device is not None:
            device = backend.check_device(device)
            if device != self.device:
                t = Tensor(backend.to_device(self._data, device), self.requires_grad, device)
        return t if dtype is None else t._cast(dtype)

    def cpu(self):
        """to('cpu'), PyTorch's habit (self when already there)."""
        return self.to("cpu")

    def cuda(self):
        """to('cuda'), PyTorch's habit."""
        return self.to("cuda")

    def zero_grad(self):
        self.grad = None

    # ---- backward --------------------------------------------------------------------------
    def backward(self, gradient=None, retain_graph=None, create_graph=False, *, grad=None):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` that requires a gradient.

        gradient (PyTorch's keyword; ``grad=`` is the same): d(loss)/d(self), an array or Tensor
        of self's shape. Omitted, self must be a scalar (one element) and the seed is 1.
        The graph is freed as it is walked, so call backward once per forward pass: PyTorch's
        retain_graph=True and create_graph=True (gradients of gradients) are refused.
        """
        if retain_graph or create_graph:
            raise NotImplementedError(
                ("backward(retain_graph=True)" if retain_graph else "backward(create_graph=True)") +
                ": igc_np frees the graph as backward walks it and has no gradients of gradients; "
                "run the forward pass again for a second backward, or add the losses and call "
                "backward once on the sum")
        if grad is not None:
            if gradient is not None:
                raise TypeError("backward: give gradient= (PyTorch) or grad=, not both")
            gradient = grad
        xp = backend.get_array_module(self.device)
        if gradient is None:
            if self.size != 1:
                raise ValueError(f"backward: gradient can be omitted only for a scalar, got shape {self.shape}")
            gradient = xp.ones_like(self._data)
        else:
            # as PyTorch, the seed takes the tensor's dtype and device (a float64 seed made float64
            # gradients in a float32 model)
            gradient = backend.to_device(gradient._data if isinstance(gradient, Tensor) else gradient, self.device)
            gradient = gradient.astype(self.dtype, copy=False)
            if gradient.shape != self.shape:
                raise ValueError(f"backward: gradient shape {gradient.shape} != tensor shape {self.shape}")
        if self.creator is None:
            if not self.requires_grad:  # silently doing nothing would leave every .grad None
                raise RuntimeError(f"backward: this Tensor (shape {self.shape}) does not require a "
                                   "gradient and has no graph: no input had requires_grad=True, or "
                                   "it was computed inside ig.no_grad()")
            self.grad = gradient if self.grad is None else self.grad + gradient
            return
        if self._version:
            raise RuntimeError(_changed_message(self.creator, self, None, 0))
        _walk(self.creator, self.index, gradient, xp)

    # Arithmetic operators (+, *, reshape, sum, ...) are attached in ops/math.py.


def _walk(root, index, gradient, xp):
    """Backward from output `index` of the Function `root`: each function's gradients in turn."""
    # Gradients of intermediate tensors, keyed by (function, output index); each entry is
    # popped when its function runs, so memory does not grow with depth.
    pending = {(root, index): gradient}
    given = set()  # ids of arrays already stored in some leaf's .grad during this walk
    for fn in _topological_order(root):
        grads_out = [pending.pop((fn, i), None) for i in range(fn.n_outputs)]
        if all(g is None for g in grads_out):
            fn.release()
            continue
        _check_unchanged(fn)
        grads_out = [xp.zeros(s, d) if g is None else g
                     for g, (s, d) in zip(grads_out, fn.output_meta)]
        grads_in = fn.run_backward(xp, *grads_out)
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


def _check_unchanged(fn):
    """Refuse to run fn's backward when one of its inputs changed after fn used it: fn saved the
    old values (or the array that was then changed in place), so its gradient would be wrong.
    An input made by another op must never change (that op saved it too, e.g. ReLU its output)."""
    for i, (x, seen) in enumerate(zip(fn.inputs, fn.input_versions)):
        if x._version != seen or (x.creator is not None and x._version):
            raise RuntimeError(_changed_message(fn, x, i, seen))


def _changed_message(fn, x, i, seen):
    what = (f"its input {i}" if i is not None else "its output") + f" (shape {x.shape}, " + (
        "a leaf)" if x.creator is None else f"made by {type(x.creator).__name__})")
    return (f"backward through {type(fn).__name__}: {what} was changed after the forward pass used it "
            f"(version {seen} -> {x._version}: an assignment to .data such as t.data = a or "
            f"t.data += 1), so the values {type(fn).__name__} saved for its gradient are stale and the "
            "gradient would be wrong. Change tensors after backward (as optimizer.step() does), or run "
            "the forward pass again")


_REPR_MAX_ELEMENTS = 1000  # NumPy's own summarisation threshold


def _is_dtype(value):
    """A dtype given where a device goes (t.to(np.float64)); device names are never dtypes."""
    if isinstance(value, str) and value in backend.DEVICES:
        return False
    try:
        np.dtype(value)
    except TypeError:
        return False
    return True


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
    """Base class of every differentiable op: see the module docstring for the protocol.

    A subclass writes forward(self, xp, *arrays) and backward(self, xp, *grads), or, with code
    per tier, one such pair per tier and the ``tiers`` table naming them. The table is checked
    when the class is defined: a missing tier or method is an error at import, not mid-training.
    """

    # tier -> (forward method, backward method), by name: the one dispatch table (run_forward)
    tiers = {"reference": ("forward", "backward"), "cpu": ("forward", "backward"), "gpu": ("forward", "backward")}
    inputs = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.tiers, dict) or set(cls.tiers) != set(backend.TIERS):
            raise TypeError(f"{cls.__name__}.tiers must map each tier {backend.TIERS} to a (forward, "
                            f"backward) pair of method names, got {cls.tiers!r}")
        for tier, pair in cls.tiers.items():
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise TypeError(f"{cls.__name__}.tiers[{tier!r}] must be a (forward, backward) pair of "
                                f"method names, got {pair!r}")
            for name in pair:
                if not callable(getattr(cls, name, None)):
                    raise TypeError(f"{cls.__name__}.tiers[{tier!r}] names {name!r}, which "
                                    f"{cls.__name__} does not define")

    def __call__(self, *inputs):
        return self.apply(*inputs)

    def apply(self, *inputs):
        """Run forward on the inputs' arrays; record the graph when a gradient is needed."""
        tensors = [x if isinstance(x, Tensor) else None for x in inputs]
        first = next((t for t in tensors if t is not None), None)
        if first is None:
            raise TypeError(f"{type(self).__name__}: at least one input must be a Tensor")
        if any(t is None for t in tensors):
            try:
                tensors = [t if t is not None else as_tensor(x, first) for t, x in zip(tensors, inputs)]
            except TypeError as e:  # a float16 or non-numeric constant: say which op got it
                raise TypeError(f"{type(self).__name__}: {e}") from None
        device = first.device
        for t in tensors:
            if t.device != device:
                raise ValueError(f"{type(self).__name__}: inputs on different devices "
                                 f"({', '.join(repr(u.device) for u in tensors)}); move them with .to(device)")
        xp = backend.get_array_module(device)
        # the one place where an op's tier is chosen
        outputs = self.run_forward(backend.tier(device), device, xp, *[t._data for t in tensors])
        single = not isinstance(outputs, tuple)
        if single:
            outputs = (outputs,)
        needs_grad = _grad_mode.enabled and any(t.requires_grad for t in tensors)
        results = [Tensor(y, requires_grad=needs_grad, device=device) for y in outputs]
        if needs_grad:
            # backward may skip the gradient of an input that needs none (e.g. the data)
            self.needs_input_grad = tuple(t.requires_grad for t in tensors)
            self.inputs = tensors
            self.input_versions = tuple(t._version for t in tensors)  # see _check_unchanged
            self.n_outputs = len(results)
            self.output_meta = [(y.shape, y.dtype) for y in outputs]
            for i, r in enumerate(results):
                r.creator, r.index = self, i
        return results[0] if single else tuple(results)

    def run_forward(self, tier, device, xp, *arrays):
        """This op's forward on `tier` (apply calls it; so does an op made of others, ops/fused.py)."""
        self.tier, self.device = tier, device
        return getattr(self, self.tiers[tier][0])(xp, *arrays)

    def run_backward(self, xp, *grads):
        """This op's backward, on the tier its forward ran on."""
        return getattr(self, self.tiers[self.tier][1])(xp, *grads)

    def forward(self, xp, *arrays):
        raise NotImplementedError(f"{type(self).__name__} defines no forward(self, xp, *arrays) (tier "
                                  f"{self.tier!r}, device {self.device!r}); see igc_np/autograd.py")

    def backward(self, xp, *grads):
        raise NotImplementedError(f"{type(self).__name__} defines no backward(self, xp, *grads) (tier "
                                  f"{self.tier!r}, device {self.device!r}); see igc_np/autograd.py")

    def release(self):
        """Drop inputs and saved arrays once backward has used them."""
        self.__dict__.clear()
        self.inputs = None

    # functions are graph nodes: identity semantics for hashing
    __hash__ = object.__hash__
