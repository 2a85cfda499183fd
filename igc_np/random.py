"""The default random generator of igc_np, and ``manual_seed``.

It draws the initial weights of every layer built without an explicit ``rng=`` (Conv2d, Linear,
IGCConv's two convs) and the masks of dropout called without ``rng=``. It starts seeded with 0, so
two fresh processes build identical networks. It does not cover data shuffling or augmentation
(the trainer seeds those from --seed), nor NumPy's global ``np.random`` state.

It is one generator for the process, shared by all threads (as PyTorch's default generator): two
threads that build layers or draw dropout masks at the same time interleave their draws. To
train models side by side in threads reproducibly, give each its own ``rng=``.
"""
import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed):
    """Restart the default generator from `seed` (an int >= 0); returns the new generator."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: seed must be an int >= 0, got {seed!r}")
    # reseed in place: modules that hold the generator (nn._default_rng) see the new seed;
    # the result draws exactly as np.random.default_rng(seed)
    _generator.bit_generator.state = np.random.PCG64(int(seed)).state
    return _generator


def default_generator():
    """The numpy Generator used when a layer or dropout gets no rng (see manual_seed)."""
    return _generator
