"""Which version of each CUDA kernel the launchers run: one registry, one default per op, one switch.

Every kernel op exists in one or more versions, a ladder as in llm.c's dev/cuda: version 1 is the
naive teaching kernel (one thread per output), each higher version adds one idea, and every
version is kept and validated (emulator tests against the reference tier, igc_np/ops/reference.py).
The registry maps op name -> {version (int): description}. The ops:

    conv2d_forward, conv2d_backward_data, conv2d_backward_weight   1, 2, 3   (kernels/conv.py)
    permute_channels                                                0, 1, 2   (kernels/permutation.py)
    interleaved_secondary  (its forward, backward-data and backward-weight)  1, 2   (kernels/interleaved_secondary.py)
    batch_norm             (its forward and backward)                1, 2   (kernels/batch_norm.py)
    sgd                                                              1, 2   (kernels/sgd.py)
    adam                   (Adam, AdamW, AMSGrad)                    1, 2   (kernels/adam.py)

Version 0, where an op has one, is not a kernel but a rule that picks one of the op's kernels by
shape (permute_channels: 2 when H*W >= 32, else 1); ``kernels(op)`` lists the real kernels only.
The launcher modules register their ops when igc_np.kernels is imported (its __init__ imports
them all), so the switch knows every op before the first launch.

Select a version, strongest first:

    conv.conv2d_forward(x, W, ..., version=1)                # one call
    with igc_np.kernels.use_version(conv2d_forward=1, sgd=1):
        ...                                                 # this thread, this block; nests
    IGC_NP_KERNELS="conv2d_forward=1,sgd=1" python train.py  # the process (re-read at each launch)
    (otherwise)                                             # default(op)

Launchers ask ``resolve(op, version)``. An unknown op, a version the op lacks or a version that is
not an int raises ValueError naming the op and the choices. $IGC_NP_KERNELS is checked when
igc_np.kernels is imported (``check_environment``), on every device, the CPU too: a misspelt
switch is an error at start, not a silent no-op on the CPU or a failure deep inside a run.
"""
import contextlib
import os
import threading

ENV = "IGC_NP_KERNELS"

_registry = {}   # op -> {version: description}
_defaults = {}   # op -> version
_local = threading.local()  # .stack: list of {op: version} from use_version, innermost last
_env_cache = (None, {})      # (the env string parsed, its {op: version}); selected() runs at every launch


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


def kernels(op):
    """The versions of `op` that are kernels (>= 1; 0 is a shape rule), in ladder order."""
    _check_op(op, "kernels")
    return [v for v in sorted(_registry[op]) if v >= 1]


def default(op):
    _check_op(op, "default")
    return _defaults[op]


def choices():
    """Every op with its versions, as a switch would name them: 'conv2d_forward=1|2|3, ...'."""
    return ", ".join(f"{op}={'|'.join(str(v) for v in sorted(_registry[op]))}" for op in ops())


def _check_op(op, where):
    if op not in _registry:
        raise ValueError(f"{where}: unknown kernel op {op!r}; the ops and their versions are {choices()}")


def _check(op, version, where):
    """`version` of `op` as an int, or ValueError from `where` naming the op and its versions."""
    _check_op(op, where)
    choices = sorted(_registry[op])
    try:
        v = int(version)
    except (TypeError, ValueError):
        hint = ""
        if isinstance(version, str) and version[:1] == "v" and version[1:].isdigit():
            hint = f" (the old name {version!r} is version {int(version[1:])})"
        raise ValueError(f"{where}: version of {op} must be an int, one of {choices}, got {version!r}{hint}") from None
    if v not in _registry[op] or v != version and not isinstance(version, str):  # 2.5 is not 2
        raise ValueError(f"{where}: {op} has versions {choices}, not {version} "
                         f"({op}: {'; '.join(f'{k} = {d}' for k, d in sorted(_registry[op].items()))})")
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
                raise ValueError(f"${ENV}: {item!r} must be op=version, e.g. conv2d_forward=1 or sgd=1")
            chosen[op.strip()] = _check(op.strip(), v.strip(), f"${ENV}")
        _env_cache = (text, chosen)
    return _env_cache[1]


def check_environment():
    """Parse $IGC_NP_KERNELS now: ValueError naming the bad item and the valid ops and versions.
    igc_np.kernels calls it on import, once every launcher module has registered its ops."""
    _from_env()


def selected(op):
    """The version of `op` to run now: use_version's innermost choice, else $IGC_NP_KERNELS, else default."""
    _check_op(op, "selected")
    for chosen in reversed(getattr(_local, "stack", [])):
        if op in chosen:
            return chosen[op]
    return _from_env().get(op, _defaults[op])


def resolve(op, version=None, where=None):
    """A launcher's version of `op`: its `version=` argument checked, or selected(op) when None.
    `where` (default `op`) names the launcher in the error, e.g. "sgd_step" for op "sgd"."""
    return selected(op) if version is None else _check(op, version, where or op)


@contextlib.contextmanager
def use_version(**chosen):
    """Run the block with the given kernel versions, e.g. ``use_version(conv2d_forward=1, sgd=1)``."""
    chosen = {op: _check(op, v, "use_version") for op, v in chosen.items()}
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(chosen)
    try:
        yield
    finally:
        stack.pop()
