"""The networks of the IGC paper: CIFAR/SVHN nets (docs/reference_protocol.md) and the five
ImageNet models of the paper's experiments as the authors' code released them, with the authors'
code's parameter names.

    import igc_np as ig
    net = ig.nets.get_network("resnet_igc", depth=20, primary_partition=4, secondary_partition=2)
    logits = net(x)                                   # x (N, 3, 32, 32) -> (N, 10)
    ig.nets.count_params(net), ig.nets.count_macs(net, (3, 32, 32))
    print(ig.nets.describe(net, (3, 32, 32)))         # one row per layer

    model = ig.nets.imagenet_model("igc_l100m2")      # (N, 3, 224, 224) -> (N, 1000)

Notation (paper section 3): L primary partitions, M channels per primary partition (= number of
secondary partitions), C = L * M channels. An IGC conv is ``ig.nn.IGCConv(C_in, C_out, L, S)``:
a 3x3 group conv with L groups, a permutation, a 1x1 group conv with S groups and the permutation
back (paper section 3).

Counting. ``count_params`` counts the learned arrays (conv weights, BN gamma and beta, FC weight
and bias), not the BN running statistics. ``count_macs`` walks the model with shapes only (no
arithmetic) and adds the multiply-accumulates of the convs and the FC layer.
"""
import numpy as np

from .nn import (BatchNorm2d, Conv2d, GlobalAvgPool2d, IGCConv, Linear, MaxPool2d, Module, Sequential,
                 layer_name, walk_in_order)

CIFAR_NETWORKS = ("plain", "resnet", "plain_igc", "resnet_igc")

# model name -> released graph of the authors' code (its "<name>-symbol.json"; see tests/test_nets.py)
IMAGENET_GRAPHS = {
    "resnet18_c64": "resnet_d18.json",
    "resnet18_c69": "resnet_d18_w69.json",
    "igc_l4m32": "resnet_gcwf_noshare_imagenet_d18b4.json",
    "igc_l16m16": "resnet_gcwf_noshare_imagenet_d18b16.json",
    "igc_l100m2": "resnet_gcwf_noshare_imagenet_d18b100.json",
}

# stem width C0, the four stage widths, and L per stage (None: regular convs). Section 3's table.
IMAGENET_CONFIGS = {
    "resnet18_c64": (64, (64, 128, 256, 512), None),
    "resnet18_c69": (69, (69, 138, 276, 552), None),
    # IGC-L4M32 / L16M16: the width doubles by doubling M, L stays (seed README)
    "igc_l4m32": (128, (128, 256, 512, 1024), (4, 4, 4, 4)),
    "igc_l16m16": (256, (256, 512, 1024, 2048), (16, 16, 16, 16)),
    # IGC-L100M2: the width doubles by doubling L, M = 2 stays; stage 1 already doubles the stem
    "igc_l100m2": (100, (200, 400, 800, 1600), (100, 200, 400, 800)),
}


# ---- building blocks ---------------------------------------------------------------------------
class ConvBN(Module):
    """conv (a Conv2d or an IGCConv) -> BatchNorm -> ReLU (optional). (N, C_in, H, W) -> (N, C_out, Ho, Wo)."""

    def __init__(self, conv, bn, relu=True):
        super().__init__()
        self.conv, self.bn, self.relu = conv, bn, relu

    def forward(self, x, residual=None, relu=None):
        """[relu](bn(conv(x)) [+ residual]); relu None: this layer's own choice. The BatchNorm layer
        runs BN, the add and the ReLU as one op (BatchNorm2d.forward)."""
        return self.bn(self.conv(x), residual=residual, relu=self.relu if relu is None else relu)

    def extra_repr(self):
        return f"relu={self.relu}"

    def walk(self, path, shape, visit):
        y = self.bn.walk(f"{path}.bn", self.conv.walk(f"{path}.conv", shape, visit), visit)
        if self.relu:  # named as the authors' graphs name it: <layer>_bn -> <layer>_relu
            bn_name = layer_name(self.bn, "_gamma", "")
            visit(bn_name[:-3] + "_relu" if bn_name.endswith("_bn") else f"{path}.relu", "ReLU", y, 0, 0)
        return y


class ResidualBlock(Module):
    """Basic block: relu(conv2(conv1(x)) + shortcut(x)); shortcut None is the identity.

    conv1 is a ConvBN with ReLU, conv2 a ConvBN without; the shortcut a ConvBN without ReLU.
    """

    def __init__(self, conv1, conv2, shortcut=None, name=None):
        super().__init__()
        # shortcut first: the authors' graphs list the projection (p0 / proj) before the body
        self.shortcut = shortcut
        self.conv1, self.conv2 = conv1, conv2
        self.name = name

    def forward(self, x):
        s = x if self.shortcut is None else self.shortcut(x)
        return self.conv2(self.conv1(x), residual=s, relu=True)  # relu(bn(conv2(.)) + s), one op

    def extra_repr(self):
        return "shortcut=identity" if self.shortcut is None else ""

    def walk(self, path, shape, visit):
        y = self.conv1.walk(f"{path}.conv1", shape, visit)
        y = self.conv2.walk(f"{path}.conv2", y, visit)
        s = shape if self.shortcut is None else self.shortcut.walk(f"{path}.shortcut", shape, visit)
        if s != y:
            raise ValueError(f"{path}: shortcut shape {s} != body shape {y}")
        visit(f"{self.name}_relu" if self.name else f"{path}.add_relu", "Add+ReLU", y, 0, 0)
        return y


class Network(Module):
    """stem -> stages -> global average pool -> fully connected: (N, 3, H, W) -> (N, num_classes)."""

    def __init__(self, stem, stages, fc, name=""):
        super().__init__()
        self.stem, self.stages = stem, stages
        self.pool = _named(GlobalAvgPool2d(), "global_pool")
        self.fc = fc
        self.name = name

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))))

    def extra_repr(self):
        return f"name={self.name!r}, parameters={count_params(self):,}"

    def walk(self, path, shape, visit):
        return walk_in_order(self, path, shape, visit)


def _named(layer, name):
    """Give a parameter-free layer (pool, ReLU) the authors' graph's name, for describe()."""
    layer.name = name
    return layer


def conv_bn(C_in, C_out, k, stride, bn_momentum, conv_name, bn_name, relu=True, groups=1, rng=None):
    """A regular (or grouped) k x k conv with padding k//2, BN and ReLU."""
    conv = Conv2d(C_in, C_out, k, stride, k // 2, groups=groups, name=conv_name, rng=rng)
    return ConvBN(conv, BatchNorm2d(C_out, bn_momentum, name=bn_name), relu)


def igc_bn(C_in, C_out, L, S, stride, bn_momentum, name, relu=True, rng=None):
    """An IGC conv (paper section 3: primary 3x3 with L groups, Reorder(L), secondary 1x1 with
    S groups, Reorder(S)), then BN and ReLU. Parameters ``<name>_conv1/_conv2_weight``, ``<name>_bn_*``."""
    conv = IGCConv(C_in, C_out, L, S, kernel_size=3, stride=stride, name=name, rng=rng)
    return ConvBN(conv, BatchNorm2d(C_out, bn_momentum, name=f"{name}_bn"), relu)


# ---- CIFAR-10 / CIFAR-100 / SVHN networks (docs/reference_protocol.md) ---------------------------
def get_network(name, depth, num_classes=10, primary_partition=16, secondary_partition=1, rng=None):
    """One of the CIFAR/SVHN networks: 'plain', 'resnet', 'plain_igc', 'resnet_igc'.

    depth: plain nets 3n+2 (n layers per stage), resnets 6n+2 (n blocks per stage).
    primary_partition L, secondary_partition M: the stem and stage 1 have C = L*M channels,
    stages 2 and 3 have 2C and 4C. Input (N, 3, H, W) with H, W >= 1 (32x32, or 8x8 digits);
    output (N, num_classes) logits. rng: a NumPy Generator or int seed for the initialisation.
    """
    if name not in CIFAR_NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(CIFAR_NETWORKS)} "
                         f"(ImageNet models: imagenet_model({', '.join(IMAGENET_GRAPHS)}))")
    L, M = primary_partition, secondary_partition
    _check_positive_int("primary_partition (L)", L, name)
    _check_positive_int("secondary_partition (M)", M, name)
    _check_positive_int("num_classes", num_classes, name)
    n = _blocks_per_stage(name, depth)
    rng = np.random.default_rng(rng) if rng is not None else None
    C = L * M  # section 2: C = L*M (M = 1 gives the usual plain/resnet width L)
    widths = (C, 2 * C, 4 * C)
    resnet = name.startswith("resnet")
    momentum = 0.9 if resnet else 0.99  # section 2: BN momentum 0.99 in plain nets, 0.9 in resnets
    stem = conv_bn(3, C, 3, 1, momentum, "g0_conv", "g0_bn", rng=rng)
    stages, C_in = [], C
    for s, C_out in enumerate(widths, start=1):
        blocks = []
        for i in range(1, n + 1):
            stride = 1 if C_in == C_out else 2  # the first conv of a stage whose width changes
            make = _resnet_block if resnet else _plain_layer
            blocks.append(make(name, f"g{s}_b{i}", C_in, C_out, stride, L, momentum, rng))
            C_in = C_out
        stages.append(Sequential(*blocks))
    fc = Linear(widths[-1], num_classes, name="fc" if resnet else "fc_score", rng=rng)
    # L and M mean nothing to a net without IGC blocks: it is named by its width, as the paper's tables
    label = f"L={L}, M={M}" if name.endswith("_igc") else f"C={C}"
    return Network(stem, Sequential(*stages), fc, name=f"{name}-{depth} ({label})")


def _plain_layer(name, prefix, C_in, C_out, stride, L, momentum, rng):
    """plain: g{s}_b{i}_conv/_bn; plain_igc: g{s}_b{i}_conv1 (primary), _conv2 (secondary), _bn."""
    if name == "plain":
        return conv_bn(C_in, C_out, 3, stride, momentum, f"{prefix}_conv", f"{prefix}_bn", rng=rng)
    # section 2, plain_igc: S = M, 2M, 4M in stages 1, 2, 3, i.e. S = C_out / L: secondary partition
    # m takes channel m of every primary partition (the interleaving of section 1)
    return igc_bn(C_in, C_out, L, C_out // L, stride, momentum, prefix, rng=rng)


def _resnet_block(name, prefix, C_in, C_out, stride, L, momentum, rng):
    """resnet: g{s}_b{i}_p2_two1_conv/_bn, _p2_two2_...; shortcut g{s}_b{i}_p0_line_conv/_bn."""
    two1, two2, line = f"{prefix}_p2_two1", f"{prefix}_p2_two2", f"{prefix}_p0_line"
    if name == "resnet":
        conv1 = conv_bn(C_in, C_out, 3, stride, momentum, f"{two1}_conv", f"{two1}_bn", rng=rng)
        conv2 = conv_bn(C_out, C_out, 3, 1, momentum, f"{two2}_conv", f"{two2}_bn", relu=False, rng=rng)
        groups = 1
    else:
        # section 2, resnet_igc: the first IGC conv uses S = C_in/L, the second S = C_out/L (as the
        # seed does). Where the width doubles, S*L = C_out/2: each secondary partition then takes
        # two channels of every primary partition instead of one (still complementary).
        conv1 = igc_bn(C_in, C_out, L, C_in // L, stride, momentum, two1, rng=rng)
        conv2 = igc_bn(C_out, C_out, L, C_out // L, 1, momentum, two2, relu=False, rng=rng)
        groups = L  # section 2: the projection shortcut is a 1x1 group conv with L groups
    shortcut = None
    if C_in != C_out:  # projection: 1x1 stride 2 (+ BN) where the width changes
        shortcut = conv_bn(C_in, C_out, 1, 2, momentum, f"{line}_conv", f"{line}_bn", relu=False,
                           groups=groups, rng=rng)
    return ResidualBlock(conv1, conv2, shortcut, name=prefix)


def _check_positive_int(what, value, network):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{network}: {what} must be a positive int (1, 2, 3, ...); got {value!r}")


def _blocks_per_stage(name, depth):
    """Layers (plain) or blocks (resnet) per stage from the depth, with a helpful error."""
    per_block = 2 if name.startswith("resnet") else 1  # a basic block holds two convs
    step = 3 * per_block
    if not isinstance(depth, (int, np.integer)) or isinstance(depth, bool) or depth < step + 2 \
            or (depth - 2) % step:
        kind = "resnet" if per_block == 2 else "plain"
        valid = [step * k + 2 for k in range(1, 8)]
        near = ""
        if isinstance(depth, (int, np.integer)) and depth > step + 2:
            lo = (depth - 2) // step * step + 2
            near = f" (nearest: {lo} or {lo + step})"
        raise ValueError(f"{name}: {kind} depth must be {step}n+2 with n >= 1 "
                         f"{'blocks' if per_block == 2 else 'layers'} per stage: "
                         f"{', '.join(map(str, valid))}, ...; got {depth!r}{near}")
    return (depth - 2) // step


# ---- ImageNet networks (the released graphs) ----------------------------------------------------
def imagenet_model(name, num_classes=1000, rng=None, **kwargs):
    """One of the five released ResNet-18-layout models (224x224 input -> (N, num_classes)).

    Names: resnet18_c64, resnet18_c69, igc_l4m32, igc_l16m16, igc_l100m2. Every parameter has the
    name and shape of the released graph IMAGENET_GRAPHS[name]. The graphs end in a 7x7 average
    pool, which at 224x224 is the global average pool used here (so other sizes also run).
    The released weights (MXNet ``.params`` files) are read by the application:
    ``igc_np.app.mxnet_io.load_released(name, path)``; this module builds the network only.
    """
    if "weights" in kwargs:
        raise TypeError(f"imagenet_model({name!r}, weights=...): the network module does not read MXNet "
                        f"files; use igc_np.app.mxnet_io.load_released({name!r}, path), which builds the "
                        "model and loads the released .params file into it")
    if kwargs:
        raise TypeError(f"imagenet_model() got unexpected keyword arguments {sorted(kwargs)}; it takes "
                        "name, num_classes and rng")
    if name not in IMAGENET_CONFIGS:
        raise ValueError(f"unknown ImageNet model {name!r}; valid names: {', '.join(IMAGENET_CONFIGS)}")
    _check_positive_int("num_classes", num_classes, name)
    rng = np.random.default_rng(rng) if rng is not None else None
    C0, widths, Ls = IMAGENET_CONFIGS[name]
    igc = Ls is not None
    # the regular graphs call the stem conv 'g0' and the projection 'g2_b1_proj'; the IGC graphs
    # add '_conv' to both (section 5)
    suffix = "_conv" if igc else ""
    stem = Sequential(conv_bn(3, C0, 7, 2, 0.9, "g0" + suffix, "g0_bn", rng=rng),
                      _named(MaxPool2d(3, 2, 1), "g0_pool"))
    stages, C_in = [], C0
    for s, C_out in enumerate(widths, start=1):
        L = Ls[s - 1] if igc else 1
        blocks = []
        for i in (1, 2):
            prefix = f"g{s}_b{i}"
            stride = 2 if (s > 1 and i == 1) else 1
            if igc:
                # section 3: both convs IGC with L primary partitions and S = width/L (M) secondary
                conv1 = igc_bn(C_in, C_out, L, C_out // L, stride, 0.9, f"{prefix}_conv1", rng=rng)
                conv2 = igc_bn(C_out, C_out, L, C_out // L, 1, 0.9, f"{prefix}_conv2", relu=False, rng=rng)
            else:
                conv1 = conv_bn(C_in, C_out, 3, stride, 0.9, f"{prefix}_conv1", f"{prefix}_conv1_bn", rng=rng)
                conv2 = conv_bn(C_out, C_out, 3, 1, 0.9, f"{prefix}_conv2", f"{prefix}_conv2_bn",
                                relu=False, rng=rng)
            shortcut = None
            if C_in != C_out or stride != 1:
                # a 1x1 projection (groups L in the IGC graphs); stride 1 in L100M2's first block
                shortcut = conv_bn(C_in, C_out, 1, stride, 0.9, f"{prefix}_proj" + suffix, f"{prefix}_proj_bn",
                                   relu=False, groups=L, rng=rng)
            blocks.append(ResidualBlock(conv1, conv2, shortcut, name=prefix))
            C_in = C_out
        stages.append(Sequential(*blocks))
    fc = Linear(widths[-1], num_classes, name="fc_score", rng=rng)
    return Network(stem, Sequential(*stages), fc, name=name)


# ---- counting ----------------------------------------------------------------------------------
def count_params(model):
    """Learned parameters: conv weights, BN gamma and beta, FC weight and bias (no running stats)."""
    return sum(int(p.size) for p in model.parameters())


def count_macs(model, input_shape):
    """Multiply-accumulates of the convs and FC layers for one input of shape (C, H, W).

    A 4-D shape (N, C, H, W) gives N times that. Only shapes are propagated (each layer's walk
    method): no arithmetic runs.
    """
    shape, batch = _split_batch(input_shape)
    return model.macs(shape) * batch


def layers(model, input_shape):
    """One row per layer, in forward order: (name, kind, output shape, params, MACs) for one input
    of shape (C, H, W). Names are the authors' names where the layer has one (section 5)."""
    shape, _ = _split_batch(input_shape)
    rows = []
    model.walk("", shape, lambda *row: rows.append(row))
    return rows


def describe(model, input_shape):
    """A printable table of layers(): name, kind, output shape, params, MACs, and the totals."""
    _, batch = _split_batch(input_shape)
    rows = layers(model, input_shape)
    width = max(len("total"), *(len(r[0]) for r in rows)) + 2
    lines = [f"{'layer':<{width}}{'kind':<22}{'output':>18}{'params':>12}{'MACs':>16}"]
    for name, kind, out, params, macs in rows:
        lines.append(f"{name:<{width}}{kind:<22}{str(tuple(out)):>18}{params:>12,}{macs:>16,}")
    lines.append(f"{'total':<{width}}{'':<22}{'':>18}{sum(r[3] for r in rows):>12,}"
                 f"{batch * sum(r[4] for r in rows):>16,}")
    return "\n".join(lines)


def _split_batch(input_shape):
    try:
        dims = tuple(input_shape)
    except TypeError:
        dims = None
    if dims is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1
                               for d in dims):
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W) of positive ints, got {input_shape!r}")
    input_shape = tuple(int(d) for d in dims)
    if len(input_shape) == 4:
        return input_shape[1:], input_shape[0]
    if len(input_shape) == 3:
        return input_shape, 1
    raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), got {input_shape}")
