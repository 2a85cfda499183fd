"""The networks of the paper: layouts, the authors' (MXNet) names, counts, forward passes and a few SGD steps.

ImageNet models are checked against the released MXNet graphs (the ``*-symbol.json`` files that the
paper's authors published in their repository with its ImageNet models) when a folder of them is found, and
against numbers derived from them (hard-coded below) everywhere. The folder is ``$IGC_NP_GRAPHS``, or
``shared/reference/mxnet-symbols`` beside the checkout (where the project's workspace keeps them). CIFAR networks are checked against parameter formulas written from section 2.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

import igc_np as ig
from igc_np import functional as F
from igc_np.mxnet_graph import graph_counts

SYMBOLS = Path(os.environ.get("IGC_NP_GRAPHS")
               or Path(__file__).resolve().parents[2] / "shared" / "reference" / "mxnet-symbols")
needs_graphs = pytest.mark.skipif(
    not SYMBOLS.is_dir(),
    reason=f"the released MXNet graphs (resnet_d18.json, resnet_gcwf_noshare_imagenet_d18b*.json, from the "
           f"IGC authors' repository's ImageNet models) are not at {SYMBOLS}; set IGC_NP_GRAPHS=DIR to check "
           f"against them (the counts they imply are tested anyway)")

# (params, MACs at 224x224, number of learned arrays), derived by graph_counts from the released graphs
IMAGENET_COUNTS = {
    "resnet18_c64": (11_689_512, 1_814_073_344, 62),
    "resnet18_c69": (13_542_457, 2_098_611_264, 62),
    "igc_l4m32": (12_251_240, 1_944_641_536, 78),
    "igc_l16m16": (13_528_296, 2_265_989_120, 78),
    "igc_l100m2": (8_637_900, 1_264_780_800, 81),
}

# a few parameters per model, read off the graphs: they pin names, groups and the L100M2 stride-1 projection
IMAGENET_SAMPLES = {
    "resnet18_c64": {"g0_weight": (64, 3, 7, 7), "g1_b1_conv1_bn_gamma": (64,),
                     "g2_b1_proj_weight": (128, 64, 1, 1), "fc_score_weight": (1000, 512)},
    "resnet18_c69": {"g0_weight": (69, 3, 7, 7), "g4_b1_proj_weight": (552, 276, 1, 1),
                     "g4_b2_conv2_bn_beta": (552,), "fc_score_bias": (1000,)},
    "igc_l4m32": {"g0_conv_weight": (128, 3, 7, 7), "g1_b1_conv1_conv1_weight": (128, 32, 3, 3),
                  "g1_b1_conv1_conv2_weight": (128, 4, 1, 1), "g2_b1_proj_conv_weight": (256, 32, 1, 1),
                  "g2_b1_proj_bn_gamma": (256,)},
    "igc_l16m16": {"g0_conv_weight": (256, 3, 7, 7), "g2_b1_conv1_conv1_weight": (512, 16, 3, 3),
                   "g2_b1_conv1_conv2_weight": (512, 16, 1, 1), "g2_b1_proj_conv_weight": (512, 16, 1, 1)},
    "igc_l100m2": {"g0_conv_weight": (100, 3, 7, 7), "g1_b1_proj_conv_weight": (200, 1, 1, 1),
                   "g1_b1_conv1_conv1_weight": (200, 1, 3, 3), "g1_b1_conv1_conv2_weight": (200, 100, 1, 1),
                   "g4_b2_conv2_conv2_weight": (1600, 800, 1, 1), "fc_score_weight": (1000, 1600)},
}

_models = {}


def imagenet(name):
    """Each ImageNet model is built once per test session (they take ~0.3 s each)."""
    if name not in _models:
        _models[name] = ig.nets.imagenet_model(name, rng=0)
    return _models[name]


def shapes(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


# ---- ImageNet models (section 3) ---------------------------------------------------------------
@pytest.mark.parametrize("name", list(IMAGENET_COUNTS))
def test_imagenet_counts_and_sample_parameters(name):
    model = imagenet(name)
    params, macs, arrays = IMAGENET_COUNTS[name]
    assert ig.nets.count_params(model) == params
    assert ig.nets.count_macs(model, (3, 224, 224)) == macs
    assert ig.nets.count_macs(model, (2, 3, 224, 224)) == 2 * macs
    got = shapes(model)
    assert len(got) == arrays
    for pname, shape in IMAGENET_SAMPLES[name].items():
        assert got[pname] == shape, pname


def test_resnet18_has_the_known_count():
    assert ig.nets.count_params(imagenet("resnet18_c64")) == 11_689_512  # section 3


@needs_graphs
@pytest.mark.parametrize("name", list(IMAGENET_COUNTS))
def test_imagenet_model_is_its_released_graph(name):
    """Parameter for parameter (names and shapes), totals, and every layer's output shape."""
    graph = graph_counts(SYMBOLS / ig.nets.IMAGENET_GRAPHS[name])
    model = imagenet(name)
    assert shapes(model) == graph.param_shapes
    assert (graph.params, graph.macs, len(graph.param_shapes)) == IMAGENET_COUNTS[name]
    assert ig.nets.count_macs(model, (3, 224, 224)) == graph.macs
    # conv, BN, Reorder, ReLU, max-pool and FC nodes: same names and output shapes (strides, pads)
    rows = {row[0]: tuple(row[2]) for row in ig.nets.layers(model, (3, 224, 224))}
    nodes = [n for n in json.loads((SYMBOLS / ig.nets.IMAGENET_GRAPHS[name]).read_text())["nodes"]
             if n["op"] in ("Convolution", "BatchNorm", "Reorder", "Activation", "FullyConnected")
             or n["name"] == "g0_pool"]
    assert len(nodes) > 50
    for node in nodes:
        assert rows.get(node["name"]) == graph.layer_shapes[node["name"]], node["name"]


@pytest.mark.parametrize("name", list(IMAGENET_COUNTS))
def test_imagenet_forward_at_224(name):
    model = imagenet(name).eval()
    x = ig.Tensor(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    with ig.no_grad():
        y = model(x)
    assert y.shape == (1, 1000)
    assert np.isfinite(y.data).all()


def test_graph_counts_on_a_small_graph(tmp_path):
    """conv 4->8 (3x3, 2 groups, stride 2), BN, Reorder, global pool, flatten, FC 8->5, by hand."""
    def var(name):
        return {"op": "null", "name": name, "inputs": []}
    nodes = [var("data"), var("c_weight"),
             {"op": "Convolution", "name": "c", "inputs": [[0, 0], [1, 0]],
              "attrs": {"kernel": "(3, 3)", "stride": "(2, 2)", "pad": "(1, 1)", "num_filter": "8",
                        "num_group": "2", "no_bias": "True"}},
             var("c_bn_gamma"), var("c_bn_beta"),
             {"op": "BatchNorm", "name": "c_bn", "inputs": [[2, 0], [3, 0], [4, 0]], "attrs": {}},
             {"op": "Reorder", "name": "r", "inputs": [[5, 0]], "attrs": {"branch_factor": "2"}},
             {"op": "Pooling", "name": "p", "inputs": [[6, 0]],
              "attrs": {"kernel": "(4, 4)", "global_pool": "True", "pool_type": "avg"}},
             {"op": "Flatten", "name": "f", "inputs": [[7, 0]]},
             var("fc_weight"), var("fc_bias"),
             {"op": "FullyConnected", "name": "fc", "inputs": [[8, 0], [9, 0], [10, 0]],
              "attrs": {"num_hidden": "5"}}]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"nodes": nodes, "arg_nodes": [], "heads": [[11, 0]]}))
    g = graph_counts(path, input_hw=8, in_channels=4)
    assert g.param_shapes == {"c_weight": (8, 2, 3, 3), "c_bn_gamma": (8,), "c_bn_beta": (8,),
                              "fc_weight": (5, 8), "fc_bias": (5,)}
    assert g.params == 144 + 16 + 45
    assert g.macs == 144 * 4 * 4 + 40  # every conv weight once per output pixel (4x4)
    assert g.layer_shapes["c"] == (8, 4, 4) and g.output_shape == (5,)


# ---- CIFAR networks (section 2): formulas from the spec ----------------------------------------
def conv3(C_in, C_out):
    return 9 * C_in * C_out


def igc(C_in, C_out, L, S):
    """Section 1: primary 3x3 with L groups + secondary 1x1 with S groups."""
    return 9 * C_out * (C_in // L) + C_out * (C_out // S)


def expected_params(name, depth, L, M, K=10):
    """Parameter count of a section-2 network, written from the spec (BN adds 2 per channel)."""
    C = L * M
    total = 27 * C + 2 * C + 4 * C * K + K  # stem conv + BN, FC with bias
    resnet = name.startswith("resnet")
    n = (depth - 2) // (6 if resnet else 3)
    C_in = C
    for C_out in (C, 2 * C, 4 * C):
        for _ in range(n):
            if name == "plain":
                total += conv3(C_in, C_out) + 2 * C_out
            elif name == "plain_igc":
                total += igc(C_in, C_out, L, C_out // L) + 2 * C_out  # S = M, 2M, 4M
            elif name == "resnet":
                total += conv3(C_in, C_out) + conv3(C_out, C_out) + 4 * C_out
                if C_in != C_out:
                    total += C_in * C_out + 2 * C_out  # 1x1 projection + BN
            else:
                total += igc(C_in, C_out, L, C_in // L) + igc(C_out, C_out, L, C_out // L) + 4 * C_out
                if C_in != C_out:
                    total += C_out * (C_in // L) + 2 * C_out  # 1x1 group conv, L groups + BN
            C_in = C_out
    return total


def test_igc_conv_count_is_the_paper_formula():
    for L, M in ((4, 2), (24, 2), (16, 16), (100, 2), (1, 8), (8, 1)):
        C = L * M
        assert igc(C, C, L, M) == C * (9 * M + L)  # section 1
        assert ig.nn.IGCConv(C, C, L, M).num_parameters() == C * (9 * M + L)


def test_resnet20_is_the_classic_resnet20_with_projections():
    net = ig.nets.get_network("resnet", 20, primary_partition=16, rng=0)
    assert ig.nets.count_params(net) == expected_params("resnet", 20, 16, 1) == 272_474
    assert ig.nets.count_macs(net, (3, 32, 32)) == 40_813_184
    assert [len(stage) for stage in net.stages] == [3, 3, 3]


@pytest.mark.parametrize("name, depth, L, M", [
    ("plain", 20, 16, 1), ("plain", 8, 4, 2), ("resnet", 32, 8, 2), ("plain_igc", 38, 24, 2),
    ("plain_igc", 20, 8, 4), ("plain_igc", 8, 1, 8), ("resnet_igc", 20, 4, 2), ("resnet_igc", 26, 8, 8),
    ("resnet_igc", 8, 3, 5)])
def test_cifar_parameter_counts_follow_the_spec(name, depth, L, M):
    net = ig.nets.get_network(name, depth, primary_partition=L, secondary_partition=M)
    assert ig.nets.count_params(net) == expected_params(name, depth, L, M)


def test_seed_readme_example_count():
    # --network=plain_igc --depth=38 --primary-partition=24 --secondary-partition=2 (section 2)
    net = ig.nets.get_network("plain_igc", 38, primary_partition=24, secondary_partition=2)
    assert ig.nets.count_params(net) == 317_242


def test_plain_macs_by_hand():
    net = ig.nets.get_network("plain", 5, primary_partition=4)  # one layer per stage, C = 4
    C = 4
    expected = (32 * 32 * 27 * C + 32 * 32 * 9 * C * C + 16 * 16 * 9 * C * 2 * C
                + 8 * 8 * 9 * 2 * C * 4 * C + 4 * C * 10)
    assert ig.nets.count_macs(net, (3, 32, 32)) == expected


def expected_names(name, depth):
    """Section 5's names for every learned array of a CIFAR network."""
    bn = ["_gamma", "_beta"]
    names = {"g0_conv_weight"} | {"g0_bn" + s for s in bn}
    resnet = name.startswith("resnet")
    n = (depth - 2) // (6 if resnet else 3)
    for s in (1, 2, 3):
        for i in range(1, n + 1):
            b = f"g{s}_b{i}"
            if name == "plain":
                names |= {f"{b}_conv_weight"} | {f"{b}_bn{x}" for x in bn}
            elif name == "plain_igc":
                names |= {f"{b}_conv1_weight", f"{b}_conv2_weight"} | {f"{b}_bn{x}" for x in bn}
            else:
                for two in ("two1", "two2"):
                    convs = ["_conv"] if name == "resnet" else ["_conv1", "_conv2"]
                    names |= {f"{b}_p2_{two}{c}_weight" for c in convs}
                    names |= {f"{b}_p2_{two}_bn{x}" for x in bn}
                if s > 1 and i == 1:
                    names |= {f"{b}_p0_line_conv_weight"} | {f"{b}_p0_line_bn{x}" for x in bn}
    fc = "fc" if resnet else "fc_score"
    return names | {f"{fc}_weight", f"{fc}_bias"}


@pytest.mark.parametrize("name, depth", [("plain", 8), ("plain_igc", 8), ("resnet", 14), ("resnet_igc", 14)])
def test_cifar_parameter_names(name, depth):
    net = ig.nets.get_network(name, depth, primary_partition=4, secondary_partition=2)
    assert set(shapes(net)) == expected_names(name, depth)
    state = net.state_dict()
    assert "g0_bn_moving_mean" in state and "g0_bn_moving_var" in state


@pytest.mark.parametrize("name", ig.nets.CIFAR_NETWORKS)
def test_cifar_layout(name):
    """BN eps and momentum, stride-2 first conv of stages 2 and 3, shortcut groups (section 2)."""
    L, M = 4, 2
    net = ig.nets.get_network(name, 8 if name.startswith("resnet") else 5, primary_partition=L,
                              secondary_partition=M)
    bns = [m for _, m in net.named_modules() if isinstance(m, ig.nn.BatchNorm2d)]
    assert all(bn.eps == 2e-5 for bn in bns)
    assert {bn.momentum for bn in bns} == {0.9 if name.startswith("resnet") else 0.99}
    rows = {row[0]: tuple(row[2]) for row in ig.nets.layers(net, (3, 32, 32))}
    C = L * M
    bn_of = {"plain": "g{}_b1_bn", "plain_igc": "g{}_b1_bn", "resnet": "g{}_b1_p2_two1_bn",
             "resnet_igc": "g{}_b1_p2_two1_bn"}[name]
    assert [rows[bn_of.format(s)] for s in (1, 2, 3)] == [(C, 32, 32), (2 * C, 16, 16), (4 * C, 8, 8)]
    if name == "resnet_igc":
        assert shapes(net)["g2_b1_p0_line_conv_weight"] == (2 * C, C // L, 1, 1)  # L groups
        assert shapes(net)["g2_b1_p2_two1_conv2_weight"] == (2 * C, 2 * L, 1, 1)  # S = C_in/L
        assert shapes(net)["g2_b1_p2_two2_conv2_weight"] == (2 * C, L, 1, 1)      # S = C_out/L
    if name == "resnet":
        assert shapes(net)["g3_b1_p0_line_conv_weight"] == (4 * C, 2 * C, 1, 1)
        assert "g1_b1_p0_line_conv_weight" not in shapes(net)  # identity where the width stays


@pytest.mark.parametrize("hw", [32, 8])
@pytest.mark.parametrize("name", ig.nets.CIFAR_NETWORKS)
def test_cifar_forward(name, hw):
    net = ig.nets.get_network(name, 8 if name.startswith("resnet") else 5, num_classes=7,
                              primary_partition=4, secondary_partition=2, rng=1)
    x = ig.Tensor(np.random.default_rng(0).standard_normal((2, 3, hw, hw)).astype(np.float32))
    y = net(x)
    assert y.shape == (2, 7) and np.isfinite(y.data).all()
    assert ig.nets.layers(net, (3, hw, hw))[-1][2] == (7,)


@pytest.mark.parametrize("name", ig.nets.CIFAR_NETWORKS)
def test_cifar_trains(name):
    """A few Nesterov SGD steps on one fixed batch bring its loss down."""
    net = ig.nets.get_network(name, 8 if name.startswith("resnet") else 5, primary_partition=4,
                              secondary_partition=2, rng=0)
    rng = np.random.default_rng(0)
    x = ig.Tensor(rng.standard_normal((8, 3, 16, 16)).astype(np.float32))
    labels = rng.integers(0, 10, 8)
    opt = ig.optim.SGD(net.parameters(), lr=0.05, weight_decay=0.0)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(net(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_same_rng_gives_same_weights():
    a = ig.nets.get_network("resnet_igc", 8, primary_partition=4, secondary_partition=2, rng=3)
    b = ig.nets.get_network("resnet_igc", 8, primary_partition=4, secondary_partition=2, rng=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)


def test_describe_table():
    net = ig.nets.get_network("resnet_igc", 8, primary_partition=4, secondary_partition=2)
    text = ig.nets.describe(net, (3, 32, 32))
    for layer in ("g0_conv", "g2_b1_p2_two1_conv1", "g2_b1_p2_two1_reorder1", "g2_b1_p0_line_conv",
                  "g2_b1_relu", "fc"):
        assert f"\n{layer} " in text
    total = text.splitlines()[-1].split()
    assert total[0] == "total"
    assert total[1:] == [f"{ig.nets.count_params(net):,}", f"{ig.nets.count_macs(net, (3, 32, 32)):,}"]


# ---- invalid configurations --------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(name="resnet", depth=21), r"resnet depth must be 6n\+2 .*20, 26, .*got 21 \(nearest: 20 or 26\)"),
    (dict(name="resnet_igc", depth=2), r"resnet depth must be 6n\+2 .*8, 14, 20"),
    (dict(name="plain", depth=6), r"plain depth must be 3n\+2 .*5, 8, 11.*got 6"),
    (dict(name="plain_igc", depth=20.0), r"plain depth must be 3n\+2"),
    (dict(name="densenet", depth=20), r"unknown network 'densenet'; valid names: plain, resnet, plain_igc, "
                                      r"resnet_igc"),
    (dict(name="plain_igc", depth=8, primary_partition=0), r"primary_partition \(L\) must be a positive int"),
    (dict(name="resnet_igc", depth=8, secondary_partition=1.5), r"secondary_partition \(M\) must be a positive"),
    (dict(name="resnet", depth=8, num_classes=0), r"num_classes must be a positive int"),
])
def test_invalid_cifar_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ig.nets.get_network(**kwargs)


def test_invalid_imagenet_name():
    with pytest.raises(ValueError, match="valid names: resnet18_c64, resnet18_c69, igc_l4m32, igc_l16m16, "
                                         "igc_l100m2"):
        ig.nets.imagenet_model("resnet50")


def test_count_macs_rejects_bad_shapes():
    net = ig.nets.get_network("plain", 5, primary_partition=4)
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(N, C, H, W\)"):
        ig.nets.count_macs(net, (32, 32))
    with pytest.raises(ValueError, match="expects 3 input channels"):
        ig.nets.count_macs(net, (1, 8, 8))


def test_imagenet_model_reads_no_mxnet_file():
    """The network module builds; the application loads released weights (issue 17)."""
    with pytest.raises(TypeError, match=r"imagenet_model\('igc_l4m32', weights=\.\.\.\): the network module does "
                                        r"not read MXNet files; use igc_np\.app\.mxnet_io\.load_released\('igc_l4m32', path\)"):
        ig.nets.imagenet_model("igc_l4m32", weights="seed-0001.params")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['width'\]"):
        ig.nets.imagenet_model("igc_l4m32", width=3)


def test_counting_is_the_layers_own_walk():
    """No isinstance chain in nets: every layer of a network walks itself, and the totals are the
    sums of the layers' own reports."""
    assert not hasattr(ig.nets, "_walk")
    net = ig.nets.get_network("resnet_igc", 8, primary_partition=4, secondary_partition=2)
    rows = ig.nets.layers(net, (3, 32, 32))
    assert net.macs((3, 32, 32)) == sum(r[4] for r in rows) == ig.nets.count_macs(net, (3, 32, 32))
    assert net.output_shape((3, 32, 32)) == (10,)
    stem = net.stem
    assert stem.macs((3, 32, 32)) == stem.conv.macs((3, 32, 32)) == 27 * 8 * 32 * 32
    assert [r[0] for r in ig.nets.layers(stem, (3, 32, 32))] == ["g0_conv", "g0_bn", "g0_relu"]
