"""The old path of ``igc_np.app.mxnet_graph`` (MXNet -symbol.json graphs): its names, re-exported.

New code imports ``igc_np.app.mxnet_graph``; this module stays so that existing imports keep working.
(A package, not ``igc_np/mxnet_graph.py``: so git sees ``mxnet_graph.py`` moved to ``app/`` and merges
edits made at the old path into the new file.)
"""
from ..app.mxnet_graph import (GraphCounts, UnknownGraphError, graph_counts, identify_graph,
                               load_graph, node_attrs, num_classes_of_graph)  # noqa: F401
