// The secondary half of an IGC conv, fused (paper section 3, steps 2-4 of IGC_SPEC section 1):
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
    extern __shared__ __align__(16) unsigned char smem_raw[];
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
