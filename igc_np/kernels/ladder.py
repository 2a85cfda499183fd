"""Which version of each kernel the launchers run: a small registry (op name -> versions).

Each op of ``LADDERS`` has versions "v1", "v2", ... (naive -> fast, all kept, all validated in the
emulator by tests/test_kernels_fused.py); the launchers ask :func:`selected` which one to run.

    from igc_np.kernels import ladder
    ladder.versions("interleaved_secondary")        # ('v1', 'v2')
    with ladder.use("interleaved_secondary", "v1"):  # one block of code
        ...
    ladder.set_version("sgd", "v1")                  # the rest of the process
    IGC_NP_KERNELS="sgd=v1,permute_channels=v2" python train.py   # from the shell

The default is the version expected to be fastest (the tiled / coalesced / multi-tensor one); it
was chosen from the kernels' design, not yet from a GPU measurement: benchmarks/bench_gpu.py times
every version so that the defaults can be set from numbers. "auto" (permute_channels) lets the
launcher choose by shape.

This is the cuda branch's stand-in for the generic switch ``igc_np/kernels/versions.py`` of the
primary-conv ladder; when that lands, these entries move there.
"""
import contextlib
import functools
import os

# op -> (versions, default, what each version is)
LADDERS = {
    "permute_channels": (("v1", "v2", "auto"), "auto",
                         "v1 one thread per element; v2 one block per (n, channel) row, coalesced; "
                         "auto: v2 when H*W >= 32, else v1"),
    "interleaved_secondary": (("v1", "v2"), "v2",
                              "v1 one thread per output, one block per weight element; v2 tiled grouped "
                              "GEMM, two-pass deterministic backward-weight"),
    "sgd": (("v1", "v2"), "v2", "v1 one launch per parameter; v2 one multi-tensor launch per dtype"),
    "batch_norm": (("v1", "v2"), "v2", "v1 one block per channel for the statistics and the backward sums; v2 "
                   "P blocks per channel, partials combined in order by the per-row apply kernels"),
}

_chosen = {}


def versions(op):
    """The versions of `op`, in ladder order."""
    return _entry(op)[0]


def default(op):
    return _entry(op)[1]


def _entry(op):
    if op not in LADDERS:
        raise KeyError(f"unknown kernel op {op!r}; ops with versions: {', '.join(LADDERS)}")
    return LADDERS[op]


def _from_env():
    return _parse(os.environ.get("IGC_NP_KERNELS", ""))


@functools.lru_cache(maxsize=8)  # selected() runs at every launch: parse each setting once
def _parse(spec):
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        op, sep, version = item.partition("=")
        if not sep:
            raise ValueError(f"IGC_NP_KERNELS: {item!r} must be op=version (e.g. sgd=v1), got {spec!r}")
        if op.strip() not in LADDERS:  # a primary-conv op: kernels/versions.py reads it
            continue
        out[op.strip()] = _check(op.strip(), version.strip(), "IGC_NP_KERNELS")
    return out


def _check(op, version, where):
    known = versions(op)
    if version not in known:
        raise ValueError(f"{where}: {op} has versions {', '.join(known)}, not {version!r}")
    return version


def selected(op):
    """The version the launchers run for `op`: use()/set_version(), else IGC_NP_KERNELS, else the default."""
    if op in _chosen:
        return _chosen[op]
    return _from_env().get(op) or default(op)


def set_version(op, version):
    """Run `version` of `op` from now on (None: back to IGC_NP_KERNELS / the default)."""
    if version is None:
        _chosen.pop(op, None)
    else:
        _chosen[op] = _check(op, version, "set_version")


@contextlib.contextmanager
def use(op, version):
    """Run `version` of `op` inside the with block."""
    previous = _chosen.get(op)
    set_version(op, version)
    try:
        yield
    finally:
        set_version(op, previous)
