"""The old path of ``igc_np.app.imagenet`` (ImageNet): its names, re-exported.

New code imports ``igc_np.app.imagenet``; this module stays so that existing imports keep working.
(A package, not ``igc_np/imagenet.py``: so git sees ``imagenet.py`` moved to ``app/`` and merges
edits made at the old path into the new file.)
"""
from ..app.imagenet import (FILL_VALUE, FolderSamples, IMAGENET_MEAN, IMAGENET_STD,
                            IMAGE_EXTENSIONS, ImageError, ImageNet, ImageNetNotFoundError,
                            ImageNetSource, ImageNetTrainingData, RECORD_NAMES, RecordSamples,
                            TrainAugment, ValTransform, decode, default_workers, evaluate_imagenet,
                            hls_jitter, imagenet_dir, load_imagenet, main, normalize, open_image,
                            warp)  # noqa: F401

evaluate = evaluate_imagenet  # the old name, kept for code that imports it from this old path
