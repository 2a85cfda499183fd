// The secondary half of an IGC conv (paper section 3; docs/reference_protocol.md), fused:
//     y = permute(conv1x1_groups_S(permute(x, L), W2), S)
// computed with the two permutations folded into the indexing, so neither permuted copy of the
// activations is ever written.
//
// Layouts (NCHW, C-contiguous): x (N, C, H, W), the primary group conv's output, C = L*M;
// W2 (C, K, 1, 1) with K = C/S channels per secondary group; y (N, C, H, W).
//
// Index algebra (u = permute(x, L), v = the group conv's output, K = C/S):
//   u[j*L + i] = x[i*M + j]                      so  u[a] = x[(a % L)*M + a / L]
//   v[o] = sum_{k<K} W2[o, k] * u[(o/K)*K + k]   (o's group is o/K)
//   y[q*S + p] = v[p*K + q]                      (p < S, q < K)
// hence, for output channel c with p = c % S, q = c / S, o = p*K + q:
//   y[c] = sum_{k<K} W2[o, k] * x[src(p*K + k)],  src(a) = (a % L)*M + a / L.
// Inverting src: x channel cx sits at a = (cx % M)*L + cx / M = p*K + k (p = a / K, k = a % K),
// and it feeds the outputs c = q*S + p of that same group p, for every q < K.
//
// Versions (the launchers in kernels/interleaved_secondary.py pick one; benchmarks/bench_gpu.py times each):
//   v1 interleaved_secondary_{forward,backward_data,backward_weight}: one thread per output
//      element with the K-term dot product read straight from global memory; backward-weight one
//      block per weight element with a shared-memory tree.
//   v2 interleaved_secondary_{forward,backward_data}_tiled, interleaved_secondary_backward_weight_
//      {partial,sum}: per (image n, group p) the op is a (K x K) by (K x HW) GEMM whose input rows
//      are gathered through src() and whose output rows are scattered to q*S + p; v2 computes it
//      in 32 x 32 output tiles from shared-memory tiles of W2 and x (each value loaded once per
//      tile instead of once per output), the permutations folded into the tile loads' row
//      indices. Backward-weight is a deterministic two-pass reduction: pass 1 writes one partial
//      (K x K) tile per chunk of the N*HW terms, pass 2 adds the partials in chunk order.

// src(a): the x channel that lands at position a of permute(x, L).
__device__ __forceinline__ int interleave_src(int a, int L, int M) { return (a % L) * M + a / L; }

// Forward: one thread per output element y[n, c, hw] (grid-stride loop).
template <typename T>
__global__ void interleaved_secondary_forward(const T* __restrict__ x, const T* __restrict__ W2, T* __restrict__ y,
                                              int N, int C, int HW, int L, int S) {
    const int M = C / L, K = C / S;
    const int total = N * C * HW;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
        // idx = (n * C + c) * HW + pix
        const int pix = idx % HW;
        const int c = (idx / HW) % C;
        const int n = idx / (HW * C);
        const int p = c % S, q = c / S;  // y channel c = q*S + p is v channel o = p*K + q
        const T* w = W2 + (size_t)(p * K + q) * K;  // row W2[o, :]
        const T* xn = x + (size_t)n * C * HW + pix;
        T acc = T(0);
        for (int k = 0; k < K; ++k) acc += w[k] * xn[(size_t)interleave_src(p * K + k, L, M) * HW];
        y[idx] = acc;
    }
}

// Backward-data: gx[n, cx, hw] = sum_{q<K} W2[p*K + q, k] * gy[n, q*S + p, hw] with
// a = (cx % M)*L + cx / M, p = a / K, k = a % K. One thread per gx element, no atomics.
template <typename T>
__global__ void interleaved_secondary_backward_data(const T* __restrict__ gy, const T* __restrict__ W2,
                                                    T* __restrict__ gx, int N, int C, int HW, int L, int S) {
    const int M = C / L, K = C / S;
    const int total = N * C * HW;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
        // idx = (n * C + cx) * HW + pix
        const int pix = idx % HW;
        const int cx = (idx / HW) % C;
        const int n = idx / (HW * C);
        const int a = (cx % M) * L + cx / M;  // position of x channel cx in permute(x, L)
        const int p = a / K, k = a % K;       // secondary group p, input k of that group
        const T* gyn = gy + (size_t)n * C * HW + pix;
        T acc = T(0);
        for (int q = 0; q < K; ++q)
            acc += W2[(size_t)(p * K + q) * K + k] * gyn[(size_t)(q * S + p) * HW];
        gx[idx] = acc;
    }
}

// Backward-weight: gW2[o, k] = sum_{n, hw} gy[n, q*S + p, hw] * x[n, src(p*K + k), hw] with
// p = o / K, q = o % K. One block per weight element (grid-stride over blocks); threads stride
// over the N*HW terms and reduce in shared memory, as conv2d_backward_weight does. blockDim.x a
// power of two, shared_mem = blockDim.x * sizeof(T).
template <typename T>
__global__ void interleaved_secondary_backward_weight(const T* __restrict__ x, const T* __restrict__ gy,
                                                      T* __restrict__ gW2, int N, int C, int HW, int L, int S) {
    extern __shared__ __align__(16) unsigned char smem_raw[];  // aligned for double
    T* partial = reinterpret_cast<T*>(smem_raw);
    const int M = C / L, K = C / S;
    const int terms = N * HW;
    for (int widx = blockIdx.x; widx < C * K; widx += gridDim.x) {
        // widx = o * K + k
        const int k = widx % K, o = widx / K;
        const int p = o / K, q = o % K;
        const int cy = q * S + p, cx = interleave_src(p * K + k, L, M);
        T acc = T(0);
        for (int t = threadIdx.x; t < terms; t += blockDim.x) {
            // t = n * HW + pix
            const int pix = t % HW, n = t / HW;
            acc += gy[((size_t)n * C + cy) * HW + pix] * x[((size_t)n * C + cx) * HW + pix];
        }
        partial[threadIdx.x] = acc;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s /= 2) {  // tree reduction, see group_conv.cu
            if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
            __syncthreads();
        }
        if (threadIdx.x == 0) gW2[widx] = partial[0];
        __syncthreads();  // partial[0] is read before the next element overwrites partial[]
    }
}

// ---- v2: tiled grouped GEMM ------------------------------------------------------------------
#define IS_TR 32  // output rows of a tile (q for forward, k for backward-data); also 8 and 4, below
#define IS_TP 32  // pixels of a 32-row tile
#define IS_TK 16  // reduction rows loaded per step (at most; TR when TR is smaller)
#define IS_THREADS 256  // TP pixels x TR/4 row lanes; each thread owns 4 output rows of the tile
// The tile's shared arrays, sized for every TR: A is TR x (TK + 1) (at most 32 x 17), B is TK x TP
// (32-row tiles: 16 x 32; 8-row: 8 x 128; 4-row: 4 x 256).
#define IS_A_SIZE (IS_TR * (IS_TK + 1))
#define IS_B_SIZE (4 * IS_THREADS)
// Small groups (IGC-L4M32: K = 4) waste a 32-row tile: 4 of 32 rows and 4 of 16 reduction steps
// do useful work (3% of the FMAs). Tiles of TR = 8 or 4 rows x 1024/TR pixels keep the same 256
// threads and 4 rows a thread; the launcher picks TR from K and HW (kernels/interleaved_secondary.py, tile_rows).
// instantiate TR: (32) (8) (4)

// One tile of out(o, pix) = sum_r A(o, r) * in(r, pix) for image n and group p, where (forward)
// A(o, r) = W2[p*K + o, r], in row r = x channel src(p*K + r), out row o = y channel o*S + p, or
// (BACKWARD: backward-data) A(o, r) = W2[p*K + r, o], in row r = gy channel r*S + p, out row o =
// gx channel src(p*K + o). Tiles (TR rows x TP pixels) are numbered (n, p, row tile, pixel tile),
// pixel tile fastest.
template <typename T, int TR, bool BACKWARD>
__device__ void interleaved_tile(const T* __restrict__ in, const T* __restrict__ W2, T* __restrict__ out,
                                 int N, int C, int HW, int L, int S, int tile) {
    constexpr int TK = TR < IS_TK ? TR : IS_TK, LANES = TR / 4, TP = IS_THREADS / LANES;
    __shared__ T As[IS_A_SIZE];  // [TR][TK + 1]: +1, the k-loop reads a column, avoid bank conflicts
    __shared__ T Bs[IS_B_SIZE];  // [TK][TP]
    const int M = C / L, K = C / S;
    const int pix_tiles = (HW + TP - 1) / TP, row_tiles = (K + TR - 1) / TR;
    const int pt = tile % pix_tiles, rt = (tile / pix_tiles) % row_tiles;
    const int p = (tile / (pix_tiles * row_tiles)) % S, n = tile / (pix_tiles * row_tiles * S);
    const int tx = threadIdx.x % TP, ty = threadIdx.x / TP;  // pixel lane, row lane (0..LANES-1)
    const int pix = pt * TP + tx;
    const T* in_n = in + (size_t)n * C * HW;
    T acc[4] = {T(0), T(0), T(0), T(0)};
    for (int r0 = 0; r0 < K; r0 += TK) {
        for (int e = threadIdx.x; e < TR * TK; e += IS_THREADS) {  // A tile, zero outside
            const int o = rt * TR + e / TK, r = r0 + e % TK;
            As[(e / TK) * (TK + 1) + e % TK] = (o < K && r < K)
                ? W2[BACKWARD ? (size_t)(p * K + r) * K + o : (size_t)(p * K + o) * K + r] : T(0);
        }
        for (int e = threadIdx.x; e < TK * TP; e += IS_THREADS) {  // input tile, coalesced
            const int r = r0 + e / TP, q = pt * TP + e % TP;
            const int ch = BACKWARD ? r * S + p : interleave_src(p * K + r, L, M);
            Bs[e] = (r < K && q < HW) ? in_n[(size_t)ch * HW + q] : T(0);
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < TK; ++r) {
            const T b = Bs[r * TP + tx];
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[j] += As[(ty + LANES * j) * (TK + 1) + r] * b;
        }
        __syncthreads();  // the next step overwrites the tiles
    }
    if (pix < HW) {
        for (int j = 0; j < 4; ++j) {
            const int o = rt * TR + ty + LANES * j;
            if (o >= K) continue;
            const int ch = BACKWARD ? interleave_src(p * K + o, L, M) : o * S + p;
            out[((size_t)n * C + ch) * HW + pix] = acc[j];
        }
    }
}

// v2 forward: blockDim.x = IS_THREADS, any grid (grid-stride over the N*S*row_tiles*pix_tiles tiles).
// 4 blocks of 256 threads per SM cap ptxas at 64 registers (the double instantiation wanted 72)
template <typename T, int TR>
__global__ void __launch_bounds__(IS_THREADS, 4)
interleaved_secondary_forward_tiled(const T* __restrict__ x, const T* __restrict__ W2,
                                                    T* __restrict__ y, int N, int C, int HW, int L, int S) {
    constexpr int TP = IS_THREADS / (TR / 4);
    const int K = C / S;
    const int tiles = N * S * ((K + TR - 1) / TR) * ((HW + TP - 1) / TP);
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) interleaved_tile<T, TR, false>(x, W2, y, N, C, HW, L, S, t);
}

// v2 backward-data: the same tiles with W2 transposed inside each group (see interleaved_tile).
template <typename T, int TR>
__global__ void __launch_bounds__(IS_THREADS, 4)
interleaved_secondary_backward_data_tiled(const T* __restrict__ gy, const T* __restrict__ W2,
                                                          T* __restrict__ gx, int N, int C, int HW, int L, int S) {
    constexpr int TP = IS_THREADS / (TR / 4);
    const int K = C / S;
    const int tiles = N * S * ((K + TR - 1) / TR) * ((HW + TP - 1) / TP);
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) interleaved_tile<T, TR, true>(gy, W2, gx, N, C, HW, L, S, t);
}

#define IS_TT 32  // terms (n, pix) per step of the backward-weight tiles

// v2 backward-weight, pass 1: partial[chunk, p*K + q, k] = sum over the terms t of the chunk
// [chunk*chunk_len, min((chunk+1)*chunk_len, N*HW)) of gy[n, q*S + p, pix] * x[n, src(p*K + k), pix],
// t = n*HW + pix. Tiles (chunk, p, q tile, k tile), 32 x 32 weights each; blockDim.x = IS_THREADS,
// any grid. partial has n_chunks * C * K elements.
template <typename T>
__global__ void interleaved_secondary_backward_weight_partial(const T* __restrict__ x, const T* __restrict__ gy,
                                                              T* __restrict__ partial, int N, int C, int HW,
                                                              int L, int S, int chunk_len, int n_chunks) {
    __shared__ T Gs[IS_TR][IS_TT + 1];
    __shared__ T Xs[IS_TR][IS_TT + 1];
    const int M = C / L, K = C / S, terms = N * HW;
    const int kt_n = (K + IS_TR - 1) / IS_TR;
    const int tiles = n_chunks * S * kt_n * kt_n;
    const int tx = threadIdx.x % IS_TT, ty = threadIdx.x / IS_TT;  // k lane, q lane (0..7)
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int kt = tile % kt_n, qt = (tile / kt_n) % kt_n;
        const int p = (tile / (kt_n * kt_n)) % S, chunk = tile / (kt_n * kt_n * S);
        const int t_begin = chunk * chunk_len;
        const int t_end = t_begin + chunk_len < terms ? t_begin + chunk_len : terms;
        T acc[4] = {T(0), T(0), T(0), T(0)};
        for (int t0 = t_begin; t0 < t_end; t0 += IS_TT) {
            for (int e = threadIdx.x; e < IS_TR * IS_TT; e += IS_THREADS) {  // 32 rows x 32 terms each
                const int row = e / IS_TT, t = t0 + e % IS_TT;
                const bool in_t = t < t_end;
                const int n = in_t ? t / HW : 0, pix = in_t ? t % HW : 0;
                const int q = qt * IS_TR + row, k = kt * IS_TR + row;
                Gs[row][e % IS_TT] = (in_t && q < K) ? gy[((size_t)n * C + q * S + p) * HW + pix] : T(0);
                Xs[row][e % IS_TT] = (in_t && k < K)
                    ? x[((size_t)n * C + interleave_src(p * K + k, L, M)) * HW + pix] : T(0);
            }
            __syncthreads();
            for (int t = 0; t < IS_TT; ++t) {
                const T xv = Xs[tx][t];
                for (int j = 0; j < 4; ++j) acc[j] += Gs[ty + 8 * j][t] * xv;
            }
            __syncthreads();
        }
        const int k = kt * IS_TR + tx;
        for (int j = 0; j < 4; ++j) {
            const int q = qt * IS_TR + ty + 8 * j;
            if (q < K && k < K) partial[((size_t)chunk * C + p * K + q) * K + k] = acc[j];
        }
    }
}

// v2 backward-weight, pass 2: gW2[w] = sum over chunks, in chunk order, of partial[chunk, w]
// (one thread per weight element, consecutive threads read consecutive addresses).
template <typename T>
__global__ void interleaved_secondary_backward_weight_sum(const T* __restrict__ partial, T* __restrict__ gW2,
                                                          int n_weights, int n_chunks) {
    for (int w = blockIdx.x * blockDim.x + threadIdx.x; w < n_weights; w += gridDim.x * blockDim.x) {
        T acc = T(0);
        for (int c = 0; c < n_chunks; ++c) acc += partial[(size_t)c * n_weights + w];
        gW2[w] = acc;
    }
}
