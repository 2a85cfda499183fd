// The primary grouped conv, version 2: compile-time shapes and a 3-D grid.
// (Ladder: group_conv.cu v1 one thread per output; this file v2; group_conv_v3.cu v3.)
//
// Layouts and maths as in group_conv.cu. What v2 teaches: in v1 a thread spends most of its
// instructions on index arithmetic - the flat index is split into (n, co, ho, wo) with four
// integer divisions (~20 instructions each on a GPU, which has no integer divide unit), and the
// loops over KH, KW run with runtime bounds. Here
//   - KH, KW, SH, SW are template parameters: the window loops unroll completely, the bounds
//     checks of a window tap become predicates computed once per thread, and / SH, % SH are shifts;
//     the instantiation (0, 0, 0, 0) is the generic fallback that reads them at run time;
//   - the grid is 3-D, (N * C_out, ceil(Ho / blockDim.y), ceil(Wo / blockDim.x)) and the block
//     2-D over (wo, ho): a thread finds its (n, co) with one division and its pixel with none.
// The loop left inside is the one over the group's channels: per tap a multiply-add and two loads.
//
// instantiate KH, KW, SH, SW: (1, 1, 1, 1) (3, 3, 1, 1) (3, 3, 2, 2) (7, 7, 2, 2) (0, 0, 0, 0)

// A compile-time value when the template gives one (> 0), else the runtime argument.
template <int V>
__device__ __forceinline__ int ct_or(int runtime) { return V > 0 ? V : runtime; }

// Floor division for a possibly negative numerator.
__device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Forward: thread (wo, ho) of block (n * C_out + co) computes y[n, co, ho, wo].
template <typename T, int KH, int KW, int SH, int SW>
__global__ void conv2d_forward_v2(const T* __restrict__ x, const T* __restrict__ Wt, T* __restrict__ y,
                                  int N, int C_in, int H, int W, int C_out, int KH_, int KW_,
                                  int SH_, int SW_, int PH, int PW, int G, int Ho, int Wo) {
    const int kh = ct_or<KH>(KH_), kw = ct_or<KW>(KW_), sh = ct_or<SH>(SH_), sw = ct_or<SW>(SW_);
    const int n = blockIdx.x / C_out, co = blockIdx.x - n * C_out;
    const int ho = blockIdx.y * blockDim.y + threadIdx.y, wo = blockIdx.z * blockDim.x + threadIdx.x;
    if (ho >= Ho || wo >= Wo) return;
    const int Cg_in = C_in / G, g = co / (C_out / G);
    const int h0 = ho * sh - PH, w0 = wo * sw - PW;  // top-left input pixel of the window
    const T* xc = x + ((size_t)n * C_in + g * Cg_in) * H * W;  // x[n, g*Cg_in + c, :, :], c = 0
    const T* wc = Wt + (size_t)co * Cg_in * kh * kw;            // Wt[co, c, :, :], c = 0
    T acc = T(0);
    for (int c = 0; c < Cg_in; ++c, xc += H * W, wc += kh * kw) {
#pragma unroll
        for (int i = 0; i < kh; ++i) {
            const int h = h0 + i;
#pragma unroll
            for (int j = 0; j < kw; ++j) {
                const int w = w0 + j;
                // zero padding; the test does not depend on c, so it is a predicate set once
                if (h >= 0 && h < H && w >= 0 && w < W) acc += wc[i * kw + j] * xc[h * W + w];
            }
        }
    }
    y[(((size_t)n * C_out + co) * Ho + ho) * Wo + wo] = acc;
}

// Backward-data: thread (w, h) of block (n * C_in + ci) gathers gx[n, ci, h, w] (see v1). The
// loop over the group's output channels k is outermost and the taps are unrolled inside it, as
// in the forward: whether tap (i, j) reaches an output pixel (h + PH - i divisible by SH, ...) and
// where does not depend on k, so the compiler computes it once; with SH, SW known the divisions
// are shifts.
template <typename T, int KH, int KW, int SH, int SW>
__global__ void conv2d_backward_data_v2(const T* __restrict__ gy, const T* __restrict__ Wt, T* __restrict__ gx,
                                        int N, int C_in, int H, int W, int C_out, int KH_, int KW_,
                                        int SH_, int SW_, int PH, int PW, int G, int Ho, int Wo) {
    const int kh = ct_or<KH>(KH_), kw = ct_or<KW>(KW_), sh = ct_or<SH>(SH_), sw = ct_or<SW>(SW_);
    const int n = blockIdx.x / C_in, ci = blockIdx.x - n * C_in;
    const int h = blockIdx.y * blockDim.y + threadIdx.y, w = blockIdx.z * blockDim.x + threadIdx.x;
    if (h >= H || w >= W) return;
    const int Cg_in = C_in / G, Cg_out = C_out / G;
    const int g = ci / Cg_in, c = ci - g * Cg_in;
    const T* gyk = gy + ((size_t)n * C_out + g * Cg_out) * Ho * Wo;  // gy[n, g*Cg_out + k, :, :], k = 0
    const T* wk = Wt + ((size_t)g * Cg_out * Cg_in + c) * kh * kw;   // Wt[g*Cg_out + k, c, :, :], k = 0
    T acc = T(0);
    for (int k = 0; k < Cg_out; ++k, gyk += Ho * Wo, wk += Cg_in * kh * kw) {
        // (keeping 7x7 taps' tests and offsets in registers across k would take 167 of them)
#pragma unroll (KH > 0 && KH <= 3 ? KH : 1)
        for (int i = 0; i < kh; ++i) {
            const int hs = h + PH - i;  // = ho * SH when the tap (i) of output row ho covers row h
            if (hs < 0 || hs % sh != 0 || hs / sh >= Ho) continue;
#pragma unroll
            for (int j = 0; j < kw; ++j) {
                const int ws = w + PW - j;
                if (ws < 0 || ws % sw != 0 || ws / sw >= Wo) continue;
                acc += gyk[(hs / sh) * Wo + ws / sw] * wk[i * kw + j];
            }
        }
    }
    gx[(((size_t)n * C_in + ci) * H + h) * W + w] = acc;
}

// Backward-weight: one block per weight element as in v1, but the grid is (C_out, Cg_in, KH*KW)
// and the block 2-D over (wo, ho), so no index is decomposed inside the sum; the rows and
// columns whose tap falls in the padding are cut from the loop bounds instead of tested per term.
// blockDim.x * blockDim.y must be a power of two; shared_mem = that many T.
template <typename T, int KH, int KW, int SH, int SW>
__global__ void conv2d_backward_weight_v2(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ gW,
                                          int N, int C_in, int H, int W, int C_out, int KH_, int KW_,
                                          int SH_, int SW_, int PH, int PW, int G, int Ho, int Wo) {
    extern __shared__ __align__(16) unsigned char smem_raw[];  // 16-aligned: read as double
    T* partial = reinterpret_cast<T*>(smem_raw);
    const int kh = ct_or<KH>(KH_), kw = ct_or<KW>(KW_), sh = ct_or<SH>(SH_), sw = ct_or<SW>(SW_);
    const int co = blockIdx.x, c = blockIdx.y;
    const int i = blockIdx.z / kw, j = blockIdx.z - i * kw;
    const int Cg_in = C_in / G, ci = co / (C_out / G) * Cg_in + c;
    // rows ho with 0 <= ho*SH - PH + i < H, i.e. ho in [ho_lo, ho_hi); columns likewise
    // (C's / truncates toward zero: the upper bounds take the floor of a possibly negative quotient)
    const int ho_lo = max(0, (PH - i + sh - 1) / sh), ho_hi = min(Ho, floor_div(H - 1 + PH - i, sh) + 1);
    const int wo_lo = max(0, (PW - j + sw - 1) / sw), wo_hi = min(Wo, floor_div(W - 1 + PW - j, sw) + 1);
    const int tid = threadIdx.y * blockDim.x + threadIdx.x, nthreads = blockDim.x * blockDim.y;
    T acc = T(0);
    for (int n = 0; n < N; ++n) {
        const T* gyc = gy + ((size_t)n * C_out + co) * Ho * Wo;
        const T* xc = x + ((size_t)n * C_in + ci) * H * W + (i - PH) * W + (j - PW);  // x[.., ho*SH + i - PH, ..]
        for (int ho = ho_lo + threadIdx.y; ho < ho_hi; ho += blockDim.y)
            for (int wo = wo_lo + threadIdx.x; wo < wo_hi; wo += blockDim.x)
                acc += gyc[ho * Wo + wo] * xc[ho * sh * W + wo * sw];
    }
    partial[tid] = acc;
    __syncthreads();
    for (int s = nthreads / 2; s > 0; s /= 2) {  // tree, as in v1: deterministic, no atomics
        if (tid < s) partial[tid] += partial[tid + s];
        __syncthreads();
    }
    if (tid == 0) gW[(((size_t)co * Cg_in + c) * kh + i) * kw + j] = partial[0];
}
