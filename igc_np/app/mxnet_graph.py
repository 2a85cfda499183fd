"""Read the released MXNet symbol graphs (ImageNet models) and count what they imply.

An MXNet symbol JSON is ``{"nodes": [...], "arg_nodes": [...], "heads": [...]}``; every node has
``op``, ``name``, ``inputs`` (a list of ``[node_index, output_index, ...]``) and its attributes
under ``param`` (MXNet < 0.9), ``attr`` or ``attrs`` (later versions), all values as strings:
``{"kernel": "(3,3)", "num_group": "4", ...}``. Nodes with ``op == "null"`` are variables: the
input ``data``, the label, and the learned arrays (``g0_weight``, ``g0_bn_gamma``, ...).

``graph_counts`` walks the nodes in order (they are stored topologically sorted), infers every
feature-map shape (C, H, W) from the input size, and returns the shape of every learned array,
their total, and the multiply-accumulates (MACs) of the convolutions and the fully connected layer.
That is what ``igc_np.nets.imagenet_model`` is checked against, parameter for parameter.

``identify_graph`` says which of the five released ImageNet models a ``-symbol.json`` is (the seed's
files carry a prefix, not a model name), and refuses any other graph, saying where it differs.
"""
import json
import math
from dataclasses import dataclass, field

from .. import nets
from ..serialization import read_regular

MAX_SYMBOL_BYTES = 64 << 20  # the released graphs are < 1 MB

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
    try:
        graph = json.loads(read_regular(path, "symbol file", MAX_SYMBOL_BYTES, ValueError))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not an MXNet symbol file (not UTF-8 text: {e})") from None
    if not isinstance(graph, dict):
        raise ValueError(f"{path}: not an MXNet symbol file (not a JSON object)")
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



class UnknownGraphError(ValueError):
    """A symbol file is not one of the five released ImageNet graphs."""


def identify_graph(json_path):
    """The igc_np name (``igc_np.nets.IMAGENET_GRAPHS``) of the released ImageNet model whose graph
    is ``json_path``: every learned array's name and shape must match, or UnknownGraphError says
    which arrays differ. A graph with another number of classes (fc_score) is still recognised;
    build it with ``imagenet_model(name, num_classes=num_classes_of_graph(json_path))``."""
    counts = graph_counts(json_path)
    shapes = counts.param_shapes
    stem = shapes.get("g0_weight", shapes.get("g0_conv_weight"))
    num_classes = num_classes_of_graph(json_path, counts)
    # the stem width C0 differs between the five models: it picks the one candidate to compare
    candidates = [name for name, (C0, _, _) in nets.IMAGENET_CONFIGS.items() if stem and stem[0] == C0]
    if not candidates:
        raise UnknownGraphError(f"{json_path}: not one of the released ImageNet graphs "
                                f"({', '.join(nets.IMAGENET_CONFIGS)}): stem conv g0 has shape {stem}, "
                                f"expected {', '.join(f'{c[0]} filters' for c in nets.IMAGENET_CONFIGS.values())}")
    name = candidates[0]
    model = nets.imagenet_model(name, num_classes=num_classes, rng=0)
    expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if expected != shapes:
        missing = [n for n in expected if n not in shapes]
        extra = [n for n in shapes if n not in expected]
        differ = [f"{n} {shapes[n]} (expected {expected[n]})" for n in expected
                  if n in shapes and shapes[n] != expected[n]]
        raise UnknownGraphError(
            f"{json_path}: its stem is that of {name!r}, but the graph differs from it: "
            f"missing {missing[:4] or 'none'}, unexpected {extra[:4] or 'none'}, other shapes {differ[:4] or 'none'}")
    return name


def num_classes_of_graph(json_path, counts=None):
    """The number of outputs of the graph's last FullyConnected layer."""
    counts = counts or graph_counts(json_path)
    fc = [s for n, s in counts.param_shapes.items() if n.endswith("_weight") and len(s) == 2]
    if not fc:
        raise UnknownGraphError(f"{json_path}: no FullyConnected layer")
    return fc[-1][0]
