"""The old path of ``igc_np.app.distributed`` (data parallel): its names, re-exported.

New code imports ``igc_np.app.distributed``; this module stays so that existing imports keep working.
(A package, not ``igc_np/distributed.py``: so git sees ``distributed.py`` moved to ``app/`` and merges
edits made at the old path into the new file.)
"""
from ..app.distributed import (Communicator, DistError, ENV_LOCAL_RANK, ENV_NCCL_ID, ENV_RANK,
                               ENV_SIZE, FORWARDED_SIGNALS, MPI, NCCL, SingleProcess, StepResult,
                               dp_step, evaluate_ranks, init, launched_by_mpi, ordered_sum, reduce_flag,
                               reduce_sums, root_first, set_threads, should_spawn, slice_of, spawn,
                               threads_per_rank)  # noqa: F401

evaluate = evaluate_ranks  # the old name, kept for code that imports it from this old path
