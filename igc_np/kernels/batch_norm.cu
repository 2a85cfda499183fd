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
//
// Versions: v1 above (one block per channel for the reductions), v2 below (P blocks per channel).

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

// Mean and M2 = sum (x - mean)^2 of channel c's values t0 <= t < t1, by the whole block: a
// two-pass reduction (the mean first, then the squared deviations from it), each a fixed-order tree.
template <typename T>
__device__ void bn_moments(const T* __restrict__ x, int c, int C, int HW, int t0, int t1, T* buf, T* mean, T* m2) {
    T s = T(0);
    for (int t = t0 + threadIdx.x; t < t1; t += BN_THREADS) s += x[channel_elem(t, c, C, HW)];
    const T total = block_sum(buf, s);  // every thread of the block calls it: it has barriers
    const T mu = t1 > t0 ? total / T(t1 - t0) : T(0);
    T q = T(0);
    for (int t = t0 + threadIdx.x; t < t1; t += BN_THREADS) {
        const T d = x[channel_elem(t, c, C, HW)] - mu;
        q += d * d;
    }
    *mean = mu;
    *m2 = block_sum(buf, q);
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
        T mu, m2;
        bn_moments(x, c, C, HW, 0, m, buf, &mu, &m2);
        const T var = m2 / T(m);
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

// sum g and sum g * xhat over channel c's values t0 <= t < t1, by the whole block (fixed-order trees).
template <typename T>
__device__ void bn_grad_sums(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x, T mu, T is,
                             int c, int C, int HW, int t0, int t1, int relu, T* buf, T* sum_g, T* sum_gxhat) {
    T sb = T(0), sg = T(0);
    for (int t = t0 + threadIdx.x; t < t1; t += BN_THREADS) {
        const long long i = channel_elem(t, c, C, HW);
        const T g = bn_masked(gy, y, i, relu);
        sb += g;
        sg += g * ((x[i] - mu) * is);
    }
    *sum_g = block_sum(buf, sb);
    *sum_gxhat = block_sum(buf, sg);
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
        T total_b, total_g;
        bn_grad_sums(gy, y, x, mean[c], bn_invstd(stat, c, eps, stat_is_var), c, C, HW, 0, m, relu, buf,
                     &total_b, &total_g);
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

// ---- v2: every channel split over P blocks -------------------------------------------------------
// v1 reduces a channel in ONE block: C blocks in all (48 on CIFAR stage 1, a third of an H100's
// SMs, each streaming N*H*W values). v2 splits channel c's m = N*HW values into P slices
// [s*m/P, (s+1)*m/P) and gives each (c, s) its own block; the per-row kernels that follow combine
// the P partial results themselves (thread 0 of each block, in slice order, into shared memory
// for the block: the same bits in every block, and no extra launch), so training forward and
// backward stay 2 launches each. (Combining in every thread cost each element P loads and 2P
// divisions: 323 instructions an element at P = 64.)

// [begin, end) of slice s of m values.
__device__ __forceinline__ void bn_slice(int m, int P, int s, int* begin, int* end) {
    *begin = (int)((long long)m * s / P);
    *end = (int)((long long)m * (s + 1) / P);
}

// Pass 1 of the statistics: block (c, s) = blockIdx.x (grid-stride over C*P) writes the slice's
// mean and M2 = sum (x - mean)^2 (a two-pass reduction inside the slice) to partial[(c*P + s)*2 + {0, 1}].
template <typename T>
__global__ void bn_stats_partial(const T* __restrict__ x, T* __restrict__ partial, int N, int C, int HW, int P) {
    __shared__ T buf[BN_THREADS];
    const int m = N * HW;
    for (int b = blockIdx.x; b < C * P; b += gridDim.x) {
        const int c = b / P, s = b % P;
        int t0, t1;
        bn_slice(m, P, s, &t0, &t1);
        T mu, m2;
        bn_moments(x, c, C, HW, t0, t1, buf, &mu, &m2);
        if (threadIdx.x == 0) {
            partial[2 * (size_t)b] = mu;
            partial[2 * (size_t)b + 1] = m2;
        }
    }
}

// Channel c's mean and biased variance from its P (mean, M2) partials, combined in slice order
// (Chan et al.'s pairwise update: stable, and exact for the counts).
template <typename T>
__device__ void bn_combine(const T* partial, int c, int m, int P, T* mean, T* var) {
    T n_acc = T(0), mu = T(0), m2 = T(0);
    for (int s = 0; s < P; ++s) {
        int t0, t1;
        bn_slice(m, P, s, &t0, &t1);
        const T n_s = T(t1 - t0);
        if (n_s == T(0)) continue;
        const T mu_s = partial[2 * ((size_t)c * P + s)], m2_s = partial[2 * ((size_t)c * P + s) + 1];
        const T n = n_acc + n_s, delta = mu_s - mu;
        mu = mu + delta * (n_s / n);
        m2 = m2 + m2_s + delta * delta * (n_acc * n_s / n);
        n_acc = n;
    }
    *mean = mu;
    *var = m2 / T(m);
}

// Training apply: one block per row (n, c) of HW values (grid-stride over the N*C rows), any
// blockDim.x. Thread 0 combines channel c's partials and shares (mean, invstd) through shared
// memory; then y = [relu](xhat * gamma + beta [+ residual]). The block of image 0 also writes
// mean[c], invstd[c] (for the backward pass) and, when update_running, the running statistics.
template <typename T>
__global__ void bn_apply_rows(const T* __restrict__ x, const T* __restrict__ partial, const T* __restrict__ gamma,
                              const T* __restrict__ beta, const T* __restrict__ residual, T* __restrict__ y,
                              T* __restrict__ mean_out, T* __restrict__ invstd_out, T* __restrict__ running_mean,
                              T* __restrict__ running_var, int N, int C, int HW, int P, T eps, T momentum,
                              T one_minus_momentum, int update_running, int relu, int has_residual) {
    __shared__ T stats[2];  // the row's channel: mean, invstd
    for (int row = blockIdx.x; row < N * C; row += gridDim.x) {
        const int c = row % C;
        if (threadIdx.x == 0) {
            T mu, var;
            bn_combine(partial, c, N * HW, P, &mu, &var);
            const T is = T(1) / sqrt(var + eps);
            stats[0] = mu;
            stats[1] = is;
            if (row < C) {  // image 0's row of channel c
                mean_out[c] = mu;
                invstd_out[c] = is;
                if (update_running) {
                    running_mean[c] = running_mean[c] * momentum + one_minus_momentum * mu;
                    running_var[c] = running_var[c] * momentum + one_minus_momentum * var;
                }
            }
        }
        __syncthreads();
        const T mu = stats[0], is = stats[1];
        const T g = gamma[c], b = beta[c];
        const size_t base = (size_t)row * HW;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            T z = (x[base + p] - mu) * is * g + b;
            if (has_residual) z = z + residual[base + p];
            y[base + p] = relu && z < T(0) ? T(0) : z;
        }
        __syncthreads();  // every thread has read stats before the next row's thread 0 writes them
    }
}

// Backward pass 1: block (c, s) writes the slice's sum g and sum g * xhat to partial[(c*P + s)*2 + {0, 1}].
template <typename T>
__global__ void bn_backward_partial(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x,
                                    const T* __restrict__ mean, const T* __restrict__ stat, T* __restrict__ partial,
                                    int N, int C, int HW, int P, T eps, int stat_is_var, int relu) {
    __shared__ T buf[BN_THREADS];
    const int m = N * HW;
    for (int b = blockIdx.x; b < C * P; b += gridDim.x) {
        const int c = b / P, s = b % P;
        int t0, t1;
        bn_slice(m, P, s, &t0, &t1);
        T total_b, total_g;
        bn_grad_sums(gy, y, x, mean[c], bn_invstd(stat, c, eps, stat_is_var), c, C, HW, t0, t1, relu, buf,
                     &total_b, &total_g);
        if (threadIdx.x == 0) {
            partial[2 * (size_t)b] = total_b;
            partial[2 * (size_t)b + 1] = total_g;
        }
    }
}

// Backward pass 2: one block per row (n, c); thread 0 adds channel c's P partials in slice order
// and shares the sums through shared memory; image 0's block writes ggamma[c], gbeta[c]; then
// gx (and gres) as bn_backward_data.
template <typename T>
__global__ void bn_backward_data_rows(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x,
                                      const T* __restrict__ mean, const T* __restrict__ stat,
                                      const T* __restrict__ gamma, const T* __restrict__ partial,
                                      T* __restrict__ ggamma, T* __restrict__ gbeta, T* __restrict__ gx,
                                      T* __restrict__ gres, int N, int C, int HW, int P, T eps, int stat_is_var,
                                      int relu, int training, int has_residual) {
    const T m = T(N * HW);
    __shared__ T sums[2];  // the row's channel: sum g, sum g * xhat
    for (int row = blockIdx.x; row < N * C; row += gridDim.x) {
        const int c = row % C;
        if (threadIdx.x == 0) {
            T sb = T(0), sg = T(0);
            for (int s = 0; s < P; ++s) {
                sb += partial[2 * ((size_t)c * P + s)];
                sg += partial[2 * ((size_t)c * P + s) + 1];
            }
            sums[0] = sb;
            sums[1] = sg;
            if (row < C) {
                gbeta[c] = sb;
                ggamma[c] = sg;
            }
        }
        __syncthreads();
        const T sb = sums[0], sg = sums[1];
        const T mu = mean[c], is = bn_invstd(stat, c, eps, stat_is_var), scale = gamma[c] * is;
        const size_t base = (size_t)row * HW;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            const long long i = (long long)(base + p);
            const T g = bn_masked(gy, y, i, relu);
            gx[i] = training ? (g - sb / m - ((x[i] - mu) * is) * (sg / m)) * scale : g * scale;
            if (has_residual) gres[i] = g;
        }
        __syncthreads();  // every thread has read sums before the next row's thread 0 writes them
    }
}
