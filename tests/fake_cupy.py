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
  against the kernel signature catches a missing numpy.int32); a launch a GPU refuses (threads
  over the kernel's __launch_bounds__, grid or block dimensions, shared memory over 48 KB without
  the opt-in ``max_dynamic_shared_size_bytes``) is refused by the emulator with the limit named.

It also counts, in :data:`counters` (read with :func:`counts`, reset with :func:`reset_counts`):

* ``kernels``: launches of RawModule functions (our .cu kernels);
* ``array_ops``: the kernels CuPy itself would launch for array operations: one per operator,
  ufunc, elementwise function, reduction (``sum``, ``mean``, ``max``...; ``var``/``std`` two),
  fill (``zeros``, ``ones``, ``full``, ``fill``), copy (``copy``, ``astype``, a non-view
  ``reshape``/``ascontiguousarray``, advanced indexing, ``__setitem__``); none for allocations
  (``empty``) and views (basic indexing, ``transpose``, ``broadcast_to``...);
* ``syncs``: device->host synchronisations: ``.get()``, ``asnumpy``, ``float()``/``int()``/
  ``bool()``/``.item()``/``.tolist()``/``repr`` of a device array, boolean-mask indexing,
  ``nonzero`` and one-argument ``where``; :data:`sync_sites` keeps the ``file:line`` of the
  igc_np (or test) code that asked for each, so a failing "no sync" test names the culprit;
* ``to_device``: host->device copies (``cupy.asarray(numpy_array)``).

What the stand-in can NOT show, so a pass here is no proof for a real GPU:

* asynchrony: every launch has finished when it returns, so a missing synchronisation before
  reading a timer or a host buffer, or a race between streams, goes unseen (events record CPU time);
* the GPU's arithmetic: g++ compiles the kernels (no FMA contraction unless the host does it,
  no ``--use_fast_math``, no TF32), so float32 results can differ in the last bits from NVRTC's;
* compilation by NVRTC: a missing CUDA header, an NVRTC-only error or warning, register or
  shared-memory limits (tests/test_kernels_nvrtc.py and kernel_report cover the compile);
* memory: no device memory limit, no alignment faults beyond the host's (out-of-bounds accesses,
  uninitialised shared reads and shared-memory races only with IGC_NP_EMU_SANITIZE=1, see
  docs/emulator.md); the cost of an operation (a counted launch is a launch, whatever its size);
* CuPy's exact launch count for composite functions (``einsum``, ``argsort``, ``concatenate``
  are counted as one launch each) and its memory pool.
"""
import operator
import os
import re
import sys
import time
import traceback
import types

import numpy as np

cupy = types.ModuleType("cupy", "Test-only CuPy stand-in (tests/fake_cupy.py).")
_SCALARS = (int, float, bool, complex, np.generic)

# What the stand-in has seen since the last reset_counts() (see the module docstring).
counters = {"kernels": 0, "array_ops": 0, "syncs": 0, "to_device": 0}
sync_sites = []  # (what, "file:line") of each sync
_HERE = os.path.abspath(__file__)


def _launch(n=1):
    counters["array_ops"] += n


def _sync(what):
    """Note a device->host synchronisation and the first caller frame outside this file."""
    counters["syncs"] += 1
    for frame in reversed(traceback.extract_stack()[:-1]):
        if os.path.abspath(frame.filename) != _HERE:
            sync_sites.append((what, f"{frame.filename}:{frame.lineno}"))
            break


def counts():
    """A copy of the counters, with ``launches`` = kernels + array_ops."""
    out = dict(counters)
    out["launches"] = out["kernels"] + out["array_ops"]
    return out


def reset_counts():
    for k in counters:
        counters[k] = 0
    sync_sites.clear()


def _copies(result, source):
    """1 when `result` is a new buffer (a copy kernel ran), 0 for a view of `source`."""
    return 0 if np.may_share_memory(result, source) else 1


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
        _launch()
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
    # CuPy's MemoryPointer: .ptr is the device address kernels read (here: the host buffer's)
    data = property(lambda self: types.SimpleNamespace(ptr=self._a.ctypes.data))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        _sync("repr")
        return "fake_cupy." + repr(self._a)

    # CuPy converts through .get(), so NumPy's rules (and deprecation warnings) apply
    def __float__(self):
        _sync("float()")
        return float(self._a)

    def __int__(self):
        _sync("int()")
        return int(self._a)

    def __complex__(self):
        _sync("complex()")
        return complex(self._a)

    def __bool__(self):
        _sync("bool()")
        if self._a.size > 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous. "
                             "Use a.any() or a.all()")
        return bool(self._a.size) and bool(self._a.reshape(()))

    # ---- host transfer ----
    def get(self, stream=None, order="C", out=None):
        _sync(".get()")
        return np.array(self._a, order=order, copy=True)

    def item(self):
        _sync(".item()")
        if self._a.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self._a.item()

    def tolist(self):
        _sync(".tolist()")
        return self._a.tolist()

    # ---- indexing (views stay views: a[...] += b writes through) ----
    def __getitem__(self, key):
        key = _index(key)
        keys = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, np.ndarray) and k.dtype == np.bool_ for k in keys):
            _sync("boolean-mask indexing")  # the result's size is known only on the device
        out = self._a[key]
        if isinstance(out, np.ndarray):
            _launch(_copies(out, self._a))  # advanced indexing gathers with a kernel
        return _wrap(out)

    def __setitem__(self, key, value):
        key = _index(key)
        keys = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, np.ndarray) and k.dtype == np.bool_ for k in keys):
            _sync("boolean-mask assignment")
        _launch()
        self._a[key] = _operand(value)

    # ---- methods delegated to NumPy ----
    def _method(name, cost):
        def method(self, *args, **kwargs):
            if cost == "sync":
                _sync(f".{name}()")
            out = getattr(self._a, name)(*_unwrap(args, False), **_unwrap(kwargs, False))
            if cost == "view":  # a view, or a copy kernel when the layout needs one
                _launch(_copies(out, self._a) if isinstance(out, np.ndarray) else 0)
            elif cost == "sync":
                _launch()
            else:
                _launch(cost)
            return _wrap(out)
        method.__name__ = name
        return method

    for _name in ("reshape", "transpose", "ravel", "squeeze", "swapaxes"):
        locals()[_name] = _method(_name, "view")
    for _name in ("astype", "copy", "sum", "mean", "max", "min", "argmax", "argmin", "fill", "any", "all",
                  "prod", "clip", "cumsum", "flatten", "round"):
        locals()[_name] = _method(_name, 1)
    for _name in ("var", "std"):  # CuPy: the mean, then the reduction of squared deviations
        locals()[_name] = _method(_name, 2)
    locals()["nonzero"] = _method("nonzero", "sync")
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
        _launch()
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
    setattr(ndarray, f"__{_name}__", (lambda f: lambda self: (_launch(), _wrap(f(self._a)))[1])(getattr(operator, _name)))
ndarray.__module__ = "cupy._core.core"  # igc_np.backend.device_of looks at the class's module


# ---- module functions ----
def array(a, dtype=None, copy=True, order="K"):
    """From anything (NumPy arrays are always copied to the 'device')."""
    if isinstance(a, ndarray):
        if not copy and (dtype is None or a.dtype == dtype):
            return a
        _launch()
        return ndarray._of(a._a.astype(a.dtype if dtype is None else dtype, order=order))
    counters["to_device"] += 1
    return ndarray._of(np.array(a, dtype=dtype, order=order, copy=True))


def asarray(a, dtype=None, order=None):
    """As array(), but a stand-in array of the right dtype is returned as is."""
    return array(a, dtype, copy=False, order=order or "K")


def asnumpy(a, stream=None, order="C", out=None):
    return a.get(order=order) if isinstance(a, ndarray) else np.asarray(a, order=order)  # .get() counts


def get_array_module(*args):
    return cupy if any(isinstance(a, ndarray) for a in args) else np


# launches of the module functions that are not one kernel each ("view": 0 unless it copies)
_COST = {"empty": 0, "empty_like": 0, "broadcast_to": "view", "expand_dims": "view", "squeeze": "view",
         "reshape": "view", "ravel": "view", "transpose": "view", "ascontiguousarray": "view",
         "var": 2, "std": 2}


def _device_function(np_fn):
    """NumPy's function with stand-in arrays in and out; NumPy arrays refused; launches counted."""
    name = np_fn.__name__
    cost = _COST.get(name, 1)

    def fn(*args, **kwargs):
        if name == "where" and len(args) + len(kwargs) == 1:
            _sync("where(condition)")  # nonzero: the output size comes back to the host
        out = np_fn(*_unwrap(args), **_unwrap(kwargs))
        if cost == "view":
            src = _unwrap(args[0]) if args and isinstance(args[0], ndarray) else None
            _launch(0 if src is None or not isinstance(out, np.ndarray) else _copies(out, src))
        else:
            _launch(cost)
        return _wrap(out)
    fn.__name__ = fn.__qualname__ = name
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
# The signatures are CuPy 14.2's (cupy/_core/raw.pyx, as its compiled docstrings state them):
#   RawModule(str code=None, *, str path=None, tuple options=(), str backend='nvrtc',
#             bool translate_cucomplex=False, bool enable_cooperative_groups=False,
#             name_expressions=None, jitify=None)
#   RawModule.get_function(self, str name) -> RawKernel
#   RawKernel.__call__(self, grid, block, args, *, shared_mem=0)
# and a launch converts its arguments as cupy/cuda/function.pyx _pointer() does: a device array
# passes its pointer, a NumPy scalar its bytes, a Python int (bool included: bool is an int)
# becomes numpy.int64, a float numpy.float64, a complex numpy.complex128; anything else is
# "Unsupported type". Grid and block must be tuples (Function.__call__(self, tuple grid, ...)).
# tests/test_cuda_standin.py compares these with the real package when it is importable.
class _RawKernel:
    """What RawModule.get_function returns: cupy.RawKernel's launch and attributes."""

    def __init__(self, emu_function):
        self._fn = emu_function

    # the attributes a launcher reads to plan a launch, as CuPy's RawKernel names them
    max_threads_per_block = property(lambda self: self._fn.max_threads_per_block)
    shared_size_bytes = property(lambda self: self._fn.shared_size_bytes)

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._fn.max_dynamic_shared_size_bytes

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        self._fn.max_dynamic_shared_size_bytes = value  # refused over 227 KB, as the driver does

    def __call__(self, grid, block, args, *, shared_mem=0):
        for what, dims in (("grid", grid), ("block", block)):
            if not isinstance(dims, tuple) or not all(isinstance(d, (int, np.integer)) for d in dims):
                raise TypeError(f"Argument '{what}' has incorrect type (expected tuple of ints, got {dims!r})")
        if not isinstance(args, (tuple, list)) or not isinstance(shared_mem, (int, np.integer)):
            raise TypeError(f"args must be a tuple and shared_mem an int, got {type(args)}, {shared_mem!r}")
        host = []
        for a in args:  # what CuPy's kernel launch accepts, converted as CuPy converts it
            if isinstance(a, (ndarray, np.generic)):
                host.append(_unwrap(a))
            elif isinstance(a, int):  # bool too: CuPy tests isinstance(x, int) first
                host.append(np.int64(a))
            elif isinstance(a, float):
                host.append(np.float64(a))
            elif isinstance(a, complex):
                host.append(np.complex128(a))
            else:
                raise _host_error(type(a))
        counters["kernels"] += 1
        self._fn(grid, block, tuple(host), shared_mem=int(shared_mem))


class RawModule:
    """cupy.RawModule(code=..., options=..., name_expressions=...) compiled by igc_np.emu."""

    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=None):
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
    """How many kernels the stand-in's RawModules have launched so far (our kernels only)."""
    return counters["kernels"]


def install(monkeypatch):
    """Make ``import cupy`` return the stand-in and device "cuda" use it, for one test."""
    import igc_np.backend
    import igc_np.kernels.loader
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(igc_np.backend, "_cupy", None)
    monkeypatch.setattr(igc_np.backend, "_cuda_status", None)  # probed again, on the stand-in
    monkeypatch.setattr(igc_np.kernels.loader, "_modules", {})  # no kernel module outlives the test
    monkeypatch.setattr(_Device, "current", 0)
    return cupy
