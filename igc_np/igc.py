"""The maths of an interleaved group convolution, made inspectable (paper section 3).

Pure NumPy helpers that turn the IGC conv's weights into the dense objects the paper reasons
about, so a student can print them, plot them (examples/igc_anatomy.py) and test them
(tests/test_igc_properties.py). Notation as in the paper (section 3):

    L          number of primary partitions (groups of the k x k primary conv)
    M          channels per primary partition = number of secondary partitions,  C = L*M
    S          groups of the 1x1 secondary conv (S = M = C/L in every network of the paper)
    W_p        primary weight,   (C_out, C_in/L, k, k)
    W_d        secondary weight, (C_out, C_out/S, 1, 1)
    P          the interleaving permutation permute_channels(., L); P^T = permute_channels(., M)

The IGC conv  y = P_S W_d P_L W_p x  is linear in x, so it *is* one regular k x k conv; compose()
builds that conv's kernel. With S = M the last permutation is P^T and the formula reads
W = P^T W_d P W_p (the paper's equation).

Every dense "matrix" here is per spatial tap: a (C_out, C_in, k, k) kernel is k*k matrices of
shape (C_out, C_in), and products of 1x1 matrices with it act on each tap alike.
"""
import math

import numpy as np

from . import functional as F
from .autograd import Tensor
from .nn import IGCConv
from .ops.reference import permutation_index

__all__ = ["interleave_permutation", "permutation_matrix", "block_diagonal", "compose", "connectivity",
           "four_branch", "tile_input", "cross_summation", "four_branch_conv",
           "igc_params", "regular_params", "regular_width", "width_at_equal_params", "widest_split",
           "wider_table"]


def _check_sizes(op, **sizes):
    """Each size a positive int (0, negatives, floats and bools would give empty or wrong maths)."""
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{op}: {name} must be a positive int, got {v!r}")


def _check_kernel(op, name, W):
    """W as a 4-D (C_out, C_in, kh, kw) array; a Tensor gives its data."""
    W = np.asarray(W)
    if W.ndim != 4:
        raise ValueError(f"{op}: {name} must be a 4-D conv weight (C_out, C_in, kh, kw), got shape {W.shape}")
    return W


# ---- the permutation P ---------------------------------------------------------------------
def interleave_permutation(C, b):
    """perm (C,) with permute_channels(x, b)[:, k] = x[:, perm[k]]: perm[j*b + i] = i*(C/b) + j.

    b = L gives the paper's P: the channel grid (L partitions, M members) is read member-major,
    so secondary partition m (channels m*L .. m*L+L-1 after P) holds member m of every primary
    partition.
    """
    _check_sizes("interleave_permutation", C=C, b=b)
    if C % b:
        raise ValueError(f"interleave_permutation: b={b} does not divide C={C}")
    return permutation_index(C, b)


def permutation_matrix(C, b):
    """The C x C 0/1 matrix P of permute_channels(., b): (P x)[k] = x[perm[k]], P[k, perm[k]] = 1.

    P is orthogonal and P^T = permutation_matrix(C, C // b) (the inverse permutation).
    """
    P = np.zeros((C, C), dtype=np.int64)
    P[np.arange(C), interleave_permutation(C, b)] = 1
    return P


# ---- group convs as dense kernels ------------------------------------------------------------
def block_diagonal(W, groups):
    """The dense (C_out, C_in, kh, kw) kernel of a group conv with weight W (C_out, C_in/groups, kh, kw).

    Block g (rows g*C_out/G .., columns g*C_in/G ..) is W's rows of group g; everything off the
    diagonal blocks is zero: conv2d(x, W, groups=G) == conv2d(x, block_diagonal(W, G)).
    """
    W = _check_kernel("block_diagonal", "W", W)
    _check_sizes("block_diagonal", groups=groups)
    Co, Cg, kh, kw = W.shape
    if Co % groups:
        raise ValueError(f"block_diagonal: C_out={Co} is not divisible by groups={groups}")
    Cog = Co // groups
    dense = np.zeros((Co, Cg * groups, kh, kw), W.dtype)
    for g in range(groups):
        dense[g * Cog:(g + 1) * Cog, g * Cg:(g + 1) * Cg] = W[g * Cog:(g + 1) * Cog]
    return dense


def compose(W_primary, W_secondary=None, L=None, S=None):
    """The one regular k x k kernel (C_out, C_in, k, k) that an IGC conv equals.

    ``compose(igc_conv)`` for an ``nn.IGCConv``, or ``compose(W_primary, W_secondary, L, S)`` with
    W_primary (C_out, C_in/L, k, k), W_secondary (C_out, C_out/S, 1, 1). For every tap (i, j):

        W[:, :, i, j] = P_S @ blockdiag(W_d, S) @ P_L @ blockdiag(W_p, L)[:, :, i, j]

    with P_b = permutation_matrix(C_out, b). With S = C_out/L = M, P_S = P_L^T and this is the
    paper's W = P^T W_d P W_p. So conv2d(x, compose(...), stride, k//2) == IGCConv(x) exactly.
    The kernel has the weights' dtype.
    """
    if isinstance(W_primary, IGCConv):
        if not (W_secondary is None and L is None and S is None):
            raise TypeError("compose(igc_conv) takes the layer alone: its weights, L and S are its own")
        conv = W_primary
        W_primary, W_secondary, L, S = conv.primary.weight, conv.secondary.weight, conv.L, conv.S
    elif W_secondary is None or L is None or S is None:
        raise TypeError("compose: give an nn.IGCConv, or W_primary, W_secondary, L and S")
    W_primary = _check_kernel("compose", "W_primary", W_primary)
    W_secondary = _check_kernel("compose", "W_secondary", W_secondary)
    _check_sizes("compose", L=L, S=S)
    C = W_primary.shape[0]
    if W_secondary.shape[:1] != (C,) or W_secondary.shape[2:] != (1, 1):
        raise ValueError(f"compose: secondary weight {W_secondary.shape} must be (C_out, C_out/S, 1, 1) "
                         f"with C_out={C}")
    dense_p = block_diagonal(W_primary, L)                 # blockdiag(W_p, L), (C, C_in, k, k)
    dense_d = block_diagonal(W_secondary, S)[:, :, 0, 0]   # blockdiag(W_d, S), (C, C)
    A = permutation_matrix(C, S) @ dense_d @ permutation_matrix(C, L)  # the 1x1 part: P_S W_d P_L
    # the 0/1 permutation matrices are int64: keep the weights' dtype (a float32 layer gives a
    # float32 kernel, which F.conv2d takes next to float32 inputs)
    return np.einsum("oc,cikl->oikl", A, dense_p).astype(np.result_type(W_primary, W_secondary), copy=False)


def connectivity(W, tol=0.0):
    """(C_out, C_in) bool: output channel o depends on input channel c, i.e. some tap of W[o, c] is
    non-zero (|.| > tol). A regular conv is all True, a group conv with G groups block-diagonal."""
    W = _check_kernel("connectivity", "W", W)
    return np.abs(W).max(axis=(2, 3)) > tol


# ---- the four-branch form of a regular conv (paper section 3, the figure with W11 .. W22) ------
def four_branch(W, G):
    """Split a regular conv into G*G branches plus a fixed summing secondary.

    W (C_out, C_in, k, k) with G | C_in, G | C_out; blocks W_ij = W[i-th row block, j-th column block].
    Returns

        W_branches (G*C_out, C_in/G, k, k): a primary group conv with G*G groups over the input
            tiled G times, [x_1 .. x_G, x_1 .. x_G, ...]; group g = i*G + j reads x_j and holds
            W_ij, so branch (i, j) computes z_ij = W_ij(x_j)  ([x1, x2, x1, x2] for G = 2);
        W_sum (C_out, G*G, 1, 1): the fixed secondary, a 1x1 group conv with C_out/G groups whose
            every group is the G x G*G 0/1 matrix I_G (x) 1_G^T (row i sums inputs i*G .. i*G+G-1).

    See cross_summation for where W_sum sits (between two IGC permutations).
    """
    W = _check_kernel("four_branch", "W", W)
    _check_sizes("four_branch", G=G)
    Co, Ci, kh, kw = W.shape
    if Co % G or Ci % G:
        raise ValueError(f"four_branch: G={G} must divide C_out={Co} and C_in={Ci}")
    B, Bi = Co // G, Ci // G
    # W.reshape(G, B, G, Bi, ..)[i, :, j] is W_ij; order the groups (i, j) row-major.
    W_branches = W.reshape(G, B, G, Bi, kh, kw).transpose(0, 2, 1, 3, 4, 5).reshape(G * Co, Bi, kh, kw)
    E = np.kron(np.eye(G), np.ones((1, G)))          # (G, G*G): row i sums branches (i, 0..G-1)
    W_sum = np.tile(E, (B, 1)).astype(W.dtype).reshape(Co, G * G, 1, 1)
    return W_branches, W_sum


def tile_input(x, G):
    """[x, x, ..., x] along channels (G copies): (N, C, H, W) -> (N, G*C, H, W), as a broadcast
    multiply by ones so that the gradient of the copies sums back into x."""
    N, C, H, W = x.shape
    ones = Tensor(np.ones((1, G, 1, 1, 1), x.dtype), device=x.device)
    return (x.reshape(N, 1, C, H, W) * ones).reshape(N, G * C, H, W)


def cross_summation(z, G):
    """y_i = sum_j z_ij for the G*G branch outputs z (N, G*G*B, H, W) ordered (i, j), B channels each.

    Computed as an IGC secondary with fixed weights: P = permute(G*G) brings channel b of every
    branch together (partition b holds z_ij[b] at position i*G + j), a 1x1 group conv with B groups
    and the summing weights of four_branch sums over j, and permute(B) puts y back in (i, b) order.
    Returns (N, G*B, H, W).
    """
    z = z if isinstance(z, Tensor) else Tensor(z)
    B = z.shape[1] // (G * G)
    E = np.kron(np.eye(G), np.ones((1, G)))
    W_sum = Tensor(np.tile(E, (B, 1)).astype(z.dtype).reshape(G * B, G * G, 1, 1), device=z.device)
    u = F.permute_channels(z, G * G)        # channel b*G*G + (i*G + j) = z_ij[b]
    u = F.conv2d(u, W_sum, groups=B)        # channel b*G + i = sum_j z_ij[b]
    return F.permute_channels(u, B)         # channel i*B + b = y_i[b]


def four_branch_conv(x, W, G, stride=1, padding=None):
    """conv2d(x, W) evaluated in the four-branch form: tile -> G*G-group conv -> cross-summation.

    x (N, C_in, H, W) array or Tensor, W (C_out, C_in, k, k) array; padding defaults to k//2.
    Returns a Tensor (N, C_out, Ho, Wo), equal to conv2d(x, W, stride=stride, padding=padding).
    """
    x = x if isinstance(x, Tensor) else Tensor(x)
    padding = W.shape[2] // 2 if padding is None else padding
    W_branches, _ = four_branch(W, G)
    W_branches = Tensor(W_branches.astype(x.dtype), device=x.device)
    z = F.conv2d(tile_input(x, G), W_branches, stride=stride, padding=padding, groups=G * G)
    return cross_summation(z, G)


# ---- parameter counts and the "wider" analysis ----------------------------------------------
def igc_params(L, M, k=3):
    """Weights of one IGC conv with C_in = C_out = C = L*M and S = M:
    primary L * M*M*k*k  +  secondary M * L*L  =  C * (k*k*M + L)."""
    _check_sizes("igc_params", L=L, M=M, k=k)
    return L * M * M * k * k + M * L * L


def regular_params(C, k=3):
    """Weights of a regular k x k conv with C inputs and C outputs: C*C*k*k."""
    _check_sizes("regular_params", C=C, k=k)
    return C * C * k * k


def regular_width(budget, k=3):
    """The widest C whose regular k x k conv has at most `budget` weights."""
    return math.isqrt(budget // (k * k))


def width_at_equal_params(budget, L, k=3):
    """(M, C = L*M): the widest IGC conv with L primary partitions within `budget` weights; (0, 0)
    when not even M = 1 fits. Solves k*k*L*M^2 + L^2*M <= budget for the largest integer M."""
    a, b = k * k * L, L * L
    M = int((-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a))   # root of a M^2 + b M = budget
    while M > 0 and igc_params(L, M, k) > budget:                  # guard the float root
        M -= 1
    while igc_params(L, M + 1, k) <= budget:
        M += 1
    return M, L * M


def widest_split(budget, k=3):
    """(L, M) giving the widest C = L*M within `budget` weights (ties: the smaller L).

    For a real-valued width, C*(k*k*C/L + L) is smallest at L = k*sqrt(C), i.e. L = k*k*M: the
    two halves then cost the same, and C grows like budget^(2/3) instead of a regular conv's
    budget^(1/2). That is the paper's "wider than a regular convolution".
    """
    best = (1, width_at_equal_params(budget, 1, k)[0])
    for L in range(2, budget + 1):
        if igc_params(L, 1, k) > budget:
            break
        M, C = width_at_equal_params(budget, L, k)
        if C > best[0] * best[1]:
            best = (L, M)
    return best


def wider_table(budget, Ls, k=3):
    """Rows (L, M, C, params) of the widest IGC conv for each L in Ls within `budget` weights,
    the first row being the regular conv (L = None, M = None, C = regular_width)."""
    C = regular_width(budget, k)
    rows = [(None, None, C, regular_params(C, k))]
    for L in Ls:
        M, C = width_at_equal_params(budget, L, k)
        if M:
            rows.append((L, M, C, igc_params(L, M, k)))
    return rows
