"""The old ``igc_np.training``, split by concern into ``igc_np/app/`` (and the step into the core).

New code imports from where each name lives: ``igc_np.step.train_step``,
``igc_np.app.checkpoint``, ``.run_folder``, ``.signals``, ``.progress``, ``.evaluation``,
``.options``, ``.run`` and ``.cli``. This module re-exports their names so that existing
imports keep working.
"""
from .app.checkpoint import (FORMAT, Checkpoint, CheckpointError, checkpoint_path,
                             load_checkpoint, nonfinite_entries, restore, save_checkpoint)  # noqa: F401
from .app.cli import run_command  # noqa: F401
from .app.evaluation import (PRECISE_BN_BATCHES, Metrics, batch_norms, evaluate, evaluate_batches,
                             precise_bn_statistics, stale_statistics, test_pass)  # noqa: F401
from .app.options import MAX_WIDTH, NETWORKS, OptionError, check_options  # noqa: F401
from .app.progress import JsonLinesLog, plot_curves  # noqa: F401
from .app.datasets import TrainingData  # noqa: F401
from .app.run import Run  # noqa: F401
from .app.run_folder import (LOCK_NAME, RUN_FILES, RunFolderError, RunLock, check_run_folder,
                             check_writable, checkpoint_epoch, earlier_run_files)  # noqa: F401
from .app.signals import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE,
                          GracefulInterrupt, Stop)  # noqa: F401
from .step import train_step  # noqa: F401
