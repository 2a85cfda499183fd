"""Read the released MXNet symbol graphs (IGC_SPEC.md section 3) and count what they imply.

An MXNet symbol JSON is ``{"nodes": [...], "arg_nodes": [...], "heads": [...]}``; every node has
``op``, ``name``, ``inputs`` (a list of ``[node_index, output_index, ...]``) and its attributes
under ``param`` (MXNet < 0.9), ``attr`` or ``attrs`` (later versions), all values as strings:
``{"kernel": "(3,3)", "num_group": "4", ...}``. Nodes with ``op == "null"`` are variables: the
input ``data``, the label, and the learned arrays (``g0_weight``, ``g0_bn_gamma``, ...).

``graph_counts`` walks the nodes in order (they are stored topologically sorted), infers every
feature-map shape (C, H, W) from the input size, and returns the shape of every learned array,
their total, and the multiply-accumulates (MACs) of the convolutions and the fully connected layer.
That is what ``igc_np.nets.imagenet_model`` is checked against, parameter for parameter.
"""
import json
import math
from dataclasses import dataclass, field

# ops that keep the shape of their (first) input and own no learned array
_SHAPE_PRESERVING = {"Activation", "Reorder", "_Plus", "elemwise_add", "_plus", "Dropout",
                     "LeakyReLU", "SoftmaxOutput", "softmax", "Softmax", "identity", "_copy"}


@dataclass
class GraphCounts:
    """What a graph implies. param_shapes: learned array name -> shape, in graph order;
    layer_shapes: every non-variable node's name -> its output shape (C, H, W) or (F,)."""
    params: int
    macs: int
    param_shapes: dict = field(default_factory=dict)
    layer_shapes: dict = field(default_factory=dict)
    output_shape: tuple = ()


def load_graph(path):
    """The list of nodes of an MXNet symbol JSON file."""
    with open(path) as f:
        graph = json.load(f)
    if "nodes" not in graph:
        raise ValueError(f"{path}: not an MXNet symbol file (no 'nodes')")
    return graph["nodes"]


def node_attrs(node):
    """A node's attributes, whichever key this MXNet version stored them under."""
    for key in ("attrs", "attr", "param"):
        if node.get(key):
            return node[key]
    return {}


def _ints(text):
    """'(3,3)' -> (3, 3); '4' -> (4,)."""
    return tuple(int(v) for v in str(text).strip("()[] ").split(",") if v.strip())


def _is_true(text):
    return str(text).lower() in ("true", "1")


def graph_counts(json_path, input_hw=224, in_channels=3):
    """Parameter shapes, #params and MACs implied by an MXNet symbol file for one input image.

    Counted like the rest of igc_np: conv weights (num_filter * C_in/num_group * kh * kw), BN gamma
    and beta, FC weight and bias; MACs of convs (weight size * Ho * Wo) and FC (weight size).
    """
    nodes = load_graph(json_path)
    shapes = {}          # node index -> feature-map shape (C, H, W) or (F,)
    param_shapes = {}
    macs = 0
    for i, node in enumerate(nodes):
        op, a = node["op"], node_attrs(node)
        inputs = [src for src, *_ in node["inputs"]]
        x = shapes.get(inputs[0]) if inputs else None
        if op == "null":
            if node["name"] == "data":
                shapes[i] = (in_channels, input_hw, input_hw)
            continue
        if op == "Convolution":
            C, H, W = x
            (kh, kw), F, G = _ints(a["kernel"]), int(a["num_filter"]), int(a.get("num_group", 1))
            sh, sw = _ints(a.get("stride", "(1,1)"))
            ph, pw = _ints(a.get("pad", "(0,0)"))
            Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
            param_shapes[nodes[inputs[1]]["name"]] = (F, C // G, kh, kw)
            if not _is_true(a.get("no_bias", "False")):
                param_shapes[nodes[inputs[2]]["name"]] = (F,)
            macs += F * (C // G) * kh * kw * Ho * Wo
            shapes[i] = (F, Ho, Wo)
        elif op == "BatchNorm":
            for src in inputs[1:3]:  # gamma, beta (the moving statistics are auxiliary states)
                param_shapes[nodes[src]["name"]] = (x[0],)
            shapes[i] = x
        elif op == "FullyConnected":
            fan_in, F = math.prod(x), int(a["num_hidden"])
            param_shapes[nodes[inputs[1]]["name"]] = (F, fan_in)
            if not _is_true(a.get("no_bias", "False")):
                param_shapes[nodes[inputs[2]]["name"]] = (F,)
            macs += F * fan_in
            shapes[i] = (F,)
        elif op == "Pooling":
            C, H, W = x
            if _is_true(a.get("global_pool", "False")):
                shapes[i] = (C, 1, 1)
            else:
                (kh, kw), (sh, sw) = _ints(a["kernel"]), _ints(a.get("stride", "(1,1)"))
                ph, pw = _ints(a.get("pad", "(0,0)"))
                # MXNet's default pooling_convention 'valid' rounds down like a conv
                shapes[i] = (C, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)
        elif op == "Flatten":
            shapes[i] = (math.prod(x),)
        elif op in _SHAPE_PRESERVING:
            shapes[i] = x
        else:
            raise ValueError(f"{json_path}: node {i} {node['name']!r}: op {op!r} is not understood")
    layer_shapes = {node["name"]: shapes[i] for i, node in enumerate(nodes) if i in shapes and node["op"] != "null"}
    return GraphCounts(params=sum(math.prod(s) for s in param_shapes.values()), macs=macs,
                       param_shapes=param_shapes, layer_shapes=layer_shapes,
                       output_shape=shapes[len(nodes) - 1])

