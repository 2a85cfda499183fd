// BatchNorm over (N, H, W) per channel, fused with the ReLU and the residual add that follow it
// in the networks (ConvBN: bn -> relu; ResidualBlock: relu(bn(conv2) + shortcut)):
//     xhat = (x - mean[c]) * invstd[c],   invstd = 1 / sqrt(var + eps)
//     z    = xhat * gamma[c] + beta[c] (+ residual)          y = relu ? max(z, 0) : z
// exactly igc_np/ops/normalization.py's maths in its order (biased batch variance; running
// statistics  r = r * momentum + (1 - momentum) * batch, as MXNet).
//
// Layouts: x, residual, y, gy, gx (N, C, H, W) C-contiguous, HW = H*W; per-channel arrays (C,).
//
// Training forward = 2 launches: bn_stats (one block per channel: a deterministic two-pass
// reduction, mean first, then the sum of squared deviations, each a fixed-order tree in shared
// memory; it also updates the running statistics on the device), then bn_apply (one thread per
// element). Evaluation forward = 1 launch: bn_apply with the running statistics (stat_is_var = 1:
// the kernel takes var and computes invstd itself).
// Backward = 2 launches: bn_backward_reduce (one block per channel: gbeta = sum g, ggamma =
// sum g * xhat with g = gy masked by the ReLU's y > 0), then bn_backward_data (one thread per
// element: gx, and the residual's gradient g). No atomics anywhere: the same bits on every run.

#define BN_THREADS 256  // block size of the per-channel reductions (the launcher uses it too)

// Sum of the BN_THREADS values in buf (one per thread) by a tree; every thread gets the total.
// The last barrier keeps buf from being overwritten before every thread has read buf[0].
template <typename T>
__device__ T block_sum(T* buf, T value) {
    buf[threadIdx.x] = value;
    __syncthreads();
    for (int s = BN_THREADS / 2; s > 0; s /= 2) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    const T total = buf[0];
    __syncthreads();
    return total;
}

// Element t of channel c's N*HW values: t = n*HW + pix (a row of HW contiguous values per image).
__device__ __forceinline__ long long channel_elem(int t, int c, int C, int HW) {
    return ((long long)(t / HW) * C + c) * HW + t % HW;
}

// One block of BN_THREADS per channel (grid-stride over channels). Writes mean[c], invstd[c];
// when update_running, also running_mean/var (same dtype as x; the launcher handles others).
template <typename T>
__global__ void bn_stats(const T* __restrict__ x, T* __restrict__ mean, T* __restrict__ invstd,
                         T* __restrict__ running_mean, T* __restrict__ running_var,
                         int N, int C, int HW, T eps, T momentum, T one_minus_momentum, int update_running) {
    __shared__ T buf[BN_THREADS];
    const int m = N * HW;
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        T s = T(0);
        for (int t = threadIdx.x; t < m; t += BN_THREADS) s += x[channel_elem(t, c, C, HW)];
        const T mu = block_sum(buf, s) / T(m);
        T q = T(0);
        for (int t = threadIdx.x; t < m; t += BN_THREADS) {
            const T d = x[channel_elem(t, c, C, HW)] - mu;
            q += d * d;
        }
        const T var = block_sum(buf, q) / T(m);
        if (threadIdx.x == 0) {
            mean[c] = mu;
            invstd[c] = T(1) / sqrt(var + eps);
            if (update_running) {
                running_mean[c] = running_mean[c] * momentum + one_minus_momentum * mu;
                running_var[c] = running_var[c] * momentum + one_minus_momentum * var;
            }
        }
    }
}

// invstd[c], or 1/sqrt(var[c] + eps) when stat holds the variance (evaluation mode).
template <typename T>
__device__ __forceinline__ T bn_invstd(const T* stat, int c, T eps, int stat_is_var) {
    return stat_is_var ? T(1) / sqrt(stat[c] + eps) : stat[c];
}

// One thread per element: y = [relu](xhat * gamma + beta [+ residual]). residual is read only
// when has_residual (pass any array otherwise).
template <typename T>
__global__ void bn_apply(const T* __restrict__ x, const T* __restrict__ mean, const T* __restrict__ stat,
                         const T* __restrict__ gamma, const T* __restrict__ beta, const T* __restrict__ residual,
                         T* __restrict__ y, int N, int C, int HW, T eps, int stat_is_var, int relu, int has_residual) {
    const int total = N * C * HW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int c = (i / HW) % C;
        const T xhat = (x[i] - mean[c]) * bn_invstd(stat, c, eps, stat_is_var);
        T z = xhat * gamma[c] + beta[c];
        if (has_residual) z = z + residual[i];
        y[i] = relu && z < T(0) ? T(0) : z;  // NaN stays NaN, as numpy.maximum
    }
}

// The gradient reaching the BN output: gy where the ReLU passed (y > 0), else 0.
template <typename T>
__device__ __forceinline__ T bn_masked(const T* gy, const T* y, long long i, int relu) {
    return relu && !(y[i] > T(0)) ? T(0) : gy[i];
}

// One block per channel: gbeta[c] = sum g, ggamma[c] = sum g * xhat (fixed-order trees).
template <typename T>
__global__ void bn_backward_reduce(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x,
                                   const T* __restrict__ mean, const T* __restrict__ stat,
                                   T* __restrict__ ggamma, T* __restrict__ gbeta,
                                   int N, int C, int HW, T eps, int stat_is_var, int relu) {
    __shared__ T buf[BN_THREADS];
    const int m = N * HW;
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        const T mu = mean[c], is = bn_invstd(stat, c, eps, stat_is_var);
        T sb = T(0), sg = T(0);
        for (int t = threadIdx.x; t < m; t += BN_THREADS) {
            const long long i = channel_elem(t, c, C, HW);
            const T g = bn_masked(gy, y, i, relu);
            sb += g;
            sg += g * ((x[i] - mu) * is);
        }
        const T total_b = block_sum(buf, sb);
        const T total_g = block_sum(buf, sg);
        if (threadIdx.x == 0) {
            gbeta[c] = total_b;
            ggamma[c] = total_g;
        }
    }
}

// One thread per element. Training: gx = (g - gbeta/m - xhat * ggamma/m) * gamma * invstd (the
// batch statistics depend on x); evaluation (training = 0): gx = g * gamma * invstd. With
// has_residual, g itself is the residual's gradient, written to gres.
template <typename T>
__global__ void bn_backward_data(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x,
                                 const T* __restrict__ mean, const T* __restrict__ stat,
                                 const T* __restrict__ gamma, const T* __restrict__ ggamma,
                                 const T* __restrict__ gbeta, T* __restrict__ gx, T* __restrict__ gres,
                                 int N, int C, int HW, T eps, int stat_is_var, int relu, int training,
                                 int has_residual) {
    const int total = N * C * HW;
    const T m = T(N * HW);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int c = (i / HW) % C;
        const T is = bn_invstd(stat, c, eps, stat_is_var);
        const T g = bn_masked(gy, y, i, relu);
        const T scale = gamma[c] * is;
        if (training) {
            const T xhat = (x[i] - mean[c]) * is;
            gx[i] = (g - gbeta[c] / m - xhat * (ggamma[c] / m)) * scale;
        } else {
            gx[i] = g * scale;
        }
        if (has_residual) gres[i] = g;
    }
}
