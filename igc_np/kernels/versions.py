"""Which version of each CUDA kernel the launchers run: a registry, a default, a switch.

Every kernel op of igc_np.kernels.ops (e.g. "conv2d_forward") can exist in several versions, a
ladder as in llm.c's dev/cuda: version 1 is the one-thread-per-output teaching kernel, each higher
version adds one idea. The registry maps op name -> {version: description}; the default of an op is
its fastest version that is validated (emulator tests against the NumPy reference).

Select a version, innermost first:

    with igc_np.kernels.use_version(conv2d_forward=1, conv2d_backward_weight=2):
        ...                                    # this thread, this block only
    IGC_NP_KERNELS="conv2d_forward=1,conv2d_backward_weight=2" python train.py   # the process
    (otherwise)                                # default(op)

Launchers ask ``selected(op)``. An unknown op or version raises ValueError naming the choices.
"""
import contextlib
import os
import threading

ENV = "IGC_NP_KERNELS"

_registry = {}   # op -> {version: description}
_defaults = {}   # op -> version
_local = threading.local()  # .stack: list of {op: version} from use_version, innermost last
_env_cache = (None, {})      # (the env string parsed, its {op: version})


def register(op, versions, default):
    """Declare the versions of `op`: {version (int): one-line description}, and its default."""
    versions = {int(v): str(d) for v, d in versions.items()}
    if int(default) not in versions:
        raise ValueError(f"register({op!r}): default version {default} is not one of {sorted(versions)}")
    _registry[op] = versions
    _defaults[op] = int(default)


def ops():
    """Names of the registered ops, sorted."""
    return sorted(_registry)


def versions(op):
    """{version: description} of `op`."""
    _check_op(op, "versions")
    return dict(_registry[op])


def default(op):
    _check_op(op, "default")
    return _defaults[op]


def _check_op(op, where):
    if op not in _registry:
        raise ValueError(f"{where}: unknown kernel op {op!r}; registered ops are {ops()}")


def _check(op, version, where):
    _check_op(op, where)
    try:
        v = int(version)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: version of {op} must be an int, got {version!r}") from None
    if v not in _registry[op]:
        raise ValueError(f"{where}: {op} has versions {sorted(_registry[op])}, not {v}")
    return v


def _from_env():
    """{op: version} parsed from $IGC_NP_KERNELS ("op=version,op=version"), cached per value."""
    global _env_cache
    text = os.environ.get(ENV, "")
    if text != _env_cache[0]:
        chosen = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            op, sep, v = item.partition("=")
            if not sep:
                raise ValueError(f"${ENV}: {item!r} must be op=version, e.g. conv2d_forward=1")
            from .ladder import LADDERS
            if op.strip() in LADDERS:  # an op of kernels/ladder.py, which reads it
                continue
            chosen[op.strip()] = _check(op.strip(), v.strip(), f"${ENV}")
        _env_cache = (text, chosen)
    return _env_cache[1]


def selected(op):
    """The version of `op` to run now: use_version's innermost choice, else $IGC_NP_KERNELS, else default."""
    _check_op(op, "selected")
    for chosen in reversed(getattr(_local, "stack", [])):
        if op in chosen:
            return chosen[op]
    return _from_env().get(op, _defaults[op])


@contextlib.contextmanager
def use_version(**chosen):
    """Run the block with the given kernel versions, e.g. ``use_version(conv2d_forward=1)``."""
    chosen = {op: _check(op, v, "use_version") for op, v in chosen.items()}
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(chosen)
    try:
        yield
    finally:
        stack.pop()
