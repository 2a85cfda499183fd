"""The old path of ``igc_np.app.data`` (CIFAR-10/100, SVHN and digits): its names, re-exported.

New code imports ``igc_np.app.data``; this module stays so that existing imports keep working.
(A package, not ``igc_np/data.py``: so git sees ``data.py`` moved to ``app/`` and merges
edits made at the old path into the new file.)
"""
from ..app.data import (CIFAR, DATASETS, DEFAULT_DATA_DIR, DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE,
                        DOWNLOAD_DEADLINE_S, DOWNLOAD_MIN_RATE, DOWNLOAD_RATE_WINDOW_S,
                        DOWNLOAD_READ_TIMEOUT_S, Dataset, DatasetError, DatasetNotFoundError,
                        IMAGE_BYTES, SVHN, iterate_batches, slice_of)  # noqa: F401
from ..app.datasets import load_dataset, main  # noqa: F401  (every data set, ImageNet's too)
