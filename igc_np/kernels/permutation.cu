// Channel permutation of IGC ("Reorder(b)", paper section 3): view the channel axis of
// x (N, C, H, W) as a (b, C/b) grid and transpose it to (C/b, b). Input channel i*(C/b) + j goes
// to output channel j*b + i. The inverse is the same permutation with b' = C/b, which is how the
// backward pass uses this kernel (no separate backward kernel).
//
// One thread per output element y[n, c, h, w] (grid-stride loop): a gather, so each thread does
// one read and one write, and consecutive threads write consecutive addresses.
template <typename T>
__global__ void permute_channels(const T* __restrict__ x, T* __restrict__ y, int N, int C, int HW, int b) {
    const int per = C / b;  // C/b: length of a row of the (b, C/b) grid
    const int total = N * C * HW;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
        // idx = (n * C + c) * HW + p, with p = h * W + w
        const int p = idx % HW;
        const int c = (idx / HW) % C;
        const int n = idx / (HW * C);
        // output channel c = j*b + i  <-  input channel i*(C/b) + j
        const int i = c % b, j = c / b;
        y[idx] = x[((size_t)n * C + i * per + j) * HW + p];
    }
}

// v2: one block per (n, output channel) row (grid-stride over the N*C rows): the source row is
// found once per block, then the threads copy its HW contiguous values. Reads and writes are both
// coalesced, and there is no division per element (v1 does three). For HW < 32 most threads of a
// block idle: v1 is the better choice there (the launcher switches on HW, see kernels/permutation.py).
template <typename T>
__global__ void permute_channels_rows(const T* __restrict__ x, T* __restrict__ y, int N, int C, int HW, int b) {
    const int per = C / b;
    for (int row = blockIdx.x; row < N * C; row += gridDim.x) {
        const int c = row % C, n = row / C;
        const int i = c % b, j = c / b;  // output channel c = j*b + i  <-  input channel i*(C/b) + j
        const T* src = x + ((size_t)n * C + i * per + j) * HW;
        T* dst = y + (size_t)row * HW;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) dst[p] = src[p];
    }
}
