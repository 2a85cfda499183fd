"""Anatomy of one interleaved group convolution: its weights, its permutation, what it composes to.

    pip install -e ".[examples]"          # matplotlib, for the pictures
    python examples/igc_anatomy.py --primary-partition 4 --secondary-partition 3 --output-dir anatomy/

Writes into --output-dir (paper section 3, helpers in igc_np/igc.py; the options are named as in
examples/cifar10_igc.py, --L/--M/--out are accepted too):
    masks.png         the primary (L blocks, k x k) and secondary (M blocks, 1x1) block-diagonal weights
    permutation.png   P = permute_channels(., L) and P^T = permute_channels(., M) as 0/1 matrices
    composition.png   P^T W_d P W_p = W, the chain of the IGC conv as matrices (per spatial tap)
    connectivity.png  who depends on whom: a group conv, the same two convs without P, and IGC
    widths.md         the "wider" table: widest IGC conv per L at a regular conv's parameter count
The table is also printed; it needs no matplotlib.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from igc_np import igc  # noqa: E402

# The paper's ImageNet IGC models (docs/reference_protocol.md), first stage: (name, L, M).
PAPER_IMAGENET = [("IGC-L4M32", 4, 32), ("IGC-L16M16", 16, 16), ("IGC-L100M2", 100, 2)]
MAX_C = 512  # the largest C = L*M the pictures draw (C x C matrices)


# ---- the "wider" table (text) ------------------------------------------------------------------
def widths_markdown(width, k=3, Ls=(1, 2, 4, 8, 16, 32, 64)):
    """Markdown: for the parameter count of a regular k x k conv of `width` channels, the widest
    IGC conv for each L, the widest split overall, and the paper's ImageNet choices."""
    budget = igc.regular_params(width, k)
    L_best, M_best = igc.widest_split(budget, k)
    Ls = sorted(set(Ls) | {L_best})
    lines = [f"# Wider at equal parameters (one {k}x{k} conv, C in = C out)", "",
             f"Budget: a regular {k}x{k} conv with C = {width}: {budget:,} weights. An IGC conv with L primary "
             f"partitions of M channels (C = L*M) has L*M*M*{k * k} + M*L*L = C*({k * k}M + L) weights; "
             f"for each L the table gives the largest M within the budget.", "",
             "| conv | L | M | width C | weights | C / regular C |", "|---|---|---|---|---|---|",
             f"| regular | - | - | {width} | {budget:,} | 1.00 |"]
    for L_, M_, C_, p_ in igc.wider_table(budget, Ls, k)[1:]:
        tag = "IGC (widest)" if (L_, M_) == (L_best, M_best) else "IGC"
        lines.append(f"| {tag} | {L_} | {M_} | {C_} | {p_:,} | {C_ / width:.2f} |")
    lines += ["", f"The widest split has L = {L_best}, M = {M_best} (L close to {k * k}M: then the primary "
              f"and the secondary cost the same, L*M*M*{k * k} = M*L*L). A regular conv's width grows like "
              f"budget^(1/2), an IGC conv's at best like budget^(2/3).", "",
              "The paper's ImageNet IGC models, first stage, against ResNet (C=64):", "",
              "| model | L | M | width C | weights per 3x3 conv | vs regular C=64 |", "|---|---|---|---|---|---|",
              f"| ResNet (C=64) | - | - | 64 | {igc.regular_params(64):,} | 1.00 |"]
    for name, L_, M_ in PAPER_IMAGENET:
        p_ = igc.igc_params(L_, M_)
        lines.append(f"| {name} | {L_} | {M_} | {L_ * M_} | {p_:,} | {p_ / igc.regular_params(64):.2f} |")
    return "\n".join(lines) + "\n"


# ---- the pictures --------------------------------------------------------------------------------
def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        sys.exit("igc_anatomy: the pictures need matplotlib, an optional extra:  pip install -e \".[examples]\"")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def label_of(mask, colour):
    """0 where mask is False, colour + 1 elsewhere (0 is drawn white)."""
    return np.where(mask, colour + 1, 0)


def palette(n):
    """n distinct RGB colours: tab10 / tab20 while they suffice, else hues spaced by the golden
    angle at three lightness levels (IGC-L100M2 has 100 primary partitions to tell apart)."""
    import colorsys
    import matplotlib
    if n <= 20:
        base = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
        return [tuple(base(i)[:3]) for i in range(n)]
    golden = (5 ** 0.5 - 1) / 2
    return [colorsys.hls_to_rgb((i * golden) % 1.0, (0.35, 0.55, 0.72)[i % 3], 0.75)
            for i in range(n)]


def draw(ax, labels, title, n_colours, xlabel="input channel c", ylabel="output channel o", grey=False):
    """A labelled 0/1-or-category matrix: white = 0, categories 1..n in distinct colours (or all
    dark grey, for permutations), grid lines between cells."""
    from matplotlib.colors import ListedColormap
    colours = [(0.3, 0.3, 0.3)] * max(n_colours, 1) if grey else palette(max(n_colours, 1))
    cmap = ListedColormap([(1, 1, 1)] + colours)
    ax.imshow(labels, cmap=cmap, vmin=0, vmax=max(n_colours, 1), interpolation="nearest")
    rows, cols = labels.shape
    ax.set_xticks(np.arange(-0.5, cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, rows, 1), minor=True)
    ax.grid(which="minor", color="0.85", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    step = 1 if max(rows, cols) <= 16 else max(rows, cols) // 8
    ax.set_xticks(range(0, cols, step))
    ax.set_yticks(range(0, rows, step))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


# Over ~60 lines: four figures drawn from the same masks and partitions, read top to bottom.
def figures(plt, L, M, k, out, seed=0):
    C = L * M
    rng = np.random.default_rng(seed)
    Wp = rng.standard_normal((C, C // L, k, k))       # primary, L groups
    Wd = rng.standard_normal((C, C // M, 1, 1))       # secondary, S = M groups
    part_out = np.arange(C) // M                       # primary partition of a channel (before P)
    part_in = part_out[None, :].repeat(C, 0)           # ... of the input channel, per matrix entry
    sec = np.arange(C)[:, None] // L                   # secondary partition of a (permuted) channel
    name = f"IGC-L{L}M{M}"
    written = []

    def save(fig, filename):
        path = os.path.join(out, filename)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    # 1. the two block-diagonal weights
    mask_p = igc.connectivity(igc.block_diagonal(Wp, L))
    mask_d = igc.connectivity(igc.block_diagonal(Wd, M))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    draw(axes[0], label_of(mask_p, part_in), f"primary W_p: {k}x{k} group conv, L={L} groups of M={M}\n"
         f"colour = primary partition, white = zero weight", L)
    draw(axes[1], label_of(mask_d, sec.repeat(C, 1)), f"secondary W_d: 1x1 group conv, S=M={M} groups of L={L}\n"
         f"colour = secondary partition, white = zero weight", M,
         xlabel="channel after P", ylabel="channel before P^T")
    fig.suptitle(f"{name}: the two block-diagonal weights (C = {C})")
    save(fig, "masks.png")

    # 2. the permutation
    P, PT = igc.permutation_matrix(C, L), igc.permutation_matrix(C, M)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    draw(axes[0], label_of(P.astype(bool), part_in), f"P = permute_channels(., L={L}): (Px)[k] = x[perm[k]]\n"
         f"colour = primary partition of the source channel", L, xlabel="source channel", ylabel="target channel k")
    draw(axes[1], label_of(PT.astype(bool), sec.T.repeat(C, 0)), f"P^T = permute_channels(., M={M}) = P's inverse\n"
         f"colour = secondary partition of the source channel", M, xlabel="source channel", ylabel="target channel")
    perm = igc.interleave_permutation(C, L)
    fig.suptitle(f"{name}: after P, secondary partition m = channels m*L..m*L+{L - 1} = member m of every "
                 f"primary partition\nperm = {perm.tolist()}", fontsize=10)
    save(fig, "permutation.png")

    # 3. the chain P^T W_d P W_p = W (connectivity of each factor)
    W = igc.compose(Wp, Wd, L, M)
    W_conn = igc.connectivity(W)
    factors = [(PT.astype(int), "P^T = permute(., M)", 1, True, "channel before P^T", "output channel"),
               (label_of(mask_d, sec.repeat(C, 1)), "W_d (1x1), colour = secondary partition", M, False,
                "channel after P", "channel before P^T"),
               (P.astype(int), "P = permute(., L)", 1, True, "primary output channel", "channel after P"),
               (label_of(mask_p, part_in), f"W_p ({k}x{k}), colour = primary partition", L, False,
                "input channel", "primary output channel"),
               (label_of(W_conn, part_in), "= W, colour = primary partition of the input", L, False,
                "input channel", "output channel")]
    fig, axes = plt.subplots(1, 5, figsize=(22, 5))
    for ax, (lab, title, n, grey, xlabel, ylabel) in zip(axes, factors):
        draw(ax, lab, title, n, xlabel=xlabel, ylabel=ylabel, grey=grey)
    fig.suptitle(f"{name}: the IGC conv is one regular {k}x{k} conv,  W = P^T W_d P W_p  (read right to left)\n"
                 f"one (C_out x C_in) matrix per spatial tap; grey = permutation entry, white = 0", fontsize=12)
    save(fig, "composition.png")

    # 4. connectivity: group conv, no permutation, IGC
    no_perm = np.einsum("oc,cikl->oikl", igc.block_diagonal(Wd, M)[:, :, 0, 0], igc.block_diagonal(Wp, L))
    panels = [(mask_p, f"group conv, L={L} groups"),
              (igc.connectivity(no_perm), f"W_d W_p without P (S={M} groups)"),
              (igc.connectivity(W), "IGC: P^T W_d P W_p")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    for ax, (mask, title) in zip(axes, panels):
        draw(ax, label_of(mask, part_in), f"{title}\n{mask.sum()}/{mask.size} connected "
             f"({100 * mask.mean():.0f}%)", L)
    fig.suptitle(f"{name}: does output o depend on input c?  colour = primary partition of input c, "
                 f"white = no path (paper section 3: complementary partitions)", fontsize=11)
    save(fig, "connectivity.png")
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--primary-partition", "--L", type=int, default=4, dest="L", metavar="L",
                        help="primary partitions (default 4)")
    parser.add_argument("--secondary-partition", "--M", type=int, default=3, dest="M", metavar="M",
                        help="channels per primary partition = secondary partitions (default 3)")
    parser.add_argument("--k", type=int, default=3, help="primary kernel size (default 3)")
    parser.add_argument("--width", type=int, default=64,
                        help="the regular conv whose parameter count the widths table keeps (default 64)")
    parser.add_argument("--output-dir", "--out", default="anatomy", dest="out", metavar="DIR",
                        help="output folder (default anatomy/)")
    args = parser.parse_args(argv)
    for flag, value, hi in (("--primary-partition", args.L, MAX_C), ("--secondary-partition", args.M, MAX_C),
                            ("--k", args.k, 15), ("--width", args.width, 1 << 16)):
        if not 1 <= value <= hi:
            parser.error(f"{flag} must be in 1..{hi}, got {value}")
    if args.L * args.M > MAX_C:
        parser.error(f"--primary-partition {args.L} x --secondary-partition {args.M} = C = "
                     f"{args.L * args.M} channels; the pictures draw C x C matrices, at most {MAX_C}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--output-dir {args.out}: is a file, not a folder")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        parser.error(f"--output-dir {args.out}: cannot create it ({e.strerror})")

    table = widths_markdown(args.width, args.k)
    print(table)
    with open(os.path.join(args.out, "widths.md"), "w") as f:
        f.write(table)
    plt = import_pyplot()
    for path in figures(plt, args.L, args.M, args.k, args.out):
        print("wrote", path)
    print("wrote", os.path.join(args.out, "widths.md"))


if __name__ == "__main__":
    main()
