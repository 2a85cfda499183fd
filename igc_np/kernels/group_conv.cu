// Grouped 2-D convolution (cross-correlation, no bias): forward, backward-data, backward-weight.
//
// Layouts (NCHW, C-contiguous):
//   x  (N, C_in, H, W)            input
//   Wt (C_out, C_in/G, KH, KW)    weight; output channel co belongs to group co / (C_out/G) and
//                                 sees the input channels of that group only
//   y  (N, C_out, Ho, Wo)         Ho = (H + 2*PH - KH) / SH + 1, Wo likewise
//   y[n, co, ho, wo] = sum_{c, i, j} Wt[co, c, i, j] * x[n, g*Cg_in + c, ho*SH - PH + i, wo*SW - PW + j]
// with g = co / Cg_out, Cg_in = C_in/G, Cg_out = C_out/G, and x read as 0 outside the image.
//
// Every kernel is a template on the element type T (float for training, double for gradient
// checks); the loader instantiates conv2d_forward<float> etc. by name expression.
// Indices are int: the launcher checks that every tensor has fewer than 2^31 elements.

// Forward. One thread per output element y[n, co, ho, wo]; a grid-stride loop covers the rest.
template <typename T>
__global__ void conv2d_forward(const T* __restrict__ x, const T* __restrict__ Wt, T* __restrict__ y,
                               int N, int C_in, int H, int W, int C_out, int KH, int KW,
                               int SH, int SW, int PH, int PW, int G, int Ho, int Wo) {
    const int Cg_in = C_in / G, Cg_out = C_out / G;
    const int total = N * C_out * Ho * Wo;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
        // idx = ((n * C_out + co) * Ho + ho) * Wo + wo
        const int wo = idx % Wo;
        const int ho = (idx / Wo) % Ho;
        const int co = (idx / (Wo * Ho)) % C_out;
        const int n = idx / (Wo * Ho * C_out);
        const int g = co / Cg_out;
        const int h0 = ho * SH - PH, w0 = wo * SW - PW;  // top-left input pixel of the window
        T acc = T(0);
        for (int c = 0; c < Cg_in; ++c) {
            // x[n, g*Cg_in + c, :, :] and Wt[co, c, :, :]
            const T* xc = x + ((size_t)n * C_in + g * Cg_in + c) * H * W;
            const T* wc = Wt + ((size_t)co * Cg_in + c) * KH * KW;
            for (int i = 0; i < KH; ++i) {
                const int h = h0 + i;
                if (h < 0 || h >= H) continue;  // zero padding
                for (int j = 0; j < KW; ++j) {
                    const int w = w0 + j;
                    if (w < 0 || w >= W) continue;
                    acc += wc[i * KW + j] * xc[h * W + w];
                }
            }
        }
        y[idx] = acc;
    }
}

// Backward-data: gx = d(loss)/dx from gy (N, C_out, Ho, Wo). One thread per input element
// gx[n, ci, h, w]: it gathers every (co, ho, wo, i, j) whose window put x[n, ci, h, w] under
// Wt[co, ci - g*Cg_in, i, j], i.e. h = ho*SH - PH + i. Gathering, not scattering, needs no atomics.
template <typename T>
__global__ void conv2d_backward_data(const T* __restrict__ gy, const T* __restrict__ Wt, T* __restrict__ gx,
                                     int N, int C_in, int H, int W, int C_out, int KH, int KW,
                                     int SH, int SW, int PH, int PW, int G, int Ho, int Wo) {
    const int Cg_in = C_in / G, Cg_out = C_out / G;
    const int total = N * C_in * H * W;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
        // idx = ((n * C_in + ci) * H + h) * W + w
        const int w = idx % W;
        const int h = (idx / W) % H;
        const int ci = (idx / (W * H)) % C_in;
        const int n = idx / (W * H * C_in);
        const int g = ci / Cg_in, c = ci % Cg_in;  // group, and channel inside the group
        T acc = T(0);
        for (int i = 0; i < KH; ++i) {
            // h = ho*SH - PH + i  =>  ho = (h + PH - i) / SH, only when that division is exact
            const int hs = h + PH - i;
            if (hs < 0 || hs % SH != 0) continue;
            const int ho = hs / SH;
            if (ho >= Ho) continue;
            for (int j = 0; j < KW; ++j) {
                const int ws = w + PW - j;
                if (ws < 0 || ws % SW != 0) continue;
                const int wo = ws / SW;
                if (wo >= Wo) continue;
                for (int k = 0; k < Cg_out; ++k) {
                    const int co = g * Cg_out + k;
                    // gy[n, co, ho, wo] * Wt[co, c, i, j]
                    acc += gy[(((size_t)n * C_out + co) * Ho + ho) * Wo + wo] *
                           Wt[(((size_t)co * Cg_in + c) * KH + i) * KW + j];
                }
            }
        }
        gx[idx] = acc;
    }
}

// Backward-weight: gW[co, c, i, j] = sum_{n, ho, wo} gy[n, co, ho, wo] * x[n, g*Cg_in + c, h, w]
// with h = ho*SH - PH + i, w = wo*SW - PW + j. One block per weight element (blockIdx.x, a
// grid-stride loop over blocks for large weights): its threads stride over the N*Ho*Wo terms,
// then add their partial sums in shared memory with a tree of __syncthreads() steps, so no
// atomics and a deterministic result. blockDim.x must be a power of two; the launcher passes
// shared_mem = blockDim.x * sizeof(T) bytes of dynamic shared memory.
template <typename T>
__global__ void conv2d_backward_weight(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ gW,
                                       int N, int C_in, int H, int W, int C_out, int KH, int KW,
                                       int SH, int SW, int PH, int PW, int G, int Ho, int Wo) {
    extern __shared__ __align__(16) unsigned char smem_raw[];  // untyped: one declaration serves float and double
    T* partial = reinterpret_cast<T*>(smem_raw);
    const int Cg_in = C_in / G, Cg_out = C_out / G;
    const int n_weights = C_out * Cg_in * KH * KW;
    const int terms = N * Ho * Wo;
    for (int widx = blockIdx.x; widx < n_weights; widx += gridDim.x) {
        // widx = ((co * Cg_in + c) * KH + i) * KW + j
        const int j = widx % KW;
        const int i = (widx / KW) % KH;
        const int c = (widx / (KW * KH)) % Cg_in;
        const int co = widx / (KW * KH * Cg_in);
        const int ci = (co / Cg_out) * Cg_in + c;  // input channel: group of co, channel c in it
        T acc = T(0);
        for (int t = threadIdx.x; t < terms; t += blockDim.x) {
            // t = (n * Ho + ho) * Wo + wo
            const int wo = t % Wo;
            const int ho = (t / Wo) % Ho;
            const int n = t / (Wo * Ho);
            const int h = ho * SH - PH + i, w = wo * SW - PW + j;
            if (h < 0 || h >= H || w < 0 || w >= W) continue;  // the window hit the zero padding
            acc += gy[(((size_t)n * C_out + co) * Ho + ho) * Wo + wo] *
                   x[(((size_t)n * C_in + ci) * H + h) * W + w];
        }
        partial[threadIdx.x] = acc;
        __syncthreads();
        // Tree reduction: after the step with half-width s, partial[t] (t < s) holds the sum of
        // the blockDim.x/s original partials t, t+s, t+2s, ...; each step reads what the previous
        // step wrote, hence the barrier after every step.
        for (int s = blockDim.x / 2; s > 0; s /= 2) {
            if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
            __syncthreads();
        }
        if (threadIdx.x == 0) gW[widx] = partial[0];
        // partial[0] must be read before the next weight element overwrites partial[]
        __syncthreads();
    }
}
