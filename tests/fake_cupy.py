"""A test-only CuPy stand-in: runs igc_np's device "cuda" code path on the CPU.

``cupy`` (the module object below, installed as ``sys.modules["cupy"]`` by :func:`install`) copies
the part of CuPy's API that igc_np uses. Its ``ndarray`` wraps a NumPy array but is *not* one, and
it enforces CuPy's rules that a NumPy-only code path breaks:

* no implicit conversion to NumPy: ``numpy.asarray(a)`` / ``__array__`` raise TypeError with
  CuPy's message; the way back is ``a.get()`` (or ``cupy.asnumpy``);
* no mixing with ``numpy.ndarray`` in operators, ufuncs, kernel arguments or assigned values
  (TypeError, as CuPy's "Unsupported type"); Python and NumPy scalars are fine;
* ``cupy.asarray(numpy_array)`` copies (device memory never aliases host memory);
* reductions and integer indexing return 0-d arrays, not NumPy scalars; ``float()``, ``int()``,
  ``bool()`` and ``.item()`` work on size-1 arrays (they synchronise on a GPU);
* NumPy functions applied to an array dispatch to the stand-in's function of the same name
  (``__array_function__`` / ``__array_ufunc__``) or raise TypeError when it has none;
* ``RawModule`` compiles the same source with the CPU emulator (igc_np.emu); a launch takes
  ``(grid tuple, block tuple, args tuple, shared_mem=int)``, arrays must be stand-in arrays and
  scalars Python or NumPy scalars (Python ints become int64 as in CuPy, so the emulator's check
  against the kernel signature catches a missing numpy.int32).
"""
import operator
import re
import sys
import time
import types

import numpy as np

cupy = types.ModuleType("cupy", "Test-only CuPy stand-in (tests/fake_cupy.py).")
_SCALARS = (int, float, bool, complex, np.generic)


def _host_error(what):
    return TypeError(f"Unsupported type {what!r}" + (": cupy does not take numpy.ndarray here (copy it "
                     "to the device with cupy.asarray)" if what is np.ndarray else ""))


def _operand(x):
    """An operand of a CuPy kernel (ufunc, operator, assigned value): a device array or a scalar."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _SCALARS):
        return x
    raise _host_error(type(x))


def _unwrap(x, strict=True):
    """Stand-in arrays (also inside tuples and lists) -> their NumPy data. strict: refuse
    numpy.ndarray (array arguments of module functions); else let it pass (shape or axes
    parameters, which CuPy reads as sequences)."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and strict:
        raise _host_error(type(x))
    if isinstance(x, (tuple, list)):
        return type(x)(_unwrap(v, strict) for v in x)
    return x


def _wrap(x):
    """NumPy result -> stand-in array (NumPy scalars become 0-d arrays, as CuPy returns them)."""
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if isinstance(x, np.ndarray):
        return ndarray._of(x)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return x


def _index(key):
    """Indices may be stand-in arrays, NumPy arrays or lists (CuPy copies the latter two)."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key._a if isinstance(key, ndarray) else key


class ndarray:
    """A device array: a NumPy array inside; every result is wrapped again."""

    __slots__ = ("_a",)
    __hash__ = None
    __array_priority__ = 100  # CuPy's

    def __init__(self, shape, dtype=float):
        self._a = np.empty(shape, dtype)

    @classmethod
    def _of(cls, a):
        out = cls.__new__(cls)
        out._a = a
        return out

    # ---- CuPy's refusal of implicit host conversion ----
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__":
            return NotImplemented
        if "out" in kwargs:
            kwargs["out"] = tuple(_operand(o) for o in kwargs["out"])
        return _wrap(ufunc(*(_operand(x) for x in inputs), **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        impl = getattr(cupy, func.__name__, None)
        return impl(*args, **kwargs) if callable(impl) else NotImplemented

    # ---- attributes ----
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    T = property(lambda self: ndarray._of(self._a.T))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return "fake_cupy." + repr(self._a)

    # CuPy converts through .get(), so NumPy's rules (and deprecation warnings) apply
    __float__ = lambda self: float(self._a)
    __int__ = lambda self: int(self._a)
    __complex__ = lambda self: complex(self._a)

    def __bool__(self):
        if self._a.size > 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous. "
                             "Use a.any() or a.all()")
        return bool(self._a.size) and bool(self._a.reshape(()))

    # ---- host transfer ----
    def get(self, stream=None, order="C", out=None):
        return np.array(self._a, order=order, copy=True)

    def item(self):
        if self._a.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    # ---- indexing (views stay views: a[...] += b writes through) ----
    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        self._a[_index(key)] = _operand(value)

    # ---- methods delegated to NumPy ----
    def _method(name):
        def method(self, *args, **kwargs):
            return _wrap(getattr(self._a, name)(*_unwrap(args, False), **_unwrap(kwargs, False)))
        method.__name__ = name
        return method

    for _name in ("reshape", "transpose", "astype", "copy", "sum", "mean", "max", "min", "argmax",
                  "argmin", "ravel", "fill", "any", "all", "var", "std", "prod", "clip", "cumsum",
                  "squeeze", "swapaxes", "flatten", "nonzero", "round"):
        locals()[_name] = _method(_name)
    del _name, _method


def _defers(other):
    """CuPy's _should_use_rop: leave the operator to `other` (NotImplemented) when it opts out of
    ufuncs, or has no __array_ufunc__ and a higher __array_priority__ than CuPy's 100."""
    if not hasattr(other, "__array_ufunc__"):
        return getattr(other, "__array_priority__", 0) > 100
    return other.__array_ufunc__ is None


def _operator(fn, reflected=False, inplace=False):
    def op(self, other):
        if not inplace and not isinstance(other, ndarray) and _defers(other):
            return NotImplemented
        other = _operand(other)  # numpy.ndarray, list, an igc_np Tensor...: TypeError, as in CuPy
        if inplace:
            fn(self._a, other)
            return self
        return _wrap(fn(other, self._a) if reflected else fn(self._a, other))
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lshift", "rshift"):
    _fn = getattr(operator, _name, None) or getattr(operator, _name + "_")  # and_, or_
    setattr(ndarray, f"__{_name}__", _operator(_fn))
    setattr(ndarray, f"__r{_name}__", _operator(_fn, reflected=True))
    setattr(ndarray, f"__i{_name}__", _operator(getattr(operator, f"i{_name}"), inplace=True))
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _operator(getattr(operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda f: lambda self: _wrap(f(self._a)))(getattr(operator, _name)))
ndarray.__module__ = "cupy._core.core"  # igc_np.backend.device_of looks at the class's module


# ---- module functions ----
def array(a, dtype=None, copy=True, order="K"):
    """From anything (NumPy arrays are always copied to the 'device')."""
    if isinstance(a, ndarray):
        if not copy and (dtype is None or a.dtype == dtype):
            return a
        return a.astype(a.dtype if dtype is None else dtype, order=order)
    return ndarray._of(np.array(a, dtype=dtype, order=order, copy=True))


def asarray(a, dtype=None, order=None):
    """As array(), but a stand-in array of the right dtype is returned as is."""
    return array(a, dtype, copy=False, order=order or "K")


def asnumpy(a, stream=None, order="C", out=None):
    return a.get(order=order) if isinstance(a, ndarray) else np.asarray(a, order=order)


def get_array_module(*args):
    return cupy if any(isinstance(a, ndarray) for a in args) else np


def _device_function(np_fn):
    """NumPy's function with stand-in arrays in and out; NumPy arrays refused."""
    def fn(*args, **kwargs):
        return _wrap(np_fn(*_unwrap(args), **_unwrap(kwargs)))
    fn.__name__ = fn.__qualname__ = np_fn.__name__
    return fn


_FUNCTIONS = ("ascontiguousarray empty empty_like zeros zeros_like ones ones_like full full_like arange "
              "exp log log1p expm1 sqrt square tanh abs sign negative add subtract multiply divide power "
              "maximum minimum where clip isfinite isnan broadcast_to expand_dims squeeze reshape ravel "
              "transpose concatenate stack matmul dot einsum copyto sum mean var std prod min max amin "
              "amax argmin argmax argsort argpartition sort any all count_nonzero")
for _name in _FUNCTIONS.split():
    setattr(cupy, _name, _device_function(getattr(np, _name)))
for _name in ("float16 float32 float64 int8 int16 int32 int64 uint8 uint32 bool_ dtype inf nan "
              "newaxis pi").split():
    setattr(cupy, _name, getattr(np, _name))
cupy.ndarray, cupy.asarray, cupy.array = ndarray, asarray, array
cupy.asnumpy, cupy.get_array_module = asnumpy, get_array_module


# ---- cupy.cuda: one visible device ----
class _Device:
    current = 0

    def __init__(self, device=None):
        self.id = _Device.current if device is None else int(device)
        if not 0 <= self.id < _runtime.getDeviceCount():
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id}")

    def use(self):
        _Device.current = self.id

    def __enter__(self):
        self._previous, _Device.current = _Device.current, self.id
        return self

    def __exit__(self, *exc):
        _Device.current = self._previous


class _Event:
    """cupy.cuda.Event: record() notes the (CPU) time; every launch has finished by then."""
    time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed_ms(start, stop):
    return (stop.time - start.time) * 1e3


_runtime = types.SimpleNamespace(getDeviceCount=lambda: 1,
                                 getDeviceProperties=lambda i: {"name": b"fake_cupy (CPU emulator)"})
cupy.cuda = types.SimpleNamespace(runtime=_runtime, Device=_Device, Event=_Event, get_elapsed_time=_elapsed_ms)


# ---- RawModule, run by the CPU emulator ----
class _RawKernel:
    launches = 0  # kernels launched through the stand-in, all modules together (tests read it)

    def __init__(self, emu_function):
        self._fn = emu_function

    def __call__(self, grid, block, args, *, shared_mem=0):
        for what, dims in (("grid", grid), ("block", block)):
            if not isinstance(dims, tuple) or not all(isinstance(d, (int, np.integer)) for d in dims):
                raise TypeError(f"{what} must be a tuple of ints, got {dims!r}")
        if not isinstance(args, (tuple, list)) or not isinstance(shared_mem, (int, np.integer)):
            raise TypeError(f"args must be a tuple and shared_mem an int, got {type(args)}, {shared_mem!r}")
        host = []
        for a in args:  # what CuPy's kernel launch accepts, converted as CuPy converts it
            if isinstance(a, (ndarray, np.generic)):
                host.append(_unwrap(a))
            elif isinstance(a, (bool, int, float)):  # bool before int: bool is an int
                host.append(np.bool_(a) if isinstance(a, bool) else np.int64(a) if isinstance(a, int)
                            else np.float64(a))
            else:
                raise _host_error(type(a))
        _RawKernel.launches += 1
        self._fn(grid, block, tuple(host), shared_mem=int(shared_mem))


class RawModule:
    """cupy.RawModule(code=..., options=..., name_expressions=...) compiled by igc_np.emu."""

    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if not isinstance(code, str) or not isinstance(options, tuple) \
                or not all(isinstance(o, str) for o in options):
            raise TypeError(f"RawModule needs code (str) and options (tuple of str), got "
                            f"{type(code)}, {options!r}")
        from igc_np.emu import EmuModule
        filename = "<RawModule>"
        m = re.match(r'#line 1 "([^"]*)"\n', code)
        if m:  # the emulator adds its own #line: strip ours, so its compile cache is shared
            filename, code = m.group(1), code[m.end():]
        self.options, self.name_expressions = options, list(name_expressions or ())
        self._module = EmuModule(code, self.name_expressions, filename)

    def get_function(self, name):
        return _RawKernel(self._module.get_function(name))


cupy.RawModule = RawModule


def launches():
    """How many kernels the stand-in's RawModules have launched so far."""
    return _RawKernel.launches


def install(monkeypatch):
    """Make ``import cupy`` return the stand-in and device "cuda" use it, for one test."""
    import igc_np.backend
    import igc_np.kernels.loader
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(igc_np.backend, "_cupy", None)
    monkeypatch.setattr(igc_np.kernels.loader, "_modules", {})  # no kernel module outlives the test
    monkeypatch.setattr(_Device, "current", 0)
    return cupy
