"""The CPU emulator of CUDA kernels (igc_np.emu) on small kernels written for the purpose."""
import numpy as np
import pytest

import os
import stat
import warnings

from igc_np.emu import EmuModule, EmulatorCompileError, EmulatorError, LaunchLimitError, loader, sanitizing

i32 = np.int32

SOURCE = r"""
#define TILE 8

// C (n, m) = A (n, k) @ B (k, m), TILE x TILE blocks of threads, tiles staged in shared memory.
template <typename T>
__global__ void matmul_tiled(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C,
                             int n, int k, int m) {
    __shared__ T As[TILE][TILE];
    __shared__ T Bs[TILE][TILE + 1];
    const int row = blockIdx.y * TILE + threadIdx.y, col = blockIdx.x * TILE + threadIdx.x;
    T acc = 0;
    for (int t = 0; t < k; t += TILE) {
        As[threadIdx.y][threadIdx.x] = (row < n && t + (int)threadIdx.x < k) ? A[row * k + t + threadIdx.x] : T(0);
        Bs[threadIdx.y][threadIdx.x] = (col < m && t + (int)threadIdx.y < k) ? B[(t + threadIdx.y) * m + col] : T(0);
        __syncthreads();
        for (int i = 0; i < TILE; ++i) acc += As[threadIdx.y][i] * Bs[i][threadIdx.x];
        __syncthreads();
    }
    if (row < n && col < m) C[row * m + col] = acc;
}

// Sum of x per block, in dynamic shared memory (blockDim.x a power of two).
template <typename T>
__global__ void block_sum(const T* x, T* out, int n) {
    extern __shared__ unsigned char smem_raw[];
    T* s = reinterpret_cast<T*>(smem_raw);
    T acc = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) acc += x[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h /= 2) {
        if (threadIdx.x < h) s[threadIdx.x] += s[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// The same reduction without the barriers: threads read partial sums nobody has written yet.
template <typename T>
__global__ void block_sum_racy(const T* x, T* out, int n) {
    __shared__ T s[64];
    s[threadIdx.x] = threadIdx.x < n ? x[threadIdx.x] : T(0);
    for (int h = blockDim.x / 2; h > 0; h /= 2)
        if (threadIdx.x < h) s[threadIdx.x] += s[threadIdx.x + h];
    if (threadIdx.x == 0) out[0] = s[0];
}

// Only even threads write shared memory, every thread reads its own slot.
template <typename T>
__global__ void read_unwritten(T* out) {
    __shared__ T s[32];
    if (threadIdx.x % 2 == 0) s[threadIdx.x] = T(1);
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

// File-scope shared memory: the same NaN fill before each block.
__shared__ float file_scope_tile[32];

template <typename T>
__global__ void read_unwritten_file_scope(T* out) {
    if (threadIdx.x % 2 == 0) file_scope_tile[threadIdx.x] = 1.0f;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = file_scope_tile[threadIdx.x];
}

// Thread 0 leaves before the barrier the others wait at.
template <typename T>
__global__ void exit_before_barrier(T* out) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = T(1);
}

// Odd and even threads wait at two different barriers.
template <typename T>
__global__ void divergent_barriers(T* out) {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = T(1);
}

// Every thread of a 3-D grid of 3-D blocks writes its global linear index once (or counts twice).
template <typename T>
__global__ void coordinates(T* out, int nx, int ny, int nz) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    const int z = blockIdx.z * blockDim.z + threadIdx.z;
    if (x >= nx || y >= ny || z >= nz) return;
    atomicAdd(&out[(z * ny + y) * nx + x], T((z * ny + y) * nx + x + 1));
}
"""

KERNELS = ["matmul_tiled", "block_sum", "block_sum_racy", "read_unwritten", "read_unwritten_file_scope",
           "exit_before_barrier",
           "divergent_barriers", "coordinates"]


@pytest.fixture(scope="module")
def mod():
    exprs = [f"{k}<{t}>" for k in KERNELS for t in ("float", "double")]
    return EmuModule(SOURCE, exprs, "test_emulator_kernels.cu")


@pytest.mark.parametrize("n,k,m", [(8, 8, 8), (13, 11, 9), (1, 17, 3), (20, 5, 31)])
def test_tiled_matmul_exact(mod, n, k, m):
    rng = np.random.default_rng(n * k * m)
    # small integers: every partial sum is exact, so any summation order gives the same bits
    A = rng.integers(-8, 8, (n, k)).astype(np.float64)
    B = rng.integers(-8, 8, (k, m)).astype(np.float64)
    C = np.full((n, m), np.nan)
    grid = ((m + 7) // 8, (n + 7) // 8)
    mod.get_function("matmul_tiled<double>")(grid, (8, 8), (A, B, C, i32(n), i32(k), i32(m)))
    np.testing.assert_array_equal(C, A @ B)


def test_dynamic_shared_memory_reduction(mod):
    x = np.arange(1000, dtype=np.float32)
    out = np.zeros(3, dtype=np.float32)
    mod.get_function("block_sum<float>")((3,), (128,), (x, out, i32(1000)), shared_mem=128 * 4)
    assert out.sum() == x.sum()


def test_missing_barrier_gives_wrong_result(mod):
    x = np.ones(64)
    out = np.zeros(1)
    mod.get_function("block_sum_racy<double>")((1,), (64,), (x, out, i32(64)))
    assert out[0] != 64  # thread 0 ran to the end before the others wrote their slots


def test_unwritten_shared_memory_reads_nan(mod):
    out = np.zeros(32, dtype=np.float32)
    mod.get_function("read_unwritten<float>")((2,), (32,), (out,))
    assert np.all(out[0::2] == 1)
    assert np.all(np.isnan(out[1::2]))


def test_unwritten_file_scope_shared_memory_reads_nan_in_every_block(mod):
    out = np.zeros(64, dtype=np.float32)
    mod.get_function("read_unwritten_file_scope<float>")((2,), (32,), (out,))
    assert np.all(out[0::2] == 1)
    assert np.all(np.isnan(out[1::2]))


def test_exit_before_barrier_is_a_deadlock(mod):
    with pytest.raises(EmulatorError, match=r"deadlock.*__syncthreads\(\) test_emulator_kernels\.cu:\d+.*exited"):
        mod.get_function("exit_before_barrier<float>")((1,), (4,), (np.zeros(4, np.float32),))
    # the library is still usable afterwards
    test_unwritten_shared_memory_reads_nan(mod)


def test_different_barriers_is_a_deadlock(mod):
    with pytest.raises(EmulatorError, match=r"deadlock.*:(\d+) while thread .* waits at .*:(?!\1)\d+"):
        mod.get_function("divergent_barriers<double>")((1,), (4,), (np.zeros(4),))


@pytest.mark.parametrize("shape,block", [((7, 5, 3), (4, 2, 2)), ((33, 1, 1), (32, 1, 1)), ((5, 9, 2), (3, 3, 1))])
def test_grid_covers_sizes_not_divisible_by_the_block(mod, shape, block):
    nx, ny, nz = shape
    grid = tuple(-(-s // b) for s, b in zip(shape, block))
    out = np.zeros(nz * ny * nx)
    mod.get_function("coordinates<double>")(grid, block, (out, i32(nx), i32(ny), i32(nz)))
    np.testing.assert_array_equal(out, np.arange(1, out.size + 1))


def test_arguments_are_checked_against_the_signature(mod):
    fn = mod.get_function("coordinates<float>")
    assert fn.signature == ["float*", "int", "int", "int"]
    out = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="numpy.int32, got int"):
        fn((1,), (4,), (out, 4, i32(1), i32(1)))
    with pytest.raises(TypeError, match="dtype float32, got float64"):
        fn((1,), (4,), (np.zeros(4), i32(4), i32(1), i32(1)))
    with pytest.raises(TypeError, match="takes 4 arguments"):
        fn((1,), (4,), (out,))


def test_launch_call_shape_is_cupys(mod):
    """fn(grid, block, args, *, shared_mem=0) with tuples, as cupy.RawKernel takes it."""
    fn = mod.get_function("read_unwritten<float>")
    out = np.zeros(32, np.float32)
    with pytest.raises(TypeError, match="must be a tuple"):
        fn(1, (32,), (out,))
    with pytest.raises(TypeError, match="must be a tuple"):
        fn([1], (32,), (out,))
    with pytest.raises(TypeError, match="positional"):
        fn((1,), (32,), (out,), 0)
    with pytest.raises(LaunchLimitError, match="dimension < 1"):
        fn((0,), (32,), (out,))


def test_compile_error_names_the_source_line():
    with pytest.raises(EmulatorCompileError, match=r"broken\.cu:3:"):
        EmuModule("template <typename T>\n__global__ void k(T* x) {\n  x[0] = ;\n}\n", ["k<float>"], "broken.cu")


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-igc")
    with pytest.raises(EmulatorCompileError, match="needs a C\\+\\+17 compiler"):
        EmuModule(SOURCE, ["matmul_tiled<float>"], "x.cu")


ALIGNED = r"""
// The dynamic shared array declared as CUDA code must declare it to be read as double (bug 6):
// 16-aligned bytes, one declaration for float and double.
template <typename T>
__global__ void __launch_bounds__(64) aligned_dynamic(const T* x, T* out, unsigned long long* address) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* s = reinterpret_cast<T*>(smem_raw);
    s[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
    if (threadIdx.x == 0) *address = reinterpret_cast<unsigned long long>(smem_raw);
}
"""


@pytest.mark.parametrize("ctype,dtype", [("float", np.float32), ("double", np.float64)])
def test_aligned_dynamic_shared_memory(ctype, dtype):
    """`extern __shared__ __align__(16) unsigned char s[]` (and __launch_bounds__) compile in the
    emulator, and the array is 16-byte aligned as on a GPU."""
    mod = EmuModule(ALIGNED, [f"aligned_dynamic<{ctype}>"], "aligned.cu")
    x = np.arange(64, dtype=dtype)
    out, address = np.zeros(64, dtype=dtype), np.zeros(1, dtype=np.uint64)
    mod.get_function(f"aligned_dynamic<{ctype}>")((1,), (64,), (x, out, address), shared_mem=64 * x.itemsize)
    np.testing.assert_array_equal(out, x[::-1])
    assert int(address[0]) % 16 == 0


def test_the_emulator_says_plainly_that_it_needs_linux(monkeypatch):
    """On macOS (Mach-O, no ELF sections) a build is a clear error, not a clang diagnostic."""
    monkeypatch.setattr(loader.sys, "platform", "darwin")
    with pytest.raises(loader.EmulatorCompileError, match="needs Linux.*darwin.*device 'cpu'"):
        loader.build("__global__ void k() {}", [], "probe.cu")


# ---- the limits of a GPU launch (sm_90) ----------------------------------------------------------
LIMITS = r"""
#define BOUNDS __launch_bounds__(128, 8)

template <typename T>
__global__ void BOUNDS bounded(T* out) { out[threadIdx.x] = T(1); }

template <typename T, int B>
__global__ void __launch_bounds__(B) bounded_by_parameter(T* out) { out[threadIdx.x] = T(1); }

__global__ void plain(float* out) { out[0] = 1.0f; }

// 30 KB of static shared memory in the kernel's body
template <typename T>
__global__ void static_tile(T* out, int n) {
    __shared__ T tile[30 * 1024 / sizeof(T)];
    extern __shared__ __align__(16) unsigned char smem_raw[];
    tile[threadIdx.x] = T(threadIdx.x);
    __syncthreads();
    if (threadIdx.x < n) out[threadIdx.x] = tile[threadIdx.x];
}

// 32 KB declared by a __device__ function: counted when a block reaches it
template <typename T>
__device__ T stage(int i) {
    __shared__ T big[32 * 1024 / sizeof(T)];
    big[i] = T(i);
    __syncthreads();
    return big[i];
}

template <typename T>
__global__ void calls_stage(T* out) { out[threadIdx.x] = stage<T>(threadIdx.x); }

// Only dynamic shared memory: a block-sized copy through it
template <typename T>
__global__ void dynamic_copy(const T* x, T* out) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* s = reinterpret_cast<T*>(smem_raw);
    s[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}
"""


@pytest.fixture(scope="module")
def limits():
    return EmuModule(LIMITS, ["bounded<float>", "bounded_by_parameter<float, 64>", "bounded_by_parameter<float, 512>",
                              "plain", "static_tile<float>", "calls_stage<float>", "dynamic_copy<float>"], "limits.cu")


def test_threads_over_launch_bounds_are_refused(limits):
    """A GPU refuses more threads than __launch_bounds__ promised ptxas (issue 16, bug 1: the v3
    conv launched 14x16 = 224 threads against __launch_bounds__(128, 8))."""
    fn = limits.get_function("bounded<float>")
    assert fn.max_threads_per_block == 128
    out = np.zeros(256, np.float32)
    fn((1,), (128,), (out,))  # 128: allowed
    assert out[:128].sum() == 128
    with pytest.raises(LaunchLimitError, match=r"bounded<float>: launch grid \(1, 1, 1\) block \(14, 16, 1\).*224 "
                                               r"threads per block, over the 128 of its __launch_bounds__\(128\)"):
        fn((1,), (14, 16), (out,))


@pytest.mark.parametrize("expr,limit", [("bounded_by_parameter<float, 64>", 64),
                                        ("bounded_by_parameter<float, 512>", 512), ("plain", 1024)])
def test_launch_bounds_per_instantiation(limits, expr, limit):
    """__launch_bounds__ of a template parameter is evaluated per instantiation; none: 1024."""
    fn = limits.get_function(expr)
    assert fn.max_threads_per_block == limit
    out = np.zeros(2048, np.float32)
    fn((1,), (limit,), (out,))
    with pytest.raises(LaunchLimitError, match=rf"{limit + 1}.* over the .*{limit}"):
        fn((1,), (limit + 1,), (out,))


@pytest.mark.parametrize("grid,block,message", [
    ((1,), (2048,), r"blockDim.x = 2048 is over the GPU's limit of 1024"),
    ((1,), (1, 1025), r"blockDim.y = 1025 is over the GPU's limit of 1024"),
    ((1,), (1, 1, 65), r"blockDim.z = 65 is over the GPU's limit of 64"),
    ((1,), (64, 32), r"2048 threads per block, over the 1024 of the GPU's limit"),
    ((2 ** 31,), (1,), r"gridDim.x = 2147483648 is over the GPU's limit of 2147483647"),
    ((1, 65536), (1,), r"gridDim.y = 65536 is over the GPU's limit of 65535"),
    ((1, 1, 65536), (1,), r"gridDim.z = 65536 is over the GPU's limit of 65535"),
])
def test_grid_and_block_limits(limits, grid, block, message):
    with pytest.raises(LaunchLimitError, match=message):
        limits.get_function("plain")(grid, block, (np.zeros(1, np.float32),))


def test_grid_at_the_limits_is_allowed(limits):
    out = np.zeros(1, np.float32)
    limits.get_function("plain")((1, 65535), (1,), (out,))  # 65535 blocks: allowed, and cheap
    assert out[0] == 1


def test_static_and_dynamic_shared_memory_over_48_kb_needs_the_opt_in(limits):
    fn = limits.get_function("static_tile<float>")
    assert fn.shared_size_bytes == 30 * 1024
    assert fn.max_dynamic_shared_size_bytes == 48 * 1024 - 30 * 1024
    out = np.zeros(4, np.float32)
    fn((1,), (32,), (out, i32(4)), shared_mem=18 * 1024)  # 48 KB in all: allowed
    np.testing.assert_array_equal(out, [0, 1, 2, 3])
    with pytest.raises(LaunchLimitError, match=r"static_tile<float>: launch .*shared_mem=18433.*static 30720 \+ "
                                               r"dynamic 18433 = 49153 bytes.*over the 48 KB.*max_dynamic_shared_size_bytes"):
        fn((1,), (32,), (out, i32(4)), shared_mem=18 * 1024 + 1)


def test_the_opt_in_allows_up_to_227_kb():
    mod = EmuModule(LIMITS, ["static_tile<double>", "dynamic_copy<double>"], "limits.cu")
    fn = mod.get_function("dynamic_copy<double>")
    x = np.arange(64.0)
    out = np.zeros(64)
    with pytest.raises(LaunchLimitError, match="over the 48 KB"):
        fn((1,), (64,), (x, out), shared_mem=100 * 1024)
    fn.max_dynamic_shared_size_bytes = 232448
    fn((1,), (64,), (x, out), shared_mem=232448)
    np.testing.assert_array_equal(out, x[::-1])
    fn.max_dynamic_shared_size_bytes = 100 * 1024
    with pytest.raises(LaunchLimitError, match=r"dynamic shared memory 102401 bytes is over the function's "
                                               r"max_dynamic_shared_size_bytes=102400"):
        fn((1,), (64,), (x, out), shared_mem=100 * 1024 + 1)
    with pytest.raises(LaunchLimitError, match=r"max_dynamic_shared_size_bytes=232449 is not allowed.*at most 232448"):
        fn.max_dynamic_shared_size_bytes = 232449
    tile = mod.get_function("static_tile<double>")  # 30 KB static: 227 KB - 30 KB dynamic at most
    with pytest.raises(LaunchLimitError, match=r"at most 201728"):
        tile.max_dynamic_shared_size_bytes = 232448


def test_shared_memory_of_a_device_function_counts(limits):
    """32 KB declared in a __device__ function + 20 KB dynamic: over 48 KB, found when the block
    reaches the declaration; afterwards the kernel's attribute includes it."""
    fn = limits.get_function("calls_stage<float>")
    out = np.zeros(32, np.float32)
    fn((1,), (32,), (out,))
    np.testing.assert_array_equal(out, np.arange(32))
    assert fn.shared_size_bytes == 32 * 1024
    with pytest.raises(LaunchLimitError, match="over the 48 KB"):
        fn((1,), (32,), (out,), shared_mem=20 * 1024)
    fresh = EmuModule(LIMITS + "\n// fresh\n", ["calls_stage<float>"], "limits.cu").get_function("calls_stage<float>")
    with pytest.raises(EmulatorError, match=r"static shared memory 32768 bytes \(counted when a __device__ function "
                                            r"declared its arrays\) \+ dynamic 20480 bytes is over the limit of 49152"):
        fresh((1,), (32,), (out,), shared_mem=20 * 1024)


# ---- sanitizer mode (IGC_NP_EMU_SANITIZE=1) --------------------------------------------------------
PLANTED = r"""
// Each kernel plants one bug that the sanitizer must catch, or (the *_ok ones) none.
template <typename T>
__global__ void read_past_end(const T* x, T* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i + 1];
}

template <typename T>
__global__ void write_past_end(const T* x, T* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = x[i < n ? i : 0];
}

template <typename T>
__global__ void read_before_start(const T* x, T* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i - 1];
}

template <typename T>
__global__ void shared_past_end(const T* x, T* y) {
    __shared__ T s[32];
    s[threadIdx.x + 1] = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
}

template <typename T>
__global__ void dynamic_shared_past_end(const T* x, T* y) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* s = reinterpret_cast<T*>(smem_raw);
    s[threadIdx.x + 1] = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x + 1];
}

template <typename T>
__global__ void uninitialised_shared(T* y) {
    __shared__ T s[32];
    if (threadIdx.x % 2 == 0) s[threadIdx.x] = T(1);
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
}

// Neighbour sums in place: the barrier between the read of s[i + 1] and the write of s[i] is missing.
template <typename T>
__global__ void shift_racy(const T* x, T* y) {
    __shared__ T s[64];
    s[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    const T right = threadIdx.x + 1 < blockDim.x ? s[threadIdx.x + 1] : T(0);
    s[threadIdx.x] += right;
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
}

template <typename T>
__global__ void shift_ok(const T* x, T* y) {
    __shared__ T s[64];
    s[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    const T right = threadIdx.x + 1 < blockDim.x ? s[threadIdx.x + 1] : T(0);
    __syncthreads();
    s[threadIdx.x] += right;
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
}

// Every thread writes the same flag: a write-after-write hazard.
template <typename T>
__global__ void same_flag(T* y) {
    __shared__ T flag;
    flag = T(threadIdx.x);
    __syncthreads();
    y[threadIdx.x] = flag;
}

// Atomics on shared memory are no race.
template <typename T>
__global__ void shared_atomic_ok(T* y) {
    __shared__ T count;
    if (threadIdx.x == 0) count = T(0);
    __syncthreads();
    atomicAdd(&count, T(1));
    __syncthreads();
    if (threadIdx.x == 0) y[blockIdx.x] = count;
}

// In place (x and y may be the same array): y[i] = 2 x[i].
template <typename T>
__global__ void twice_in_place(const T* x, T* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2 * x[i];
}
"""
PLANTED_KERNELS = ["read_past_end", "write_past_end", "read_before_start", "shared_past_end", "dynamic_shared_past_end",
                   "uninitialised_shared", "shift_racy", "shift_ok", "same_flag", "shared_atomic_ok", "twice_in_place"]


@pytest.fixture(scope="module")
def sanitized():
    """The planted-bug kernels built in sanitizer mode, switched on as users do: IGC_NP_EMU_SANITIZE=1."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IGC_NP_EMU_SANITIZE", "1")
        assert sanitizing()
        return EmuModule(PLANTED, [f"{k}<float>" for k in PLANTED_KERNELS], "planted.cu")


def test_sanitizing_reads_the_environment(monkeypatch):
    monkeypatch.delenv("IGC_NP_EMU_SANITIZE", raising=False)
    assert not sanitizing()
    monkeypatch.setenv("IGC_NP_EMU_SANITIZE", "0")
    assert not sanitizing()
    monkeypatch.setenv("IGC_NP_EMU_SANITIZE", "1")
    assert sanitizing()
    monkeypatch.setenv("IGC_NP_EMU_SANITIZE", "yes")
    with pytest.raises(ValueError, match="IGC_NP_EMU_SANITIZE must be 1"):
        sanitizing()


def test_sanitized_build_is_a_separate_library(sanitized):
    plain = EmuModule(PLANTED, [f"{k}<float>" for k in PLANTED_KERNELS], "planted.cu", sanitize=False)
    assert sanitized.sanitize and not plain.sanitize and plain.path != sanitized.path
    # without the sanitizer the planted read past the end goes unnoticed
    x, y = np.arange(40, dtype=np.float32), np.zeros(32, np.float32)
    plain.get_function("read_past_end<float>")((1,), (32,), (x[:32].copy(), y, i32(32)))


def _call(mod, name, grid, block, args, shared_mem=0):
    return mod.get_function(f"{name}<float>")(grid, block, args, shared_mem=shared_mem)


def test_out_of_bounds_global_read(sanitized):
    x, y = np.arange(32, dtype=np.float32), np.zeros(32, np.float32)
    with pytest.raises(EmulatorError, match=r"read_past_end<float> <<<grid \(1, 1, 1\), block \(32, 1, 1\).*"
                                            r"out-of-bounds global read of 4 bytes at byte offset 128 of argument 0 "
                                            r"\(an array of 128 bytes\): past its end at planted.cu:6 "
                                            r"\(thread \(31,0,0\) of block \(0,0,0\)\)"):
        _call(sanitized, "read_past_end", (1,), (32,), (x, y, i32(32)))


def test_out_of_bounds_global_write(sanitized):
    x, y = np.arange(32, dtype=np.float32), np.zeros(32, np.float32)
    with pytest.raises(EmulatorError, match=r"out-of-bounds global write of 4 bytes at byte offset 128 of argument 1 "
                                            r".*planted.cu:12 \(thread \(15,0,0\) of block \(1,0,0\)\)"):
        _call(sanitized, "write_past_end", (2,), (17,), (x, y, i32(32)))
    # the launch's writes up to the fault came back to the caller's array
    np.testing.assert_array_equal(y, x)


def test_out_of_bounds_global_read_before_the_start(sanitized):
    x, y = np.arange(32, dtype=np.float32), np.zeros(32, np.float32)
    with pytest.raises(EmulatorError, match=r"global read .*4 bytes before its start.*\(thread \(0,0,0\)"):
        _call(sanitized, "read_before_start", (1,), (32,), (x, y, i32(32)))


def test_out_of_bounds_static_shared(sanitized):
    x, y = np.arange(32, dtype=np.float32), np.zeros(32, np.float32)
    with pytest.raises(EmulatorError, match=r"out-of-bounds index 32 into an array of type 'float \[32\]' at "
                                            r"planted.cu:24 \(thread \(31,0,0\)"):
        _call(sanitized, "shared_past_end", (1,), (32,), (x, y))


def test_out_of_bounds_dynamic_shared(sanitized):
    x, y = np.arange(32, dtype=np.float32), np.zeros(32, np.float32)
    with pytest.raises(EmulatorError, match=r"out-of-bounds shared write of 4 bytes at byte 128 of dynamic shared "
                                            r"memory, which has shared_mem=128 bytes at planted.cu:33 \(thread \(31,0,0\)"):
        _call(sanitized, "dynamic_shared_past_end", (1,), (32,), (x, y), shared_mem=32 * 4)
    _call(sanitized, "dynamic_shared_past_end", (1,), (32,), (x, y), shared_mem=33 * 4)  # room for 33: fine
    np.testing.assert_array_equal(y, x)


def test_uninitialised_shared_read(sanitized):
    """The poison shows without the sanitizer (test_unwritten_shared_memory_reads_nan); with it
    the read itself is the error."""
    with pytest.raises(EmulatorError, match=r"uninitialised shared memory: reads __shared__ s byte 4, which no thread "
                                            r"of this block has written.*planted.cu:43 \(thread \(1,0,0\) of block \(0,0,0\)\)"):
        _call(sanitized, "uninitialised_shared", (1,), (32,), (np.zeros(32, np.float32),))


def test_race_with_a_missing_barrier(sanitized):
    x, y = np.arange(64, dtype=np.float32), np.zeros(64, np.float32)
    with pytest.raises(EmulatorError, match=r"shared-memory race \(write after read\): writes __shared__ s byte 4, "
                                            r"read by thread \(0,0,0\) with no __syncthreads\(\) between at "
                                            r"planted.cu:53 \(thread \(1,0,0\) of block \(0,0,0\)\)"):
        _call(sanitized, "shift_racy", (1,), (64,), (x, y))


def test_the_same_kernel_with_the_barrier_passes(sanitized):
    x, y = np.arange(64, dtype=np.float32), np.zeros(64, np.float32)
    _call(sanitized, "shift_ok", (2,), (64,), (x, y))
    np.testing.assert_array_equal(y, x + np.append(x[1:], 0))


def test_write_after_write_race(sanitized):
    with pytest.raises(EmulatorError, match=r"race \(write after write\): writes __shared__ flag byte 0, also written "
                                            r"by thread \(0,0,0\)"):
        _call(sanitized, "same_flag", (1,), (4,), (np.zeros(4, np.float32),))


def test_shared_atomics_are_no_race(sanitized):
    y = np.zeros(3, np.float32)
    _call(sanitized, "shared_atomic_ok", (3,), (32,), (y,))
    np.testing.assert_array_equal(y, 32)


def test_arguments_that_alias_share_one_copy(sanitized):
    """The sanitizer copies arrays into its arena; the same array twice (in place) stays one array."""
    a = np.arange(40, dtype=np.float32)
    _call(sanitized, "twice_in_place", (2,), (32,), (a, a, i32(40)))
    np.testing.assert_array_equal(a, 2 * np.arange(40))
    b = np.arange(40, dtype=np.float32)
    _call(sanitized, "twice_in_place", (1,), (32,), (b[8:], b[:32], i32(32)))  # overlapping views
    np.testing.assert_array_equal(b[:32], 2 * np.arange(8, 40))


def test_sanitized_kernels_compute_the_same(mod, monkeypatch):
    monkeypatch.setenv("IGC_NP_EMU_SANITIZE", "1")
    smod = EmuModule(SOURCE, ["matmul_tiled<double>", "block_sum<float>", "coordinates<double>"], "test_emulator_kernels.cu")
    rng = np.random.default_rng(0)
    A, B = rng.integers(-8, 8, (13, 11)).astype(np.float64), rng.integers(-8, 8, (11, 9)).astype(np.float64)
    C = np.full((13, 9), np.nan)
    smod.get_function("matmul_tiled<double>")((2, 2), (8, 8), (A, B, C, i32(13), i32(11), i32(9)))
    np.testing.assert_array_equal(C, A @ B)
    x, out = np.arange(1000, dtype=np.float32), np.zeros(3, np.float32)
    smod.get_function("block_sum<float>")((3,), (128,), (x, out, i32(1000)), shared_mem=128 * 4)
    assert out.sum() == x.sum()
    out = np.zeros(7 * 5 * 3)
    smod.get_function("coordinates<double>")((2, 3, 2), (4, 2, 2), (out, i32(7), i32(5), i32(3)))
    np.testing.assert_array_equal(out, np.arange(1, out.size + 1))


def test_limits_apply_in_sanitizer_mode(sanitized):
    with pytest.raises(LaunchLimitError, match="over the GPU's limit of 1024"):
        _call(sanitized, "shift_ok", (1,), (2048,), (np.zeros(1, np.float32), np.zeros(1, np.float32)))


# ---- the compile cache: private, and only libraries we built are loaded (issue 18) ---------------
TINY = "__global__ void one(float* y) { y[threadIdx.x] = 1.0f; }\n"


def _tiny(tag):
    out = np.zeros(4, np.float32)
    m = EmuModule(TINY + f"// {tag}\n", ["one"], "tiny.cu")
    m.get_function("one")((1,), (4,), (out,))
    assert np.all(out == 1)
    return m


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IGC_NP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loader, "_compiled", {})  # no library loaded by an earlier test short-cuts the checks
    return tmp_path / "cache" / "emu"


def test_cache_folder_is_private(cache):
    m = _tiny("private")
    assert os.path.dirname(m.path) == str(cache)
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert (open(m.path + ".sha256").read().strip() ==
            __import__("hashlib").sha256(open(m.path, "rb").read()).hexdigest())


def test_cache_folder_writable_by_others_is_not_used(cache):
    cache.mkdir(parents=True)
    os.chmod(cache, 0o777)
    with pytest.warns(UserWarning, match=r"not using the compile cache .*writable by group and others \(mode 0777\)"):
        m = _tiny("shared folder")
    assert not m.path.startswith(str(cache)) and os.stat(os.path.dirname(m.path)).st_uid == os.geteuid()
    assert not list(cache.iterdir())


def test_tampered_library_is_built_again(cache):
    m = _tiny("tamper")
    with open(m.path, "ab") as f:
        f.write(b"planted")
    loader._compiled.clear()
    with pytest.warns(UserWarning, match=r"not loading the cached library .*sha256 differs"):
        m2 = _tiny("tamper")
    assert m2.path == m.path and not open(m.path, "rb").read().endswith(b"planted")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt library loads without a warning
        loader._compiled.clear()
        _tiny("tamper")


def test_library_without_its_hash_is_built_again(cache):
    m = _tiny("no hash")
    os.unlink(m.path + ".sha256")
    loader._compiled.clear()
    with pytest.warns(UserWarning, match=r"recorded hash \(.sha256\) is missing"):
        _tiny("no hash")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_library_owned_by_another_user_is_not_loaded(cache):
    m = _tiny("owner")
    os.chown(m.path, 12345, 12345)
    loader._compiled.clear()
    with pytest.warns(UserWarning, match=r"not loading the cached library .*owned by uid 12345, not by you"):
        _tiny("owner")
    assert os.stat(m.path).st_uid == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_cache_folder_owned_by_another_user_is_not_used(cache):
    cache.mkdir(parents=True)
    os.chmod(cache, 0o700)
    os.chown(cache, 12345, 12345)
    with pytest.warns(UserWarning, match=r"not using the compile cache .*owned by uid 12345"):
        m = _tiny("other owner")
    assert not m.path.startswith(str(cache))


def test_library_writable_by_others_is_not_loaded(cache):
    m = _tiny("mode")
    os.chmod(m.path, 0o666)
    loader._compiled.clear()
    with pytest.warns(UserWarning, match=r"writable by group and others \(mode 0666\)"):
        _tiny("mode")
    assert stat.S_IMODE(os.stat(m.path).st_mode) == 0o700


def test_our_kernels_launch_bounds_are_read():
    """igc_np's kernels declare their bounds through macros (IGC_TILE_BOUNDS) and constants
    (IS_THREADS): the emulator reads them per instantiation, and the static shared memory of
    interleaved_tile (declared in a __device__ function) counts once launched."""
    from igc_np.kernels import get_module
    v3 = get_module("group_conv_v3.cu", np.float32, "emu")
    assert v3.get_function("conv2d_forward_v3", (3, 3, 1, 1)).max_threads_per_block == 128
    assert v3.get_function("conv2d_backward_data_v3", (1, 1, 1, 1)).max_threads_per_block == 128
    assert v3.get_function("conv2d_backward_weight_v3", (3, 3, 2, 2)).max_threads_per_block == 256
    assert v3.get_function("conv2d_backward_weight_v3_reduce").max_threads_per_block == 1024
    inter = get_module("interleaved_secondary.cu", np.float64, "emu")
    fn = inter.get_function("interleaved_secondary_forward_tiled", (32,))  # TR = 32 rows a tile
    assert fn.max_threads_per_block == 256
    x, W2 = np.ones((1, 4, 2, 2)), np.ones((4, 2, 1, 1))
    y = np.zeros_like(x)
    fn((1,), (256,), (x, W2, y, i32(1), i32(4), i32(4), i32(2), i32(2)))
    # As (TR x (TK + 1) = 32 x 17) and Bs (sized for every TR: 1024) of interleaved_tile<double>
    assert fn.shared_size_bytes == 8 * (32 * 17 + 1024)


# ---- each library is on its own: no emulator state shared between the libraries of a process ----

# the emulator's state, by its mangled name: g++ made these process-wide (STB_GNU_UNIQUE) until the
# libraries were built with -fvisibility=hidden -fno-gnu-unique, so every library of a process used
# the first one's scheduler and sanitizer state (CI crashed: the sanitizer's range of __shared__
# arrays spanned two libraries and a fiber stack between them, see cuda_emu.h's Sanitizer.checking)
STATE_SYMBOLS = ["_ZN7igc_emu5schedE", "_ZN7igc_emu3sanE", "_ZN7igc_emu11shared_varsE", "_ZN7igc_emu12launch_mutexE"]


@pytest.mark.parametrize("sanitize", [False, True])
def test_each_library_keeps_its_own_state(sanitize):
    import ctypes
    a = EmuModule(SOURCE, ["matmul_tiled<double>"], "a.cu", sanitize=sanitize)
    b = EmuModule(SOURCE + "// another library\n", ["block_sum<float>"], "b.cu", sanitize=sanitize)
    assert a.path != b.path
    for m in (a, b):
        lib = ctypes.CDLL(m.path)  # the same handle: a library is loaded once
        state = [name for name in STATE_SYMBOLS if hasattr(lib, name)]
        assert state == [], f"{m.path} exports the emulator's state {state}"
        assert hasattr(lib, "igc_emu_launch_" + loader._symbol(m.name_expressions[0]))
    # and the two work one after the other, each on its own scheduler
    rng = np.random.default_rng(3)
    for _ in range(2):
        check_matmul_and_block_sum(a, b, rng)


def check_matmul_and_block_sum(matmul_module, sum_module, rng):
    """The tiled matmul (barriers, static shared memory) and the block reduction (dynamic shared
    memory) against NumPy."""
    A, B = rng.standard_normal((13, 11)), rng.standard_normal((11, 9))
    C = np.zeros((13, 9))
    matmul_module.get_function("matmul_tiled<double>")((2, 2), (8, 8), (A, B, C, i32(13), i32(11), i32(9)))
    np.testing.assert_allclose(C, A @ B, rtol=1e-12, atol=1e-12)
    x, out = rng.standard_normal(1000).astype(np.float32), np.zeros(3, np.float32)
    sum_module.get_function("block_sum<float>")((3,), (128,), (x, out, i32(1000)), shared_mem=128 * 4)
    np.testing.assert_allclose(out.sum(), x.sum(dtype=np.float64), rtol=0, atol=1e-3)


def test_only_the_entry_points_are_exported():
    """nm: the library's own symbols are the igc_emu_* entry points (libstdc++'s template code aside)."""
    import shutil
    import subprocess
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    for sanitize in (False, True):
        m = EmuModule(SOURCE, ["matmul_tiled<double>", "block_sum<float>"], "a.cu", sanitize=sanitize)
        lines = subprocess.run([nm, "-D", "--defined-only", m.path], capture_output=True, text=True,
                               check=True).stdout.splitlines()
        unique = [ln for ln in lines if " u " in ln]
        ours = [ln.split()[-1] for ln in lines if ln.split()[-1].startswith("igc_emu_")]
        leaked = [ln for ln in lines if "igc_emu" in ln and not ln.split()[-1].startswith("igc_emu_")]
        assert unique == [] and leaked == [], (unique, leaked)
        assert {f"igc_emu_launch_{loader._symbol(e)}" for e in m.name_expressions} <= set(ours)


def test_clang_builds_without_the_gcc_only_flag(monkeypatch):
    """CXX=clang++: no -fno-gnu-unique (clang refuses it, and has no unique symbols to avoid)."""
    monkeypatch.setitem(loader._compiler_version.__defaults__[0], "clang++", "clang version 18.1.3\n")
    monkeypatch.setitem(loader._compiler_version.__defaults__[0], "g++", "g++ (Debian 12.2.0-14) 12.2.0\n")
    assert "-fno-gnu-unique" not in loader.compile_flags("clang++", sanitize=False)
    assert "-fno-gnu-unique" in loader.compile_flags("g++", sanitize=False)
    assert "-fvisibility=hidden" in loader.compile_flags("clang++", sanitize=False)
    assert "-fno-gnu-unique" in loader.compile_flags("g++", sanitize=True)


STACK_HOG = r"""
// one thread uses more stack than a fiber has (256 KB): the guard page must stop it
__global__ void stack_hog(float* out, int n) {
    volatile char big[512 * 1024];
    big[threadIdx.x] = (char)n;
    big[sizeof(big) - 1 - threadIdx.x] = (char)n;
    out[threadIdx.x] = big[threadIdx.x] + big[sizeof(big) - 1 - threadIdx.x];
}
__global__ void small(float* out, int n) {
    volatile char buf[64 * 1024];  // well within a fiber's stack
    buf[threadIdx.x] = (char)n;
    out[threadIdx.x] = buf[threadIdx.x];
}
"""


@pytest.mark.parametrize("sanitize", ["0", "1"])
def test_a_stack_overflow_stops_at_the_guard_page(sanitize, tmp_path):
    """A thread that overflows its stack ends the process with SIGSEGV at its guard page; without
    the guard it wrote over the next fiber's stack, or a library mapped below, and ran on."""
    import signal
    import subprocess
    import sys
    script = tmp_path / "hog.py"
    script.write_text(
        "import numpy as np, sys\n"
        "from igc_np.emu import EmuModule\n"
        f"m = EmuModule({STACK_HOG!r}, ['small', 'stack_hog'], 'hog.cu')\n"
        "out = np.zeros(4, np.float32)\n"
        "m.get_function('small')((1,), (4,), (out, np.int32(2)))\n"
        "assert (out == 2).all(), out\n"
        "print('small ran', flush=True)\n"
        "m.get_function('stack_hog')((1,), (4,), (out, np.int32(3)))\n"
        "print('stack_hog ran', flush=True)\n")
    env = dict(os.environ, IGC_NP_EMU_SANITIZE=sanitize,
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-X", "faulthandler", str(script)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert "small ran" in proc.stdout, proc.stderr
    assert "stack_hog ran" not in proc.stdout
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stderr[-2000:])
    assert "Segmentation fault" in proc.stderr and "hog.py" in proc.stderr


def test_the_ucontext_fibers_of_other_platforms(monkeypatch):
    """Off x86-64 the fibers switch with ucontext (-DIGC_EMU_UCONTEXT forces it here): same results,
    barriers included, on the same guarded stacks."""
    monkeypatch.setattr(loader, "CXX_FLAGS", loader.CXX_FLAGS + ("-DIGC_EMU_UCONTEXT",))
    m = EmuModule(SOURCE, ["matmul_tiled<double>", "block_sum<float>"], "a.cu", sanitize=False)
    check_matmul_and_block_sum(m, m, np.random.default_rng(5))
