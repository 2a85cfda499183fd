"""The claims of the IGC paper (section 3), proven on drawn shapes in float64.

Each test states its claim in the first line of its docstring. The dense objects (block-diagonal
kernels, permutation matrices, the composed kernel) come from igc_np/igc.py; the engine's ops are
checked against them and against the direct conv of tests/reference.py.
"""
import numpy as np
from hypothesis import given, strategies as st

import igc_np as ig
from igc_np import functional as F
from igc_np import igc
from igc_np.ops.reference import permutation_index

from reference import conv2d_direct, permute_by_formula
from strategies import arrays, channels_and_factor, conv_cases, divisors, igc_cases

seeds = st.integers(0, 2**32 - 1)


def make_igc(case, seed):
    """An IGCConv in float64 with random (He-normal) weights, and its two weights as arrays."""
    layer = ig.nn.IGCConv(case["C_in"], case["C_out"], case["L"], case["S"], kernel_size=case["k"],
                          stride=case["stride"], rng=np.random.default_rng(seed)).to(dtype=np.float64)
    return layer, layer.primary.weight.numpy(), layer.secondary.weight.numpy()


def random_weights(rng, C_in, C_out, L, S, k):
    """Standard-normal primary (C_out, C_in/L, k, k) and secondary (C_out, C_out/S, 1, 1) weights."""
    return rng.standard_normal((C_out, C_in // L, k, k)), rng.standard_normal((C_out, C_out // S, 1, 1))


# ---- 1. group conv ---------------------------------------------------------------------------
@given(conv_cases(), seeds)
def test_group_conv_is_regular_conv_with_block_diagonal_weight(case, seed):
    """A group conv with G groups is the regular conv whose kernel is block-diagonal with G blocks (paper sec. 3,
    group convolutions).
    """
    x_shape, W_shape, stride, padding, groups = case
    rng = np.random.default_rng(seed)
    x, W = rng.standard_normal(x_shape), rng.standard_normal(W_shape)
    dense = igc.block_diagonal(W, groups)
    assert dense.shape == (W_shape[0], x_shape[1]) + W_shape[2:]
    y = F.conv2d(ig.Tensor(x), ig.Tensor(W), stride=stride, padding=padding, groups=groups).numpy()
    np.testing.assert_allclose(y, conv2d_direct(x, dense, stride, padding), rtol=1e-10, atol=1e-10)
    # off the diagonal blocks there is nothing: the connectivity is exactly block-diagonal
    blocks = np.kron(np.eye(groups, dtype=bool),
                     np.ones((W_shape[0] // groups, x_shape[1] // groups), dtype=bool))
    assert not igc.connectivity(dense)[~blocks].any()


# ---- 2. the permutation ----------------------------------------------------------------------
@given(channels_and_factor(), st.integers(1, 2), seeds)
def test_permutation_formula_inverse_gradient_and_matrix(Cb, N, seed):
    """permute_channels(b) sends channel i*(C/b)+j to j*b+i, permute(C/b) undoes it, and its gradient is that
    inverse (paper sec. 3, the permutation P).
    """
    C, b = Cb
    rng = np.random.default_rng(seed)
    x, gy = rng.standard_normal((N, C, 3, 2)), rng.standard_normal((N, C, 3, 2))
    xt = ig.Tensor(x, requires_grad=True)
    y = F.permute_channels(xt, b)
    np.testing.assert_array_equal(y.numpy(), permute_by_formula(x, b))
    perm = igc.interleave_permutation(C, b)
    np.testing.assert_array_equal(perm, permutation_index(C, b))
    for i in range(b):
        for j in range(C // b):
            assert perm[j * b + i] == i * (C // b) + j
    # permute(b) then permute(C/b) is the identity
    np.testing.assert_array_equal(F.permute_channels(y, C // b).numpy(), x)
    # backward = the inverse permutation: gx[perm[k]] = gy[k], i.e. permute(gy, C/b)
    y.backward(gy)
    np.testing.assert_array_equal(xt.grad, F.permute_channels(ig.Tensor(gy), C // b).numpy())
    np.testing.assert_array_equal(xt.grad[:, perm], gy)
    # the matrix: (P x)[k] = x[perm[k]], orthogonal, P^T is the matrix of permute(C/b)
    P = igc.permutation_matrix(C, b)
    np.testing.assert_array_equal(np.einsum("kc,nchw->nkhw", P, x), y.numpy())
    np.testing.assert_array_equal(P @ P.T, np.eye(C, dtype=P.dtype))
    np.testing.assert_array_equal(P.T, igc.permutation_matrix(C, C // b))


# ---- 3. IGC conv == one regular conv ---------------------------------------------------------
@given(igc_cases(), seeds)
def test_igc_conv_equals_regular_conv_with_composed_kernel(case, seed):
    """An IGC conv (primary, P, secondary, P back) is the regular conv with kernel W = P^T W_d P W_p, forward and
    input gradient (paper sec. 3, composition).
    """
    layer, Wp, Wd = make_igc(case, seed)
    L, S, k, s = case["L"], case["S"], case["k"], case["stride"]
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal(case["x_shape"])
    W = igc.compose(Wp, Wd, L, S)
    assert W.shape == (case["C_out"], case["C_in"], k, k)
    pad = (k // 2, k // 2)

    xt = ig.Tensor(x, requires_grad=True)
    y = layer(xt)
    y_regular = conv2d_direct(x, W, (s, s), pad)
    np.testing.assert_allclose(y.numpy(), y_regular, rtol=1e-10, atol=1e-10)

    gy = rng.standard_normal(y.shape)
    y.backward(gy)
    xr = ig.Tensor(x, requires_grad=True)
    F.conv2d(xr, ig.Tensor(W), stride=s, padding=k // 2).backward(gy)
    np.testing.assert_allclose(xt.grad, xr.grad, rtol=1e-10, atol=1e-10)
    # independent of the engine's conv backward: gx is the adjoint, <gx, v> = <gy, conv(v, W)>
    v = rng.standard_normal(x.shape)
    np.testing.assert_allclose(np.vdot(xt.grad, v), np.vdot(gy, conv2d_direct(v, W, (s, s), pad)),
                               rtol=1e-9, atol=1e-9)


# ---- 4. complementarity -----------------------------------------------------------------------
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.data())
def test_interleaving_makes_every_output_depend_on_every_input(L, M, m_in, data):
    """With S = M (interleaved, complementary partitions) every output channel depends on every input channel; S
    > M or no permutation leaves zeros (paper sec. 3, complementary partitions).
    """
    C, C_in = L * M, L * m_in
    rng = np.random.default_rng(data.draw(seeds))
    S = data.draw(st.sampled_from(divisors(C)), label="S")
    Wp, Wd = random_weights(rng, C_in, C, L, S, 3)
    conn = igc.connectivity(igc.compose(Wp, Wd, L, S))
    # secondary partition s reads C/S consecutive channels after P, which come from C/S
    # consecutive primary partitions (mod L): all L of them iff C/S >= L, i.e. S <= M.
    assert conn.all() == (S <= M)
    if S == M:
        assert conn.all()
    # Break the interleaving: drop both permutations (secondary with M groups straight on the
    # primary output). Then partitions of L consecutive primary outputs see few primary partitions.
    Wp, Wd = random_weights(rng, C_in, C, L, M, 3)
    no_perm = np.einsum("oc,cikl->oikl", igc.block_diagonal(Wd, M)[:, :, 0, 0], igc.block_diagonal(Wp, L))
    assert igc.connectivity(no_perm).all() == (L == 1 or M == 1)


# ---- 5. special cases -------------------------------------------------------------------------
@given(igc_cases(max_L=1, general_S=False), seeds)
def test_L1_is_a_regular_conv(case, seed):
    """L = 1: the primary is a regular conv and the secondary per-channel, so W = diag(W_d) W_p and every regular
    conv is one (paper sec. 3, connection to regular convolutions).
    """
    layer, Wp, Wd = make_igc(case, seed)
    C = case["C_out"]
    assert case["L"] == 1 and case["S"] == C
    np.testing.assert_array_equal(igc.permutation_matrix(C, 1), np.eye(C, dtype=int))
    np.testing.assert_allclose(igc.compose(Wp, Wd, 1, C), Wd[:, 0, 0, 0, None, None, None] * Wp, rtol=1e-12)
    # any regular conv W is an IGC conv with L = 1: primary W, secondary all ones
    np.testing.assert_allclose(igc.compose(Wp, np.ones_like(Wd), 1, C), Wp, rtol=1e-12)


@given(st.integers(1, 8), st.sampled_from([1, 3]), st.integers(1, 2), seeds)
def test_M1_is_depthwise_then_dense_pointwise(L, k, stride, seed):
    """M = 1: the primary is a depthwise k x k conv and the secondary a dense 1x1 conv, the Xception block: W[o,
    c] = W_d[o, c] w_c (paper sec. 3, connection to Xception).
    """
    case = dict(L=L, M=1, S=1, C_in=L, C_out=L, k=k, stride=stride)
    layer, Wp, Wd = make_igc(case, seed)
    W = igc.compose(Wp, Wd, L, 1)
    D, w_depthwise = Wd[:, :, 0, 0], Wp[:, 0]          # (C, C) and (C, k, k)
    np.testing.assert_allclose(W, D[:, :, None, None] * w_depthwise[None], rtol=1e-12)
    np.testing.assert_array_equal(igc.permutation_matrix(L, L), np.eye(L, dtype=int))  # P is the identity
    # and the engine agrees: IGCConv == depthwise conv, then dense 1x1 conv
    x = ig.Tensor(np.random.default_rng(seed + 1).standard_normal((2, L, 5, 4)))
    xception = F.conv2d(F.conv2d(x, ig.Tensor(Wp), stride=stride, padding=k // 2, groups=L), ig.Tensor(Wd))
    np.testing.assert_allclose(layer(x).numpy(), xception.numpy(), rtol=1e-10, atol=1e-10)


@given(igc_cases(general_S=False), seeds)
def test_all_ones_secondary_is_group_conv_with_summation_fusion(case, seed):
    """With W_d all ones, every output partition is the sum of the L primary partitions' outputs: a group conv
    with summation fusion, i.e. L copies of the regular conv C_in -> M with kernel [W_p^1 .. W_p^L] (paper
    sec. 3, connection to summation fusion).
    """
    L, M, k = case["L"], case["M"], case["k"]
    layer, Wp, Wd = make_igc(case, seed)
    layer.secondary.weight.data = np.ones_like(Wd)
    # the composed kernel: K = sum of the L row blocks of blockdiag(W_p), tiled L times
    K = igc.block_diagonal(Wp, L).reshape((L, M) + (case["C_in"], k, k)).sum(axis=0)
    np.testing.assert_allclose(igc.compose(Wp, np.ones_like(Wd), L, M), np.tile(K, (L, 1, 1, 1)), rtol=1e-12)
    # in the engine: y = [z_1 + ... + z_L] * L copies, z_l the output of primary partition l
    x = ig.Tensor(np.random.default_rng(seed + 1).standard_normal(case["x_shape"]))
    z = layer.primary(x).numpy()
    N, _, H, W = z.shape
    summed = z.reshape(N, L, M, H, W).sum(axis=1)
    np.testing.assert_allclose(layer(x).numpy(), np.tile(summed, (1, L, 1, 1)), rtol=1e-10, atol=1e-10)


# ---- 6. the four-branch form ------------------------------------------------------------------
def _check_four_branch(x, W, G, stride):
    k = W.shape[2]
    pad = (k // 2, k // 2)
    xt = ig.Tensor(x, requires_grad=True)
    y = igc.four_branch_conv(xt, W, G, stride=stride)
    np.testing.assert_allclose(y.numpy(), conv2d_direct(x, W, (stride, stride), pad), rtol=1e-10, atol=1e-10)
    gy = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(gy)
    xr = ig.Tensor(x, requires_grad=True)
    F.conv2d(xr, ig.Tensor(W), stride=stride, padding=k // 2).backward(gy)
    np.testing.assert_allclose(xt.grad, xr.grad, rtol=1e-10, atol=1e-10)


@given(arrays((2, 4, 5, 5)), arrays((6, 4, 3, 3)))
def test_four_branch_form_G2_as_in_the_figure(x, W):
    """A regular conv is four branches W11(x1), W12(x2), W21(x1), W22(x2) (a 4-group conv over [x1, x2, x1, x2])
    and the cross-summation y1 = z11 + z12, y2 = z21 + z22 (paper sec. 3, four-branch figure).
    """
    W_branches, W_sum = igc.four_branch(W, 2)
    W11, W12, W21, W22 = W[:3, :2], W[:3, 2:], W[3:, :2], W[3:, 2:]
    np.testing.assert_array_equal(W_branches, np.concatenate([W11, W12, W21, W22]))
    x1, x2 = x[:, :2], x[:, 2:]
    np.testing.assert_array_equal(igc.tile_input(ig.Tensor(x), 2).numpy(), np.concatenate([x1, x2, x1, x2], 1))
    # the fixed secondary: in each of the 3 groups, row i sums branches (i, 1) and (i, 2)
    np.testing.assert_array_equal(W_sum[:, :, 0, 0], np.tile([[1, 1, 0, 0], [0, 0, 1, 1]], (3, 1)))
    conv = lambda a, w: conv2d_direct(a, w, padding=(1, 1))
    np.testing.assert_allclose(conv(x, W), np.concatenate([conv(x1, W11) + conv(x2, W12),
                                                           conv(x1, W21) + conv(x2, W22)], 1), rtol=1e-10)
    _check_four_branch(x, W, 2, 1)


@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 3]),
       st.integers(1, 2), seeds)
def test_four_branch_form_any_G(G, b_in, b_out, k, stride, seed):
    """For any G partitions, regular conv == G*G-branch group conv over the G-times tiled input + cross-summation
    (paper sec. 3, four-branch form).
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, G * b_in, 5, 6))
    W = rng.standard_normal((G * b_out, G * b_in, k, k))
    _check_four_branch(x, W, G, stride)


@given(st.integers(1, 4), st.integers(1, 3), seeds)
def test_cross_summation_is_permutation_summing_secondary_permutation_back(G, B, seed):
    """The cross-summation y_i = sum_j z_ij equals permute(G*G) -> 1x1 group conv with B groups of fixed summing
    weights -> permute(B) (paper sec. 3, four-branch form).
    """
    z = np.random.default_rng(seed).standard_normal((2, G * G * B, 3, 4))
    direct = z.reshape(2, G, G, B, 3, 4).sum(axis=2).reshape(2, G * B, 3, 4)  # axes (i, j, b): sum over j
    np.testing.assert_allclose(igc.cross_summation(z, G).numpy(), direct, rtol=1e-12, atol=1e-12)
    # the same three steps spelled out with dense matrices: P_B E P_{G*G}
    _, W_sum = igc.four_branch(np.zeros((G * B, G, 1, 1)), G)
    A = igc.permutation_matrix(G * B, B) @ igc.block_diagonal(W_sum, B)[:, :, 0, 0] @ \
        igc.permutation_matrix(G * G * B, G * G)
    np.testing.assert_allclose(np.einsum("oc,nchw->nohw", A, z), direct, rtol=1e-12, atol=1e-12)


# ---- 7. parameters and width ------------------------------------------------------------------
@given(st.integers(1, 12), st.integers(1, 12))
def test_parameter_count(L, M):
    """One IGC conv with C = L*M in and out, 3x3, has L*M*M*9 + M*L*L = C*(9M + L) weights (paper sec. 3,
    analysis).
    """
    C = L * M
    layer = ig.nn.IGCConv(C, C, L, M, kernel_size=3)
    assert layer.num_parameters() == igc.igc_params(L, M) == L * M * M * 9 + M * L * L == C * (9 * M + L)
    assert layer.primary.weight.size == L * M * M * 9 and layer.secondary.weight.size == M * L * L
    assert igc.regular_params(C) == ig.nn.Conv2d(C, C, 3).num_parameters()


@given(st.integers(9, 200_000), st.integers(1, 64))
def test_width_at_equal_params_is_the_widest(budget, L):
    """width_at_equal_params gives the largest M with L*M*M*9 + M*L*L within the budget; the best split has L
    close to 9M (paper sec. 3, wider than regular convolutions).
    """
    M, C = igc.width_at_equal_params(budget, L)
    assert C == L * M
    assert igc.igc_params(L, M + 1) > budget
    if M:
        assert igc.igc_params(L, M) <= budget
    Cr = igc.regular_width(budget)
    assert igc.regular_params(Cr) <= budget < igc.regular_params(Cr + 1)
    Lb, Mb = igc.widest_split(budget)
    assert Lb * Mb >= max(C, igc.width_at_equal_params(budget, 1)[1])
