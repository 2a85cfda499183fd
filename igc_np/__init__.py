"""igc_np: Interleaved Group Convolutions (Zhang et al., ICCV 2017) from scratch.

    import igc_np as ig
    from igc_np import functional as F
    x = ig.Tensor(array, requires_grad=True)
    loss = F.cross_entropy(model(x), labels); loss.backward()
"""
from .startup import guard as _guard

with _guard():  # a bad $IGC_NP_THREADS / $IGC_NP_KERNELS: one line and exit 2 in a command (startup.py)
    from . import ops  # noqa: F401
    from .autograd import Function, Tensor, no_grad, is_grad_enabled
    from .ops import math as _math  # noqa: F401  (attaches +, *, reshape, ... to Tensor)
    from .ops import indexing as _indexing  # noqa: F401  (attaches x[key] to Tensor)
    from .random import manual_seed
    from . import functional, nn, optim
    from .gradcheck import gradcheck
    from .backend import cuda_available
    from .serialization import save, load  # .npz state dicts: ig.save(model.state_dict(), "m.npz")

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "no_grad", "is_grad_enabled", "functional", "nn", "optim",
           "gradcheck", "cuda_available", "save", "load"]


_LAZY = ("nets", "data", "mxnet_io", "imagenet", "distributed", "training", "serialization", "app",
         "igc", "mxnet_graph", "backend", "kernels")


def __getattr__(name):
    # these import lazily: they are larger and the engine does not need them
    if name in _LAZY:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'igc_np' has no attribute {name!r}")


__all__ += ["manual_seed"]  # the default generator of layer initialisation and dropout (random.py)
