// Adam / AdamW step: igc_np/optim.py's adam_reference in one pass over memory.
//
// For every element, with the scalars the launcher computes once per step (in double, cast to T):
//     one_minus_beta1 = 1 - beta1,  one_minus_beta2 = 1 - beta2,
//     step_size = lr / (1 - beta1^t),  bc2_sqrt = sqrt(1 - beta2^t),  decay = 1 - lr * weight_decay
//
//     AdamW (decoupled = 1):  w = w * decay                       (weight decay on the weight)
//     Adam  (decoupled = 0):  g = g + weight_decay * w            (weight decay in the gradient)
//     m = m + (1 - beta1) * (g - m)                               (first moment, in place)
//     v = v * beta2 + (1 - beta2) * (g * g)                       (second moment, in place)
//     amsgrad = 1:  vmax = max(vmax, v) (in place), and vmax replaces v below
//     w = w - step_size * (m / (sqrt(v) / bc2_sqrt + eps))
//
// That is PyTorch's torch.optim.Adam/AdamW written as its single-tensor code
// writes it (lerp for m, then addcdiv), which is the documented algorithm with the bias
// corrections folded into step_size and bc2_sqrt. On a GPU the compiler may contract a*b + c into
// one FMA, so float32 results can differ from NumPy's in the last bit.
//
// Versions (as sgd.cu's):
//   v1 adam_update: one launch per parameter tensor, one thread per element (grid-stride).
//   v2 adam_multi_tensor: ONE launch for all the parameters of a dtype (and step count). The
//      launcher uploads a table of (weight, grad, m, v, vmax) device addresses and sizes, and the list
//      of chunks of CHUNK elements; block b takes chunks b, b + gridDim.x, ...

template <typename T>
__device__ __forceinline__ void adam_element(T* w, const T* grad, T* m, T* v, T* vmax, long long i,
                                             T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T step_size,
                                             T bc2_sqrt, T weight_decay, T decay, int decoupled, int amsgrad) {
    T g = grad[i];
    T wi = w[i];
    if (weight_decay != T(0)) {
        if (decoupled) wi = wi * decay;
        else g = g + weight_decay * wi;
    }
    const T m0 = m[i];
    const T mi = m0 + one_minus_beta1 * (g - m0);
    const T vi = v[i] * beta2 + one_minus_beta2 * (g * g);
    m[i] = mi;
    v[i] = vi;
    T vd = vi;
    if (amsgrad) {  // NaN propagates from either side, as numpy.maximum and torch.maximum
        const T vm = vmax[i];
        vd = (vm != vm || vm > vi) ? vm : vi;
        vmax[i] = vd;
    }
    w[i] = wi - step_size * (mi / (sqrt(vd) / bc2_sqrt + eps));
}

// v1: one tensor of n elements; vmax may be any pointer when amsgrad is 0.
template <typename T>
__global__ void adam_update(T* __restrict__ w, const T* __restrict__ grad, T* __restrict__ m, T* __restrict__ v,
                            T* __restrict__ vmax, int n, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                            T step_size, T bc2_sqrt, T weight_decay, T decay, int decoupled, int amsgrad) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        adam_element(w, grad, m, v, vmax, (long long)i, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
                     bc2_sqrt, weight_decay, decay, decoupled, amsgrad);
}

// v2: table holds, for tensor t < n_tensors, 6 entries at 6*t: the addresses of its weight, grad,
// m, v and vmax arrays (vmax: any valid address when amsgrad is 0) and its element count; then, for
// chunk c < n_chunks, 2 entries at 6*n_tensors + 2*c: its tensor and its first element. A chunk covers elements
// [start, min(start + chunk, size)) of its tensor; the threads of the block stride over it.
template <typename T>
__global__ void adam_multi_tensor(const unsigned long long* __restrict__ table, int n_tensors, int n_chunks,
                                  int chunk, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T step_size,
                                  T bc2_sqrt, T weight_decay, T decay, int decoupled, int amsgrad) {
    const unsigned long long* chunks = table + 6 * (long long)n_tensors;
    for (int c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const long long t = (long long)chunks[2 * c];
        const long long start = (long long)chunks[2 * c + 1];
        T* w = reinterpret_cast<T*>(table[6 * t]);
        const T* grad = reinterpret_cast<const T*>(table[6 * t + 1]);
        T* m = reinterpret_cast<T*>(table[6 * t + 2]);
        T* v = reinterpret_cast<T*>(table[6 * t + 3]);
        T* vmax = reinterpret_cast<T*>(table[6 * t + 4]);
        const long long size = (long long)table[6 * t + 5];
        const long long end = start + chunk < size ? start + chunk : size;
        for (long long i = start + threadIdx.x; i < end; i += blockDim.x)
            adam_element(w, grad, m, v, vmax, i, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bc2_sqrt,
                         weight_decay, decay, decoupled, amsgrad);
    }
}
