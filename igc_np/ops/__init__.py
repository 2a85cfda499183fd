"""The differentiable ops, one family per file; `igc_np.functional` is their public face.

Read ``reference.py`` first: the shortest correct NumPy version of every op, forward and backward
(the reference tier, the specification). Each op file (conv.py, permutation.py, interleaved.py,
normalization.py, activation.py, pooling.py, linear.py, loss.py) holds its Function, whose
``tiers`` table names the method of each tier (see autograd.py), and the F.* function that
validates the arguments once. docs/add_an_op.md is the recipe for a new op.
The fast CPU tier's conv engine is ``cpu_conv.py``; ``layout.py`` is the (C, H, W, N) memory
contract; ``parallel.py`` the CPU threads; ``checks.py`` the shared argument helpers.
"""
