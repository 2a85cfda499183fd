"""Mean squared error, a composition of the engine's ops (its gradient comes from them).

    mse_loss(x, t) = mean((x - t)^2)      (reduction 'mean'; 'sum' and 'none' as PyTorch)
"""
from ..autograd import as_tensor

REDUCTIONS = ("mean", "sum", "none")


def mse_loss(input, target, reduction="mean"):
    """input and target of the same shape (target a Tensor, array or number) -> scalar Tensor
    ('mean', 'sum') or the elementwise squares ('none'). Gradients flow to both if they need one.

    Shapes must match exactly: (N, 1) against (N,) would broadcast to (N, N) and silently
    compute something else, so it is an error here.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"mse_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    target = as_tensor(target, input)
    if target.shape != input.shape and target.ndim > 0:
        raise ValueError(f"mse_loss: input shape {input.shape} != target shape {target.shape}; "
                         "reshape one of them (broadcasting here is almost always a bug)")
    squares = (input - target) ** 2
    if reduction == "none":
        return squares
    return squares.mean() if reduction == "mean" else squares.sum()
