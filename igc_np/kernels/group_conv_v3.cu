// The primary grouped conv, version 3: shared-memory tiles, register blocking, a two-pass
// reduction for the weight gradient.
// (Ladder: group_conv.cu v1 one thread per output; group_conv_v2.cu v2 compile-time shapes and
// a 3-D grid; this file v3.) Layouts and maths as in group_conv.cu.
//
// What v3 teaches:
//   - forward and backward-data: a block stages the input patch its output tile needs (and the
//     weights of its channels) in shared memory once, for a chunk of input channels at a time;
//     every thread then computes RW x CQ outputs (RW pixels of a row, CQ channels) from registers,
//     so each shared-memory load feeds several multiply-adds. In v1/v2 every multiply-add loads
//     both operands from global memory (through the caches).
//     The RW pixels of a thread are tx apart (not adjacent), so that consecutive threads read
//     consecutive shared-memory words (no bank conflicts at stride 1) and write consecutive
//     outputs (coalesced).
//   - backward-weight: v1/v2 run one block per weight element, and every block re-reads all of x
//     and gy. Here a block takes a tile of the reduction space (an 8x8 output tile of NB images),
//     loads its x and gy tiles into shared memory once, and accumulates every weight of a slice
//     of channels in registers (a thread owns CQ output channels x KW taps of one (c, i)). Each
//     block writes its partial sums to partial[tile, weight]; a second kernel adds the tiles in
//     a fixed order. No atomics: the same bits on every run.
//
// instantiate KH, KW, SH, SW: (1, 1, 1, 1) (3, 3, 1, 1) (3, 3, 2, 2) (7, 7, 2, 2) (0, 0, 0, 0)

#define IGC_RW 4   // output pixels per thread (along a row, tx apart)
#define IGC_CQ 2   // output (forward) or input (backward-data) channels per thread
#define IGC_TH 8   // backward-weight: output tile rows
#define IGC_TW 8   // backward-weight: output tile columns (a power of two: p / TW is a shift)
#define IGC_GP (IGC_TH * IGC_TW + 1)  // backward-weight: words between two staged gy planes. Not 64:
                   // threads of a warp read different planes at the same pixel, and planes 64 words
                   // apart fall in one bank (~6-way conflicts at M = 2); 65 spreads them.
// The launcher (kernels/conv.py) reads these #defines and the __launch_bounds__ below: they are
// the one statement of the tile geometry.
// Blocks of at most 128 (forward, backward-data) and 256 (backward-weight) threads; the second
// number asks ptxas for 64 registers a thread at most, so that 2048 threads fit an SM's 64K registers.
#define IGC_TILE_BOUNDS __launch_bounds__(128, 8)
#define IGC_WEIGHT_BOUNDS __launch_bounds__(256, 4)

template <int V>
__device__ __forceinline__ int ct3(int runtime) { return V > 0 ? V : runtime; }

// a / b for a >= 0, b > 0 (sizes and indices): unsigned division skips the sign fix-ups of a
// signed one (about a third of its ~20 instructions), and the block setup divides five times
__device__ __forceinline__ int udiv(int a, int b) { return (int)((unsigned)a / (unsigned)b); }

// Forward. Block (tx, ty, tz) computes the tile y[n, co-chunk, rows by*ty.., cols bz*tx*RW..];
// thread (x, y, z) owns the rows by*ty + y, columns bz*tx*RW + x + r*tx (r < RW), and the
// channels chunk*tz*CQ + z*CQ + q (q < CQ) of group g.
// grid = (N * G * co_chunks, ceil(Ho / ty), ceil(Wo / (tx*RW))), co_chunks = ceil(Cg_out / (tz*CQ)).
// CIC input channels are staged per pass: shared_mem = (CIC*PRH*XP + tz*CQ*CIC*KH*KW) * sizeof(T),
// PRH = (ty-1)*SH + KH, PRW = (tx*RW-1)*SW + KW (the input patch of the tile); its rows are XP >= PRW
// elements apart: the launcher pads the pitch so that the rows a warp reads start in different
// banks (CIFAR stage 1's 34-float rows put 4 threads of a warp in one bank).
template <typename T, int KH, int KW, int SH, int SW>
__global__ void IGC_TILE_BOUNDS conv2d_forward_v3(const T* __restrict__ x, const T* __restrict__ Wt, T* __restrict__ y,
                                  int N, int C_in, int H, int W, int C_out, int KH_, int KW_,
                                  int SH_, int SW_, int PH, int PW, int G, int Ho, int Wo, int CIC, int XP) {
    extern __shared__ __align__(16) unsigned char smem_raw[];  // 16-aligned: read as double
    T* s = reinterpret_cast<T*>(smem_raw);
    const int kh = ct3<KH>(KH_), kw = ct3<KW>(KW_), sh = ct3<SH>(SH_), sw = ct3<SW>(SW_);
    const int Cg_in = udiv(C_in, G), Cg_out = udiv(C_out, G);
    const int tx = blockDim.x, ty = blockDim.y, nco = blockDim.z * IGC_CQ;  // channels per block
    const int co_chunks = udiv(Cg_out + nco - 1, nco);
    // blockIdx.x = (n * G + g) * co_chunks + chunk
    const int ng = udiv(blockIdx.x, co_chunks), chunk = blockIdx.x - ng * co_chunks;
    const int n = udiv(ng, G), g = ng - n * G;
    const int co_blk = chunk * nco;                       // first channel of the block, in the group
    const int co_thr = threadIdx.z * IGC_CQ;              // first channel of the thread, in the block
    const int PRH = (ty - 1) * sh + kh, PRW = (tx * IGC_RW - 1) * sw + kw;
    const int ho0 = blockIdx.y * ty, wo0 = blockIdx.z * tx * IGC_RW;
    const int hb = ho0 * sh - PH, wb = wo0 * sw - PW;      // input pixel of patch[0][0]
    T* s_x = s;                         // [CIC][PRH][XP], the columns past PRW unused
    T* s_w = s + CIC * PRH * XP;        // [nco][CIC][kh*kw]
    const int khw = kh * kw;
    T acc[IGC_CQ][IGC_RW];
#pragma unroll
    for (int q = 0; q < IGC_CQ; ++q)
#pragma unroll
        for (int r = 0; r < IGC_RW; ++r) acc[q][r] = T(0);

    for (int c0 = 0; c0 < Cg_in; c0 += CIC) {
        const int cn = min(CIC, Cg_in - c0);
        // stage x[n, g*Cg_in + c0 + c, hb + a, wb + b] (0 outside the image); e = (c*PRH + a)*PRW + b
        // int offsets (the launcher keeps tensors below 2^30 elements): an address is then one
        // IMAD.WIDE, where a size_t offset costs four instructions per element
        const int xg = (n * C_in + g * Cg_in + c0) * H * W;
        // rows (c, a) go to the ty*tz thread rows, columns b to the tx threads of a row: one
        // division per row, none per element
        for (int R = threadIdx.z * ty + threadIdx.y; R < cn * PRH; R += ty * blockDim.z) {
            const int c = R / PRH, h = hb + R - c * PRH;
            const bool row_in = h >= 0 && h < H;
            const int xrow = row_in ? xg + (c * H + h) * W : 0;
            for (int b = threadIdx.x; b < PRW; b += tx) {
                const int w = wb + b;
                s_x[R * XP + b] = (row_in && w >= 0 && w < W) ? x[xrow + w] : T(0);
            }
        }
        // stage Wt[g*Cg_out + co_blk + o, c0 + c, :, :] (0 past the group's last channel) at
        // s_w[(o*cn + c)*khw + t]: rows (o, c) to the thread rows, taps t to the threads of a row
        for (int R = threadIdx.z * ty + threadIdx.y; R < nco * cn; R += ty * blockDim.z) {
            const int o = R / cn, c = R - o * cn, co = co_blk + o;
            const int wrow = co < Cg_out ? ((g * Cg_out + co) * Cg_in + c0 + c) * khw : 0;
            for (int t = threadIdx.x; t < khw; t += tx) s_w[R * khw + t] = co < Cg_out ? Wt[wrow + t] : T(0);
        }
        __syncthreads();
        for (int c = 0; c < cn; ++c) {
            const T* xr = s_x + (c * PRH + threadIdx.y * sh) * XP + threadIdx.x * sw;
            const T* wr = s_w + (co_thr * cn + c) * khw;
#pragma unroll
            for (int i = 0; i < kh; ++i)
#pragma unroll
                for (int j = 0; j < kw; ++j) {
                    T wv[IGC_CQ], xv[IGC_RW];
#pragma unroll
                    for (int q = 0; q < IGC_CQ; ++q) wv[q] = wr[q * cn * khw + i * kw + j];
#pragma unroll
                    for (int r = 0; r < IGC_RW; ++r) xv[r] = xr[i * XP + r * tx * sw + j];
#pragma unroll
                    for (int q = 0; q < IGC_CQ; ++q)
#pragma unroll
                        for (int r = 0; r < IGC_RW; ++r) acc[q][r] += wv[q] * xv[r];
                }
        }
        __syncthreads();  // the next chunk overwrites s_x, s_w
    }
    const int ho = ho0 + threadIdx.y;
#pragma unroll
    for (int q = 0; q < IGC_CQ; ++q) {
        const int co = co_blk + co_thr + q;
        if (ho >= Ho || co >= Cg_out) continue;
        const int yr = ((n * C_out + g * Cg_out + co) * Ho + ho) * Wo;
#pragma unroll
        for (int r = 0; r < IGC_RW; ++r) {
            const int wo = wo0 + threadIdx.x + r * tx;
            if (wo < Wo) y[yr + wo] = acc[q][r];
        }
    }
}

// Floor division for a possibly negative numerator (C's / truncates toward zero).
__device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Backward-data: the same tiling over gx. Block (tx, ty, tz) computes gx[n, ci-chunk, tile];
// thread (x, y, z) owns rows by*ty + y, columns bz*tx*RW + x + r*tx, channels chunk*tz*CQ + z*CQ + q
// of group g. It gathers gy over the rows ho = (h + PH - i) / SH that divide exactly: the gy patch
// staged per pass holds rows hb .. hb+PRH-1, hb = floor((h0 + PH - KH + 1) / SH), PRH =
// (ty + KH - 2) / SH + 2 (columns likewise), and COC output channels of the group.
// grid = (N * G * ci_chunks, ceil(H / ty), ceil(W / (tx*RW))); shared_mem = (COC*PRH*XP +
// COC*tz*CQ*KH*KW) * sizeof(T), XP >= PRW the padded row pitch (as in the forward).
template <typename T, int KH, int KW, int SH, int SW>
__global__ void IGC_TILE_BOUNDS conv2d_backward_data_v3(const T* __restrict__ gy, const T* __restrict__ Wt, T* __restrict__ gx,
                                        int N, int C_in, int H, int W, int C_out, int KH_, int KW_,
                                        int SH_, int SW_, int PH, int PW, int G, int Ho, int Wo, int COC, int XP) {
    extern __shared__ __align__(16) unsigned char smem_raw[];  // 16-aligned: read as double
    T* s = reinterpret_cast<T*>(smem_raw);
    const int kh = ct3<KH>(KH_), kw = ct3<KW>(KW_), sh = ct3<SH>(SH_), sw = ct3<SW>(SW_);
    const int Cg_in = udiv(C_in, G), Cg_out = udiv(C_out, G);
    const int tx = blockDim.x, ty = blockDim.y, nci = blockDim.z * IGC_CQ;
    const int ci_chunks = udiv(Cg_in + nci - 1, nci);
    const int ng = udiv(blockIdx.x, ci_chunks), chunk = blockIdx.x - ng * ci_chunks;  // (n * G + g) * ci_chunks + chunk
    const int n = udiv(ng, G), g = ng - n * G;
    const int ci_blk = chunk * nci, ci_thr = threadIdx.z * IGC_CQ;
    const int h0 = blockIdx.y * ty, w0 = blockIdx.z * tx * IGC_RW;
    const int hb = floor_div(h0 + PH - kh + 1, sh), wb = floor_div(w0 + PW - kw + 1, sw);
    const int PRH = (ty + kh - 2) / sh + 2, PRW = (tx * IGC_RW + kw - 2) / sw + 2;
    const int khw = kh * kw;
    T* s_gy = s;                          // [COC][PRH][XP], the columns past PRW unused
    T* s_w = s + COC * PRH * XP;          // [COC][nci][khw]
    const int h = h0 + threadIdx.y;
    T acc[IGC_CQ][IGC_RW];
#pragma unroll
    for (int q = 0; q < IGC_CQ; ++q)
#pragma unroll
        for (int r = 0; r < IGC_RW; ++r) acc[q][r] = T(0);

    for (int k0 = 0; k0 < Cg_out; k0 += COC) {
        const int kn = min(COC, Cg_out - k0);
        const int gyg = (n * C_out + g * Cg_out + k0) * Ho * Wo;  // int offsets, as in the forward
        // rows (k, a) to the thread rows, columns to the threads of a row (as in the forward)
        for (int R = threadIdx.z * ty + threadIdx.y; R < kn * PRH; R += ty * blockDim.z) {
            const int k = R / PRH, ho = hb + R - k * PRH;
            const bool row_in = ho >= 0 && ho < Ho;
            const int grow = row_in ? gyg + (k * Ho + ho) * Wo : 0;
            for (int b = threadIdx.x; b < PRW; b += tx) {
                const int wo = wb + b;
                s_gy[R * XP + b] = (row_in && wo >= 0 && wo < Wo) ? gy[grow + wo] : T(0);
            }
        }
        // Wt[g*Cg_out + k0 + k, ci_blk + o, :, :] at s_w[(k*nci + o)*khw + t], rows (k, o) to thread rows
        for (int R = threadIdx.z * ty + threadIdx.y; R < kn * nci; R += ty * blockDim.z) {
            const int k = R / nci, o = R - k * nci, c = ci_blk + o;
            const int wrow = c < Cg_in ? ((g * Cg_out + k0 + k) * Cg_in + c) * khw : 0;
            for (int t = threadIdx.x; t < khw; t += tx) s_w[R * khw + t] = c < Cg_in ? Wt[wrow + t] : T(0);
        }
        __syncthreads();
        for (int k = 0; k < kn; ++k) {
            const T* gk = s_gy + k * PRH * XP;
            const T* wr = s_w + (k * nci + ci_thr) * khw;
            // unrolling 7x7 taps x RW pixels x CQ channels would spill at 64 registers
#pragma unroll (KH > 0 && KH <= 3 ? KH : 1)
            for (int i = 0; i < kh; ++i) {
                const int hs = h + PH - i;  // = ho * SH for the output row whose tap i covers h
                if (hs % sh != 0) continue;  // exact for negative hs too: then hs / sh is exact
                const T* gr = gk + (hs / sh - hb) * XP;
#pragma unroll (KW > 0 && KW <= 3 ? KW : 1)
                for (int j = 0; j < kw; ++j) {
                    T wv[IGC_CQ];
#pragma unroll
                    for (int q = 0; q < IGC_CQ; ++q) wv[q] = wr[q * khw + i * kw + j];
#pragma unroll
                    for (int r = 0; r < IGC_RW; ++r) {
                        const int ws = w0 + threadIdx.x + r * tx + PW - j;
                        if (ws % sw != 0) continue;
                        const T g_ = gr[ws / sw - wb];
#pragma unroll
                        for (int q = 0; q < IGC_CQ; ++q) acc[q][r] += wv[q] * g_;
                    }
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int q = 0; q < IGC_CQ; ++q) {
        const int c = ci_blk + ci_thr + q;
        if (h >= H || c >= Cg_in) continue;
        const int gr = ((n * C_in + g * Cg_in + c) * H + h) * W;
#pragma unroll
        for (int r = 0; r < IGC_RW; ++r) {
            const int w = w0 + threadIdx.x + r * tx;
            if (w < W) gx[gr + w] = acc[q][r];
        }
    }
}

// Backward-weight, pass 1. Block (blockIdx.x = tile, blockIdx.y = slice), 1-D, nthreads threads.
//   tile  = (n_chunk * tiles_h + th) * tiles_w + tw: images [n_chunk*NB, +NB), output rows
//           th*TH.., columns tw*TW..;
//   slice = channels: groups [g0, g0+GB) and, inside each, output channels [co0, co0+COB) and
//           input channels [ci0, ci0+CIB); slice = (gc * co_chunks + coc) * ci_chunks + cic.
// Slots: a thread owns the weights (co0 + cq*CQ + q, ci0 + c, i, jb*KWB + jj) of group g0 + gb,
// q < CQ, jj < KWB (KWB = KW for 1x1 and 3x3, else 1), slot = (((gb*n_cq + cq)*CIB + c)*KH + i)*JB + jb.
// The launcher makes n_slots <= nthreads; lanes = min(TH, nthreads / n_slots) threads share a slot,
// each takes the tile rows lane, lane + lanes, ..., and lane 0 adds the lanes' sums in lane order.
// A row of TW pixels is unrolled: per pixel CQ gy loads, and with SW = 1 the KWB x loads of
// neighbouring pixels overlap, so a row costs about CQ*TW + TW + KWB loads for CQ*KWB*TW FMAs.
// partial[tile * n_weights + widx] gets the block's sums (widx the index in gW).
// Shared memory: max(GB*COBP*GP + GB*CIB*PRH*PRW, nthreads*CQ*KWB) T, then GB*(CIB + COBP)
// int; COBP = n_cq*CQ (COB rounded up to CQ, the pad rows zero), PRH = (TH-1)*SH + KH,
// PRW = (TW-1)*SW + KW.
template <typename T, int KH, int KW, int SH, int SW>
__global__ void IGC_WEIGHT_BOUNDS conv2d_backward_weight_v3(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ partial,
                                          int N, int C_in, int H, int W, int C_out, int KH_, int KW_,
                                          int SH_, int SW_, int PH, int PW, int G, int Ho, int Wo,
                                          int GB, int COB, int CIB, int NB) {
    constexpr int KWB = (KW > 0 && KW <= 3) ? KW : 1;  // more taps per thread would spill at 64 registers
    extern __shared__ __align__(16) unsigned char smem_raw[];  // 16-aligned: read as double
    T* s = reinterpret_cast<T*>(smem_raw);
    const int kh = ct3<KH>(KH_), kw = ct3<KW>(KW_), sh = ct3<SH>(SH_), sw = ct3<SW>(SW_);
    // the set-up's divisions are of sizes and indices (>= 0): unsigned (udiv), each quotient's
    // remainder by a multiply-subtract
    const int Cg_in = udiv(C_in, G), Cg_out = udiv(C_out, G);
    const int JB = kw / KWB, n_cq = (COB + IGC_CQ - 1) / IGC_CQ, COBP = n_cq * IGC_CQ;
    const int n_slots = GB * n_cq * CIB * kh * JB;
    const int nthreads = blockDim.x, tid = threadIdx.x;
    const int lane = udiv(tid, n_slots), slot = tid - lane * n_slots;
    const int lanes = min(IGC_TH, udiv(nthreads, n_slots));
    // this thread's weights: slot = (((gb*n_cq + cq)*CIB + c)*KH + i)*JB + jb
    const int s1 = slot / JB, jb = slot - s1 * JB;          // JB, kh: compile-time
    const int s2 = s1 / kh, i = s1 - s2 * kh;
    const int s3 = udiv(s2, CIB), c = s2 - s3 * CIB;
    const int gb = udiv(s3, n_cq), cq = s3 - gb * n_cq;
    // the block's tile and slice
    const int tiles_w = (Wo + IGC_TW - 1) / IGC_TW, tiles_h = (Ho + IGC_TH - 1) / IGC_TH;
    const int b1 = udiv(blockIdx.x, tiles_w), tw = blockIdx.x - b1 * tiles_w;
    const int nc = udiv(b1, tiles_h), th = b1 - nc * tiles_h;
    const int co_chunks = udiv(Cg_out + COB - 1, COB), ci_chunks = udiv(Cg_in + CIB - 1, CIB);
    const int y1 = udiv(blockIdx.y, ci_chunks), cic = blockIdx.y - y1 * ci_chunks;
    const int gc = udiv(y1, co_chunks), coc = y1 - gc * co_chunks;
    const int g0 = gc * GB;
    const int gbn = min(GB, G - g0), co0 = coc * COB, ci0 = cic * CIB;
    const int ho0 = th * IGC_TH, wo0 = tw * IGC_TW;
    const int PRH = (IGC_TH - 1) * sh + kh, PRW = (IGC_TW - 1) * sw + kw;
    const int hb = ho0 * sh - PH, wb = wo0 * sw - PW;
    T* s_gy = s;                       // [GB*COBP][GP]: TH*TW pixels a plane, one word of padding
    T* s_x = s + GB * COBP * IGC_GP;   // [GB*CIB][PRH][PRW]
    // Offsets of the block's channel planes inside an image, -1 for the channels past the slice:
    // the staging loops read them instead of splitting a row index into (group, channel).
    // They follow the tiles and the lanes' sums (both fit in max(tiles, nthreads*CQ*KWB) T).
    int* s_off_x = reinterpret_cast<int*>(s + max(GB * COBP * IGC_GP + GB * CIB * PRH * PRW, nthreads * IGC_CQ * KWB));
    int* s_off_gy = s_off_x + GB * CIB;
    // (a thread has at most a few planes: unrolled copies of these loops would only lengthen the code)
#pragma unroll 1
    for (int r = tid; r < GB * CIB; r += nthreads) {  // r = b*CIB + cc
        const int b = r / CIB, ci = ci0 + r - b * CIB;
        s_off_x[r] = (b < gbn && ci < Cg_in) ? ((g0 + b) * Cg_in + ci) * H * W : -1;
    }
#pragma unroll 1
    for (int r = tid; r < GB * COBP; r += nthreads) {  // r = b*COBP + o
        const int b = r / COBP, o = r - b * COBP, co = co0 + o;
        s_off_gy[r] = (b < gbn && o < COB && co < Cg_out) ? ((g0 + b) * Cg_out + co) * Ho * Wo : -1;
    }
    __syncthreads();
    T acc[IGC_CQ][KWB];
#pragma unroll
    for (int q = 0; q < IGC_CQ; ++q)
#pragma unroll
        for (int jj = 0; jj < KWB; ++jj) acc[q][jj] = T(0);

    const int n_end = min(N, (nc + 1) * NB);
    for (int n = nc * NB; n < n_end; ++n) {
        // image n, as an int offset (the launcher keeps tensors below 2^30 elements): a 64-bit
        // pointer would be one more pair of registers, which ptxas rematerialises per element
        const int xn = n * C_in * H * W, gyn = n * C_out * Ho * Wo;
        // Whole rows to a thread: one division per row (by a constant for compile-time shapes),
        // the columns unrolled, so an element costs a bounds test, a load and a store (staging
        // element by element cost 15 (gy) and 37 (x) instructions, as many as the FMAs it feeds).
        // gy[n, channel plane r, ho0 + py, wo0 + px] at r*GP + py*TW + px, 0 outside
#pragma unroll 1  // staging loops stay rolled: registers go to the accumulators
        for (int R = tid; R < GB * COBP * IGC_TH; R += nthreads) {
            const int r = R / IGC_TH, ho = ho0 + R - r * IGC_TH, off = s_off_gy[r];
            const bool row_in = off >= 0 && ho < Ho;
            const T* grow = gy + (row_in ? gyn + off + ho * Wo + wo0 : 0);
            T* srow = s_gy + r * IGC_GP + (R - r * IGC_TH) * IGC_TW;
#pragma unroll
            for (int px = 0; px < IGC_TW; ++px) srow[px] = (row_in && wo0 + px < Wo) ? grow[px] : T(0);
        }
        // x[n, channel plane r, hb + a, wb + col] at (r*PRH + a)*PRW + col, 0 outside
        {
            constexpr int PRW_CT = (KW > 0 && SW > 0) ? (IGC_TW - 1) * SW + KW : 0;  // 0: run time
#pragma unroll 1
            for (int R = tid; R < GB * CIB * PRH; R += nthreads) {
                const int r = R / PRH, h = hb + R - r * PRH, off = s_off_x[r];
                const bool row_in = off >= 0 && h >= 0 && h < H;
                const T* xrow = x + (row_in ? xn + off + h * W : 0);  // + w below (w may be < 0: not read)
                T* srow = s_x + R * PRW;
#pragma unroll (PRW_CT > 0 ? PRW_CT : 1)
                for (int col = 0; col < (PRW_CT > 0 ? PRW_CT : PRW); ++col) {
                    const int w = wb + col;
                    srow[col] = (row_in && w >= 0 && w < W) ? xrow[w] : T(0);
                }
            }
        }
        __syncthreads();
        if (lane < lanes) {
            const T* gq = s_gy + (gb * COBP + cq * IGC_CQ) * IGC_GP;
            const T* xr = s_x + ((gb * CIB + c) * PRH + i) * PRW + jb * KWB;
            for (int py = lane; py < IGC_TH; py += lanes) {
                const T* xrow = xr + py * sh * PRW;
// all 8 pixels at once hoist 26 loads and spill at 64 registers; double needs two registers a value
#pragma unroll (KW == 0 || sizeof(T) == 8 ? 1 : 4)
                for (int px = 0; px < IGC_TW; ++px) {
                    T gv[IGC_CQ];
#pragma unroll
                    for (int q = 0; q < IGC_CQ; ++q) gv[q] = gq[q * IGC_GP + py * IGC_TW + px];
#pragma unroll
                    for (int jj = 0; jj < KWB; ++jj) {
                        const T xv = xrow[px * sw + jj];
#pragma unroll
                        for (int q = 0; q < IGC_CQ; ++q) acc[q][jj] += gv[q] * xv;
                    }
                }
            }
        }
        __syncthreads();  // the next image overwrites the tiles
    }
    // lanes of a slot: lane 0 adds the others' sums in lane order (the tiles' storage is free now)
    if (lanes > 1) {
        if (lane < lanes) {
#pragma unroll
            for (int q = 0; q < IGC_CQ; ++q)
#pragma unroll
                for (int jj = 0; jj < KWB; ++jj) s[(tid * IGC_CQ + q) * KWB + jj] = acc[q][jj];
        }
        __syncthreads();
        if (lane == 0) {
            for (int l = 1; l < lanes; ++l)
#pragma unroll
                for (int q = 0; q < IGC_CQ; ++q)
#pragma unroll
                    for (int jj = 0; jj < KWB; ++jj)
                        acc[q][jj] += s[((l * n_slots + slot) * IGC_CQ + q) * KWB + jj];
        }
    }
    if (lane != 0 || gb >= gbn || ci0 + c >= Cg_in) return;
    const size_t n_weights = (size_t)C_out * Cg_in * kh * kw;
    T* out = partial + blockIdx.x * n_weights;
#pragma unroll
    for (int q = 0; q < IGC_CQ; ++q) {
        const int o = cq * IGC_CQ + q, co = co0 + o;
        if (o >= COB || co >= Cg_out) continue;
#pragma unroll
        for (int jj = 0; jj < KWB; ++jj) {
            const int j = jb * KWB + jj;
            out[((((size_t)(g0 + gb) * Cg_out + co) * Cg_in + ci0 + c) * kh + i) * kw + j] = acc[q][jj];
        }
    }
}

// Backward-weight, pass 2: gW[w] = sum over tiles t = 0, 1, ... of partial[t, w], in that order.
// One thread per weight, grid-stride; consecutive threads read consecutive words.
template <typename T>
__global__ void conv2d_backward_weight_v3_reduce(const T* __restrict__ partial, T* __restrict__ gW,
                                                 int n_tiles, int n_weights) {
    for (int w = blockIdx.x * blockDim.x + threadIdx.x; w < n_weights; w += gridDim.x * blockDim.x) {
        T acc = T(0);
        for (int t = 0; t < n_tiles; ++t) acc += partial[(size_t)t * n_weights + w];
        gW[w] = acc;
    }
}
