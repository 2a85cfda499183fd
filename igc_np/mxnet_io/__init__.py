"""The old path of ``igc_np.app.mxnet_io`` (MXNet .params and RecordIO files): its names, re-exported.

New code imports ``igc_np.app.mxnet_io``; this module stays so that existing imports keep working.
(A package, not ``igc_np/mxnet_io.py``: so git sees ``mxnet_io.py`` moved to ``app/`` and merges
edits made at the old path into the new file.)
"""
from ..app.mxnet_io import (DTYPES, FLAGS, IRHEADER, LIST_MAGIC, MAX_NDIM, MXNetFormatError,
                            RECORD_MAGIC, RecordIO, V1_MAGIC, V2_MAGIC, V3_MAGIC, load_checkpoint,
                            load_mxnet_checkpoint,
                            load_params, load_released, read_ndarray_list, read_params,
                            save_params, unpack_image_record, write_ndarray_list)  # noqa: F401
