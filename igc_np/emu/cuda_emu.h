// cuda_emu.h: lets g++ compile a CUDA kernel source (.cu) and run its kernels on the CPU.
//
// The model is the CUDA execution model, slowly and exactly:
//   - blocks of the grid run one after another;
//   - the threads of a block run as cooperative fibers on one OS thread: a fiber runs until it
//     reaches __syncthreads() or returns, then the next fiber runs. When every fiber of the block
//     waits at the same barrier, all of them resume. So barriers and __shared__ memory behave as
//     on the GPU, and a kernel that forgets a barrier reads stale shared data here as well;
//   - shared memory is filled with 0xFF bytes (a NaN for float and double) before each block, so a
//     read of shared memory that no thread of the block wrote shows up as NaN in the result;
//   - a deadlock (threads wait at a barrier while others exited, or threads wait at different
//     barriers) is reported as an error naming the barriers' lines, never a hang.
// The Python loader (loader.py) includes this header before the .cu source, adds a launch shim
// per kernel and builds a shared library; launches come in through igc_emu::launch below.
// Warp-level intrinsics (__shfl_*, __ballot_sync, ...) are not emulated.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// The fast context switch is x86-64 assembly; elsewhere (or with -DIGC_EMU_UCONTEXT) ucontext.
#if defined(__x86_64__) && !defined(IGC_EMU_UCONTEXT)
#define IGC_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#define IGC_EMU 1

// ---- CUDA keywords -------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// Function-scope __shared__ declarations are rewritten by the loader to also call
// igc_emu::shared_declared(); the section is for file-scope ones (filled before each block).
#define __shared__ static __attribute__((section("igc_emu_shared"), aligned(16)))

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace igc_emu {

// The built-in variables. One copy per OS thread; the scheduler sets threadIdx before it resumes
// a fiber, which makes them per-fiber as far as the kernel can tell.
inline uint3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;

}  // namespace igc_emu

#define threadIdx (igc_emu::thread_idx)
#define blockIdx (igc_emu::block_idx)
#define blockDim (igc_emu::block_dim)
#define gridDim (igc_emu::grid_dim)
#define warpSize 32

// ---- device functions ----------------------------------------------------------------------
// Fibers never run at the same time, so a plain read-modify-write is atomic here.
template <typename T>
inline T atomicAdd(T* address, T val) { T old = *address; *address = old + val; return old; }
template <typename T>
inline T atomicMax(T* address, T val) { T old = *address; *address = old > val ? old : val; return old; }
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() {}
// fmaxf, fminf, sqrtf, expf, logf, fabsf, rsqrt-free maths: from <math.h>.
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }

namespace igc_emu {

// ---- context switch --------------------------------------------------------------------------
#if defined(IGC_EMU_ASM_SWITCH)
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save, loads
// `load` as stack pointer and pops that stack's registers: a switch costs a few nanoseconds
// (ucontext's swapcontext makes a signal-mask system call on every switch).
extern "C" void igc_emu_switch(void** save, void* load);
asm(R"(
    .text
    .p2align 4
    .hidden igc_emu_switch
    .globl igc_emu_switch
    .type igc_emu_switch,@function
igc_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size igc_emu_switch,.-igc_emu_switch
)");
#endif

enum FiberState { kRunning, kAtBarrier, kDone };

struct Fiber {
    uint3 tid;
    FiberState state;
    int line;             // call site of the barrier the fiber waits at
    const char* file;
#if defined(IGC_EMU_ASM_SWITCH)
    void* sp;
#else
    ucontext_t ctx;
#endif
};

struct Scheduler {
    std::vector<Fiber> fibers;
    char* stacks = nullptr;
    size_t stack_bytes = 256 * 1024;  // mmap'd lazily: untouched pages cost nothing
    size_t nstacks = 0;
    Fiber* current = nullptr;
    void (*body)(void*) = nullptr;    // runs the kernel for the current thread
    void* body_arg = nullptr;
    unsigned long long block_epoch = 0;
#if defined(IGC_EMU_ASM_SWITCH)
    void* sched_sp = nullptr;
#else
    ucontext_t sched_ctx;
#endif
};
inline Scheduler sched;
inline std::mutex launch_mutex;  // static shared memory and the scheduler are process-wide

inline void fiber_main() {
    Fiber* f = sched.current;
    sched.body(sched.body_arg);
    f->state = kDone;
#if defined(IGC_EMU_ASM_SWITCH)
    igc_emu_switch(&f->sp, sched.sched_sp);
    __builtin_unreachable();
#endif
    // ucontext: returning resumes uc_link, the scheduler
}

inline void fiber_start(Fiber& f, char* stack, size_t size) {
    f.state = kRunning;
#if defined(IGC_EMU_ASM_SWITCH)
    // Build the frame igc_emu_switch pops: six registers, then fiber_main as return address.
    // The slot above it is a fake return address of fiber_main so that its stack is aligned
    // as at a normal call (rsp = 8 mod 16 at entry).
    uintptr_t* top = reinterpret_cast<uintptr_t*>(
        (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15));
    top[-1] = 0;
    top[-2] = reinterpret_cast<uintptr_t>(&fiber_main);
    for (int r = 3; r <= 8; ++r) top[-r] = 0;
    f.sp = top - 8;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack;
    f.ctx.uc_stack.ss_size = size;
    f.ctx.uc_link = &sched.sched_ctx;
    makecontext(&f.ctx, &fiber_main, 0);
#endif
}

inline void fiber_resume(Fiber& f) {
    sched.current = &f;
    thread_idx = f.tid;
    f.state = kRunning;
#if defined(IGC_EMU_ASM_SWITCH)
    igc_emu_switch(&sched.sched_sp, f.sp);
#else
    swapcontext(&sched.sched_ctx, &f.ctx);
#endif
}

// __syncthreads(): park this fiber at the barrier and hand control back to the scheduler.
inline void syncthreads(int line, const char* file) {
    Fiber* f = sched.current;
    f->state = kAtBarrier;
    f->line = line;
    f->file = file;
#if defined(IGC_EMU_ASM_SWITCH)
    igc_emu_switch(&f->sp, sched.sched_sp);
#else
    swapcontext(&f->ctx, &sched.sched_ctx);
#endif
}

// ---- shared memory ---------------------------------------------------------------------------
// Function-scope `__shared__ T a[..];` becomes `__shared__ T a[..]; shared_declared(a, sizeof a);`
// (done by the loader). The first thread of a block to pass the declaration fills the array with
// 0xFF; no thread of the block can have written it before, since writing needs the declaration.
struct SharedVar { void* p; unsigned long long epoch; };
inline std::vector<SharedVar> shared_vars;

inline void shared_declared(void* p, size_t bytes) {
    for (SharedVar& v : shared_vars) {
        if (v.p == p) {
            if (v.epoch != sched.block_epoch) { memset(p, 0xFF, bytes); v.epoch = sched.block_epoch; }
            return;
        }
    }
    memset(p, 0xFF, bytes);
    shared_vars.push_back({p, sched.block_epoch});
}

extern "C" char __start_igc_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_igc_emu_shared[] __attribute__((weak, visibility("hidden")));

// Dynamic shared memory (`extern __shared__ unsigned char smem[];`): the loader defines one
// array of this size per declared name and a function that fills the first `bytes` (the launch's
// shared_mem) of each with 0xFF.
constexpr size_t kDynamicSharedBytes = 48 * 1024;
void fill_dynamic_shared(size_t bytes);

// ---- launch ----------------------------------------------------------------------------------
struct LaunchError : std::runtime_error { using std::runtime_error::runtime_error; };

inline std::string site(const Fiber& f) {
    return std::string(f.file) + ":" + std::to_string(f.line);
}

inline std::string tid_str(const uint3& t) {
    return "(" + std::to_string(t.x) + "," + std::to_string(t.y) + "," + std::to_string(t.z) + ")";
}

inline void run_block() {
    const size_t n = sched.fibers.size();
    for (size_t i = 0; i < n; ++i)
        fiber_start(sched.fibers[i], sched.stacks + i * sched.stack_bytes, sched.stack_bytes);
    for (;;) {
        // One phase: every live fiber runs until it exits or reaches a barrier.
        for (Fiber& f : sched.fibers)
            if (f.state != kDone) fiber_resume(f);
        const Fiber* done = nullptr;
        const Fiber* waiting = nullptr;
        for (const Fiber& f : sched.fibers) {
            if (f.state == kDone) { if (!done) done = &f; continue; }
            if (!waiting) { waiting = &f; continue; }
            if (f.line != waiting->line || strcmp(f.file, waiting->file) != 0)
                throw LaunchError("deadlock in block " + tid_str(block_idx) + ": thread " +
                                  tid_str(waiting->tid) + " waits at __syncthreads() " + site(*waiting) +
                                  " while thread " + tid_str(f.tid) + " waits at " + site(f));
        }
        if (!waiting) return;  // every thread exited
        if (done)
            throw LaunchError("deadlock in block " + tid_str(block_idx) + ": thread " +
                              tid_str(waiting->tid) + " waits at __syncthreads() " + site(*waiting) +
                              " but thread " + tid_str(done->tid) + " has exited");
    }
}

template <typename... A, size_t... I>
inline void call_kernel(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <typename... A>
struct Bound {
    void (*kernel)(A...);
    void** args;
    static void run(void* self) {
        Bound* b = static_cast<Bound*>(self);
        call_kernel(b->kernel, b->args, std::index_sequence_for<A...>{});
    }
};

// Runs kernel<<<grid, block, shared_mem>>>(args...). args[i] points at the value of parameter i
// (a pointer value for array parameters). Returns 0, or 1 with a message in err.
template <typename... A>
int launch(void (*kernel)(A...), const unsigned* grid, const unsigned* block, size_t shared_mem,
           void** args, char* err, size_t errlen) {
    std::lock_guard<std::mutex> lock(launch_mutex);
    try {
        const size_t nthreads = size_t(block[0]) * block[1] * block[2];
        if (nthreads == 0 || nthreads > 1024 || block[2] > 64)
            throw LaunchError("invalid block " + tid_str({block[0], block[1], block[2]}) +
                              ": 1 to 1024 threads, z at most 64");
        if (size_t(grid[0]) * grid[1] * grid[2] == 0 || grid[1] > 65535 || grid[2] > 65535)
            throw LaunchError("invalid grid " + tid_str({grid[0], grid[1], grid[2]}));
        if (shared_mem > kDynamicSharedBytes)
            throw LaunchError("shared_mem=" + std::to_string(shared_mem) + " bytes exceeds the " +
                              std::to_string(kDynamicSharedBytes) + " bytes the emulator reserves");
        if (sched.nstacks < nthreads) {
            if (sched.stacks) munmap(sched.stacks, sched.nstacks * sched.stack_bytes);
            void* p = mmap(nullptr, nthreads * sched.stack_bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) { sched.stacks = nullptr; sched.nstacks = 0; throw LaunchError("mmap of fiber stacks failed"); }
            sched.stacks = static_cast<char*>(p);
            sched.nstacks = nthreads;
        }
        sched.fibers.assign(nthreads, Fiber{});
        size_t i = 0;
        for (unsigned z = 0; z < block[2]; ++z)
            for (unsigned y = 0; y < block[1]; ++y)
                for (unsigned x = 0; x < block[0]; ++x) sched.fibers[i++].tid = {x, y, z};
        Bound<A...> bound{kernel, args};
        sched.body = &Bound<A...>::run;
        sched.body_arg = &bound;
        grid_dim = dim3(grid[0], grid[1], grid[2]);
        block_dim = dim3(block[0], block[1], block[2]);
        for (unsigned z = 0; z < grid[2]; ++z)
            for (unsigned y = 0; y < grid[1]; ++y)
                for (unsigned x = 0; x < grid[0]; ++x) {
                    block_idx = {x, y, z};
                    ++sched.block_epoch;
                    if (__start_igc_emu_shared != __stop_igc_emu_shared)
                        memset(__start_igc_emu_shared, 0xFF, __stop_igc_emu_shared - __start_igc_emu_shared);
                    fill_dynamic_shared(shared_mem);
                    run_block();
                }
        return 0;
    } catch (const std::exception& e) {
        snprintf(err, errlen, "%s", e.what());
        return 1;
    }
}

// ---- signatures, so that Python can check the launch arguments' types ------------------------
template <typename T> struct CName { static const char* get() { return nullptr; } };
#define IGC_EMU_CNAME(T) template <> struct CName<T> { static const char* get() { return #T; } };
IGC_EMU_CNAME(float) IGC_EMU_CNAME(double) IGC_EMU_CNAME(int) IGC_EMU_CNAME(unsigned int)
IGC_EMU_CNAME(long long) IGC_EMU_CNAME(unsigned long long) IGC_EMU_CNAME(long) IGC_EMU_CNAME(unsigned long)
IGC_EMU_CNAME(short) IGC_EMU_CNAME(unsigned short) IGC_EMU_CNAME(signed char) IGC_EMU_CNAME(unsigned char)
IGC_EMU_CNAME(char) IGC_EMU_CNAME(bool) IGC_EMU_CNAME(void)
#undef IGC_EMU_CNAME

template <typename T>
inline std::string type_name() {
    if constexpr (std::is_pointer_v<T>) {
        using P = std::remove_pointer_t<T>;
        return type_name<std::remove_cv_t<P>>() + "*";
    } else {
        const char* s = CName<std::remove_cv_t<T>>::get();
        return s ? s : "?";
    }
}

// "float*,float*,int,..." for the kernel's parameters (const dropped: the launcher passes arrays).
template <typename... A>
inline const char* signature(void (*)(A...)) {
    static const std::string s = [] {
        std::string r;
        ((r += type_name<A>() + ","), ...);
        if (!r.empty()) r.pop_back();
        return r;
    }();
    return s.c_str();
}

}  // namespace igc_emu

#define __syncthreads() igc_emu::syncthreads(__LINE__, __FILE__)
