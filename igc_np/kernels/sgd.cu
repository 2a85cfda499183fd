// Fused SGD step with (Nesterov) momentum and weight decay: igc_np/optim.py's SGD in one pass.
//
// For every element, with lr, momentum (mu) and weight_decay (wd) of the optimizer:
//     g = grad + wd * w                       (wd = 0: g = grad)
//     v = mu * v + g                          (the velocity, updated in place)
//     w = w - lr * (g + mu * v)               (Nesterov)   or   w = w - lr * v   (classic)
// momentum = 0 (use_momentum = 0): v is not touched and w = w - lr * g.
// The operations are written in optim.py's order; on a GPU the compiler may contract a*b + c into
// one FMA, so float32 results can differ from NumPy's in the last bit.
//
// Versions (benchmarks/bench_gpu.py times both):
//   v1 sgd_update: one launch per parameter tensor, one thread per element (grid-stride). The
//      unfused NumPy-style step issues about 6 array operations per parameter; this is one.
//   v2 sgd_multi_tensor: ONE launch for all the parameters of a dtype. The launcher uploads a
//      table of (weight, grad, velocity) device addresses and sizes, and the list of chunks of
//      CHUNK elements; block b takes chunks b, b + gridDim.x, ... (a resnet_igc-20 L24M2 has 83
//      parameter tensors: 83 launches become 1).

template <typename T>
__device__ __forceinline__ void sgd_element(T* w, const T* grad, T* v, long long i, T lr, T mu, T wd,
                                            int use_momentum, int nesterov) {
    T g = grad[i];
    if (wd != T(0)) g = g + wd * w[i];
    if (use_momentum) {
        const T vi = mu * v[i] + g;
        v[i] = vi;
        g = nesterov ? g + mu * vi : vi;
    }
    w[i] = w[i] - lr * g;
}

// v1: one tensor of n elements; v may be any pointer when use_momentum is 0.
template <typename T>
__global__ void sgd_update(T* __restrict__ w, const T* __restrict__ grad, T* __restrict__ v, int n,
                           T lr, T mu, T wd, int use_momentum, int nesterov) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        sgd_element(w, grad, v, (long long)i, lr, mu, wd, use_momentum, nesterov);
}

// v2: table holds, for tensor t < n_tensors, 4 entries at 4*t: the addresses of its weight, grad
// and velocity arrays and its element count; then, for chunk c < n_chunks, 2 entries at
// 4*n_tensors + 2*c: its tensor and its first element. A chunk covers elements
// [start, min(start + chunk, size)) of its tensor; the threads of the block stride over it.
template <typename T>
__global__ void sgd_multi_tensor(const unsigned long long* __restrict__ table, int n_tensors, int n_chunks,
                                 int chunk, T lr, T mu, T wd, int use_momentum, int nesterov) {
    const unsigned long long* chunks = table + 4 * (long long)n_tensors;
    for (int c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const long long t = (long long)chunks[2 * c];
        const long long start = (long long)chunks[2 * c + 1];
        T* w = reinterpret_cast<T*>(table[4 * t]);
        const T* grad = reinterpret_cast<const T*>(table[4 * t + 1]);
        T* v = reinterpret_cast<T*>(table[4 * t + 2]);
        const long long size = (long long)table[4 * t + 3];
        const long long end = start + chunk < size ? start + chunk : size;
        for (long long i = start + threadIdx.x; i < end; i += blockDim.x)
            sgd_element(w, grad, v, i, lr, mu, wd, use_momentum, nesterov);
    }
}
