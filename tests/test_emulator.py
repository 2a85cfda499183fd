"""The CPU emulator of CUDA kernels (igc_np.emu) on small kernels written for the purpose."""
import numpy as np
import pytest

from igc_np.emu import EmuModule, EmulatorCompileError, EmulatorError

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


def test_invalid_launch_configuration(mod):
    fn = mod.get_function("read_unwritten<float>")
    with pytest.raises(EmulatorError, match="invalid block"):
        fn((1,), (2048,), (np.zeros(2048, np.float32),))
    with pytest.raises(EmulatorError, match="shared_mem"):
        fn((1,), (32,), (np.zeros(32, np.float32),), shared_mem=1 << 20)


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
    from igc_np.emu import loader
    monkeypatch.setattr(loader.sys, "platform", "darwin")
    with pytest.raises(loader.EmulatorCompileError, match="needs Linux.*darwin.*device 'cpu'"):
        loader.build("__global__ void k() {}", [], "probe.cu")
