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
// The loader checks the GPU's launch limits (threads per block against __launch_bounds__, grid
// and block dimensions, static + dynamic shared memory) before each launch; shared arrays that
// only a __device__ function declares are counted when a block first passes their declaration.
// Built with -DIGC_EMU_SANITIZE (IGC_NP_EMU_SANITIZE=1), every memory access of the kernel goes
// through the checks at the end of this file (see "sanitizer").
// Warp-level intrinsics (__shfl_*, __ballot_sync, ...) are not emulated.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include <dlfcn.h>

#include <algorithm>
#include <map>
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
// (In sanitizer mode, not inlined and not instrumented: atomics are no race.)
#if defined(IGC_EMU_SANITIZE)
#define IGC_EMU_ATOMIC __attribute__((no_sanitize_thread, noinline))
#else
#define IGC_EMU_ATOMIC inline
#endif
#if defined(IGC_EMU_SANITIZE)
namespace igc_emu { inline void check_access(uintptr_t a, size_t n, bool write, void* pc, bool atomic); }
#define IGC_EMU_CHECK_ATOMIC(p) igc_emu::check_access(uintptr_t(p), sizeof(*(p)), true, __builtin_return_address(0), true)
#else
#define IGC_EMU_CHECK_ATOMIC(p)
#endif
template <typename T>
IGC_EMU_ATOMIC T atomicAdd(T* address, T val) { IGC_EMU_CHECK_ATOMIC(address); T old = *address; *address = old + val; return old; }
template <typename T>
IGC_EMU_ATOMIC T atomicMax(T* address, T val) { IGC_EMU_CHECK_ATOMIC(address); T old = *address; *address = old > val ? old : val; return old; }
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

enum FiberState { kRunning, kAtBarrier, kDone, kFault };

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

constexpr size_t kStackGuardBytes = 4096;

struct Scheduler {
    std::vector<Fiber> fibers;
    char* stacks = nullptr;
    size_t stack_bytes = 256 * 1024;  // mmap'd lazily: untouched pages cost nothing; the lowest
                                      // kStackGuardBytes of each are a guard (launch)
    size_t nstacks = 0;
    Fiber* current = nullptr;
    void (*body)(void*) = nullptr;    // runs the kernel for the current thread
    void* body_arg = nullptr;
    unsigned long long block_epoch = 0;
    std::string fault;                // set by fault(): the launch stops with this message
    const void* kernel = nullptr;     // the kernel being launched
    size_t dynamic_shared = 0;        // its launch's shared_mem
    size_t shared_limit = 0;          // static + dynamic bytes it may use
    size_t static_seen = 0;           // bytes of the static shared arrays declared in this launch
    std::vector<void*> arrays_seen;
#if defined(IGC_EMU_ASM_SWITCH)
    void* sched_sp = nullptr;
#else
    ucontext_t sched_ctx;
#endif
};
inline Scheduler sched;
inline std::mutex launch_mutex;  // the library's scheduler and static shared memory: one launch at a time

// Park fiber f (its state already set) and resume the scheduler, which resumes f later or never.
inline void to_scheduler(Fiber& f) {
#if defined(IGC_EMU_ASM_SWITCH)
    igc_emu_switch(&f.sp, sched.sched_sp);
#else
    swapcontext(&f.ctx, &sched.sched_ctx);
#endif
}

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
    to_scheduler(*f);
}

inline std::string tid_str(const uint3& t) {
    return "(" + std::to_string(t.x) + "," + std::to_string(t.y) + "," + std::to_string(t.z) + ")";
}

// Stop the launch: the current fiber never resumes (no unwinding across fiber stacks) and the
// scheduler raises `msg`, with the thread and block that faulted.
inline void fault(const std::string& msg) {
    Fiber* f = sched.current;
    sched.fault = msg + " (thread " + tid_str(f->tid) + " of block " + tid_str(block_idx) + ")";
    f->state = kFault;
    to_scheduler(*f);
    __builtin_unreachable();
}

// ---- shared memory ---------------------------------------------------------------------------
// Function-scope `__shared__ T a[..];` becomes `__shared__ T a[..]; shared_declared(a, sizeof a);`
// (done by the loader). The first thread of a block to pass the declaration fills the array with
// 0xFF; no thread of the block can have written it before, since writing needs the declaration.
struct SharedVar { void* p; size_t bytes; const char* name; unsigned long long epoch; void* shadow; };
inline std::vector<SharedVar> shared_vars;

// Static shared bytes of each kernel instantiation (arrays declared in its own body), filled
// while the library loads (StaticShared<...>::token below), read by the loader before a launch.
inline std::map<const void*, size_t>& static_shared_registry() {
    static std::map<const void*, size_t> r;
    return r;
}
inline bool register_static_shared(const void* kernel, size_t bytes) {
    static_shared_registry()[kernel] += bytes;
    return true;
}
template <auto Kernel, int Id, size_t Bytes>
struct StaticShared { static inline bool token = register_static_shared(reinterpret_cast<const void*>(Kernel), Bytes); };
inline void touch(const volatile bool*) {}
inline size_t static_shared_bytes(const void* kernel) {
    auto it = static_shared_registry().find(kernel);
    return it == static_shared_registry().end() ? 0 : it->second;
}

void note_shared_array(void* p, size_t bytes);
#if defined(IGC_EMU_SANITIZE)
inline void shared_var_added(SharedVar& v);
#endif

inline void shared_declared(void* p, size_t bytes, const char* name = "?") {
    note_shared_array(p, bytes);
    for (SharedVar& v : shared_vars) {
        if (v.p == p) {
            if (v.epoch != sched.block_epoch) { memset(p, 0xFF, bytes); v.epoch = sched.block_epoch; }
            return;
        }
    }
    memset(p, 0xFF, bytes);
    shared_vars.push_back({p, bytes, name, sched.block_epoch, nullptr});
#if defined(IGC_EMU_SANITIZE)
    shared_var_added(shared_vars.back());
#endif
}

// A static shared array that a __device__ function declares counts from the first time a block
// passes it: over the launch's limit, the launch stops as a GPU would have refused it.
inline void note_shared_array(void* p, size_t bytes) {
    if (std::find(sched.arrays_seen.begin(), sched.arrays_seen.end(), p) != sched.arrays_seen.end()) return;
    sched.arrays_seen.push_back(p);
    sched.static_seen += bytes;
    size_t& known = static_shared_registry()[sched.kernel];
    if (sched.static_seen > known) known = sched.static_seen;
    if (sched.static_seen + sched.dynamic_shared > sched.shared_limit)
        fault("static shared memory " + std::to_string(sched.static_seen) + " bytes (counted when a "
              "__device__ function declared its arrays) + dynamic " + std::to_string(sched.dynamic_shared) +
              " bytes is over the limit of " + std::to_string(sched.shared_limit) +
              " bytes: a GPU refuses this launch (CUDA_ERROR_INVALID_VALUE)");
}

extern "C" char __start_igc_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_igc_emu_shared[] __attribute__((weak, visibility("hidden")));

// Dynamic shared memory (`extern __shared__ unsigned char smem_raw[];`): the loader defines each
// declared name as an alias of this one storage (on a GPU every name is the same memory), as
// large as sm_90's opt-in maximum; the first shared_mem bytes are filled with 0xFF per block.
constexpr size_t kMaxSharedBytes = 232448;     // 227 KB: static + dynamic with the opt-in (sm_90)
}  // namespace igc_emu
extern "C" { alignas(16) unsigned char igc_emu_dynamic_storage[igc_emu::kMaxSharedBytes]; }
namespace igc_emu {
inline void fill_dynamic_shared(size_t bytes) { memset(igc_emu_dynamic_storage, 0xFF, bytes); }

// ---- launch ----------------------------------------------------------------------------------
struct LaunchError : std::runtime_error { using std::runtime_error::runtime_error; };

inline std::string site(const Fiber& f) {
    return std::string(f.file) + ":" + std::to_string(f.line);
}

#if defined(IGC_EMU_SANITIZE)
inline void sanitize_phase();
inline void sanitize_block();
#endif

inline void run_block() {
    const size_t n = sched.fibers.size();
    for (size_t i = 0; i < n; ++i)
        fiber_start(sched.fibers[i], sched.stacks + i * sched.stack_bytes, sched.stack_bytes);
#if defined(IGC_EMU_SANITIZE)
    sanitize_block();
#endif
    for (;;) {
        // One phase: every live fiber runs until it exits or reaches a barrier.
        for (Fiber& f : sched.fibers) {
            if (f.state != kDone) fiber_resume(f);
            if (!sched.fault.empty()) throw LaunchError(sched.fault);
        }
#if defined(IGC_EMU_SANITIZE)
        sanitize_phase();  // every thread passed the barrier: a new interval for the race detector
#endif
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

#if defined(IGC_EMU_SANITIZE)
struct SanitizedArgs {
    std::vector<void*> values;   // what args[] points at during the launch
    std::vector<void*> holders;  // the arena addresses of the array arguments
    struct Group { uintptr_t host_lo, host_hi; char* copy; };
    std::vector<Group> groups;
    char* arena = nullptr;
    size_t arena_bytes = 0;
};
inline void sanitize_begin(SanitizedArgs& sa, void** args, const char* const* types,
                           const unsigned long long* extents, size_t nargs);
inline void sanitize_end(SanitizedArgs& sa);
#endif

// Runs kernel<<<grid, block, shared_mem>>>(args...). args[i] points at the value of parameter i
// (a pointer value for array parameters), extents[i] is the byte size of an array argument (0 for
// scalars), shared_limit the static + dynamic shared bytes the launch may use (the loader checked
// the launch against it and the other limits already). Returns 0, or 1 with a message in err.
template <typename... A>
int launch(void (*kernel)(A...), const unsigned* grid, const unsigned* block, size_t shared_mem,
           size_t shared_limit, void** args, const unsigned long long* extents, char* err, size_t errlen) {
    std::lock_guard<std::mutex> lock(launch_mutex);
    try {
        const size_t nthreads = size_t(block[0]) * block[1] * block[2];
        if (nthreads == 0 || nthreads > 1024 || shared_mem > kMaxSharedBytes)  // the loader checks first
            throw LaunchError("invalid launch");
        if (sched.nstacks < nthreads) {
            if (sched.stacks) munmap(sched.stacks, sched.nstacks * sched.stack_bytes);
            void* p = mmap(nullptr, nthreads * sched.stack_bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) { sched.stacks = nullptr; sched.nstacks = 0; throw LaunchError("mmap of fiber stacks failed"); }
            sched.stacks = static_cast<char*>(p);
            sched.nstacks = nthreads;
            // a guard page at the bottom of each stack: a thread that overflows its stack stops
            // the process with SIGSEGV here instead of silently overwriting the next thread's
            // stack or a library mapped below (-fstack-clash-protection probes large frames
            // page by page, so no frame steps over a guard)
            for (size_t i = 0; i < nthreads; ++i)
                if (mprotect(sched.stacks + i * sched.stack_bytes, kStackGuardBytes, PROT_NONE) != 0)
                    throw LaunchError("mprotect of a fiber stack's guard page failed");
        }
        sched.fibers.assign(nthreads, Fiber{});
        size_t i = 0;
        for (unsigned z = 0; z < block[2]; ++z)
            for (unsigned y = 0; y < block[1]; ++y)
                for (unsigned x = 0; x < block[0]; ++x) sched.fibers[i++].tid = {x, y, z};
        sched.fault.clear();
        sched.kernel = reinterpret_cast<const void*>(kernel);
        sched.dynamic_shared = shared_mem;
        sched.shared_limit = shared_limit;
        sched.static_seen = 0;
        sched.arrays_seen.clear();
#if defined(IGC_EMU_SANITIZE)
        static const char* const types[] = {std::is_pointer_v<A> ? "p" : "s"..., nullptr};
        SanitizedArgs sa;
        sanitize_begin(sa, args, types, extents, sizeof...(A));
        args = sa.values.data();
        struct End { SanitizedArgs& sa; ~End() { sanitize_end(sa); } } end{sa};  // copy back, also on error
#endif
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
        sched.current = nullptr;
        return 0;
    } catch (const std::exception& e) {
        sched.current = nullptr;
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

// ---- sanitizer (built with -DIGC_EMU_SANITIZE -fsanitize=thread,bounds) ----------------------
// g++'s ThreadSanitizer instrumentation calls __tsan_readN/__tsan_writeN(address) before every
// memory access of the kernel; this header defines those functions (libtsan is never linked), so
// each access is checked here:
//   - global memory: the launch copies each array argument into an arena of its own, far from
//     the others; an access inside the arena but outside every argument is out of bounds;
//   - shared memory: an access past the launch's shared_mem bytes of dynamic shared memory is out
//     of bounds; -fsanitize=bounds checks the indices into fixed-size (__shared__ and local) arrays;
//   - every byte of shared memory has a shadow: the interval (between two barriers) of its last
//     access, the thread that wrote it in that interval, the thread(s) that read it, and the
//     interval of its last write. A read of a byte no thread of the block has written, and two
//     threads touching a byte in one interval with at least one write (a race: racecheck's
//     read-after-write, write-after-read and write-after-write hazards) stop the launch.
// Atomics (atomicAdd, atomicMax) are exempt, as on a GPU.
#if defined(IGC_EMU_SANITIZE)
#define IGC_EMU_NOSAN __attribute__((no_sanitize_thread))
#define IGC_EMU_HOOK_FN extern "C" __attribute__((no_sanitize_thread, visibility("hidden")))
namespace igc_emu {

struct ArgExtent { uintptr_t lo, hi; size_t arg, bytes; };
struct Shadow { unsigned long long epoch, write_epoch; int writer, reader, reader2; };  // two distinct readers
struct Sanitizer {
    bool active = false;
    // check_access is running: the std:: code it calls (vector iterators, strings) is itself
    // instrumented and calls back into it; without this flag each such call checked its own stack
    // accesses, recursing until the fiber's stack overflowed into its neighbour's memory.
    bool checking = false;
    uintptr_t arena_lo = 0, arena_hi = 0;
    std::vector<ArgExtent> extents;
    uintptr_t static_lo = 0, static_hi = 0, dyn_lo = 0, dyn_used = 0, dyn_cap = 0;
    std::vector<Shadow> shadow_static, shadow_dyn;
    uintptr_t vars_lo = UINTPTR_MAX, vars_hi = 0;  // function-scope __shared__ arrays (shared_vars)
    unsigned long long epoch = 1, block_first = 1;
};
inline Sanitizer san;

// A function-scope __shared__ array (a static of a template: not in the igc_emu_shared section)
IGC_EMU_NOSAN inline void shared_var_added(SharedVar& v) {
    v.shadow = new Shadow[v.bytes]();  // lives as long as the array: the library
    san.vars_lo = std::min(san.vars_lo, uintptr_t(v.p));
    san.vars_hi = std::max(san.vars_hi, uintptr_t(v.p) + v.bytes);
}
constexpr size_t kArenaGap = size_t(1) << 20;  // between arrays: indices this far off are caught

IGC_EMU_NOSAN inline void sanitize_block() { san.block_first = ++san.epoch; }
IGC_EMU_NOSAN inline void sanitize_phase() { ++san.epoch; }

IGC_EMU_NOSAN inline void sanitize_begin(SanitizedArgs& sa, void** args, const char* const* types,
                                         const unsigned long long* extents, size_t nargs) {
    sa.values.assign(args, args + nargs);
    sa.holders.assign(nargs, nullptr);
    struct Arg { uintptr_t lo, hi; size_t i; };
    std::vector<Arg> arrays;
    for (size_t i = 0; i < nargs; ++i) {
        if (types[i][0] != 'p') continue;
        const uintptr_t p = reinterpret_cast<uintptr_t>(*static_cast<void**>(args[i]));
        if (p) arrays.push_back({p, p + extents[i], i});
    }
    std::sort(arrays.begin(), arrays.end(), [](const Arg& a, const Arg& b) { return a.lo < b.lo; });
    // overlapping arguments (the same array twice, views of one buffer) share one copy
    std::vector<size_t> group_of(arrays.size());
    for (size_t k = 0; k < arrays.size(); ++k) {
        if (sa.groups.empty() || arrays[k].lo >= sa.groups.back().host_hi)
            sa.groups.push_back({arrays[k].lo, arrays[k].hi, nullptr});
        else
            sa.groups.back().host_hi = std::max(sa.groups.back().host_hi, arrays[k].hi);
        group_of[k] = sa.groups.size() - 1;
    }
    size_t total = kArenaGap;
    for (auto& g : sa.groups) total += ((g.host_hi - g.host_lo + 4095) & ~size_t(4095)) + kArenaGap;
    void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw LaunchError("sanitizer: mmap of the argument arena failed");
    sa.arena = static_cast<char*>(m);
    sa.arena_bytes = total;
    char* at = sa.arena + kArenaGap;
    for (auto& g : sa.groups) {
        g.copy = at;
        memcpy(at, reinterpret_cast<void*>(g.host_lo), g.host_hi - g.host_lo);
        at += ((g.host_hi - g.host_lo + 4095) & ~size_t(4095)) + kArenaGap;
    }
    san.extents.clear();
    for (size_t k = 0; k < arrays.size(); ++k) {
        const auto& g = sa.groups[group_of[k]];
        char* p = g.copy + (arrays[k].lo - g.host_lo);
        sa.holders[arrays[k].i] = p;
        sa.values[arrays[k].i] = &sa.holders[arrays[k].i];
        san.extents.push_back({uintptr_t(p), uintptr_t(p) + (arrays[k].hi - arrays[k].lo), arrays[k].i,
                               size_t(arrays[k].hi - arrays[k].lo)});
    }
    san.arena_lo = uintptr_t(sa.arena);
    san.arena_hi = uintptr_t(sa.arena) + total;
    san.static_lo = uintptr_t(__start_igc_emu_shared);
    san.static_hi = uintptr_t(__stop_igc_emu_shared);
    san.dyn_lo = uintptr_t(igc_emu_dynamic_storage);
    san.dyn_used = san.dyn_lo + sched.dynamic_shared;
    san.dyn_cap = san.dyn_lo + kMaxSharedBytes;
    if (san.shadow_static.size() < san.static_hi - san.static_lo) san.shadow_static.resize(san.static_hi - san.static_lo);
    if (san.shadow_dyn.size() < kMaxSharedBytes) san.shadow_dyn.resize(kMaxSharedBytes);
    san.checking = false;
    san.active = true;
}

IGC_EMU_NOSAN inline void sanitize_end(SanitizedArgs& sa) {
    san.active = false;
    san.checking = false;  // a fault() left check_access without returning
    for (auto& g : sa.groups) memcpy(reinterpret_cast<void*>(g.host_lo), g.copy, g.host_hi - g.host_lo);
    if (sa.arena) munmap(sa.arena, sa.arena_bytes);
    sa.arena = nullptr;
}

// " at [pc <library>+0x...]": the loader turns it into file:line with addr2line
IGC_EMU_NOSAN inline std::string where(void* pc) {
    Dl_info info;
    char buf[64] = "";
    if (pc && dladdr(pc, &info) && info.dli_fbase)
        snprintf(buf, sizeof buf, " [pc +0x%lx]", (unsigned long)((char*)pc - (char*)info.dli_fbase - 1));
    return buf;
}

// what(): the byte's description, built only when a fault is reported (building a std::string on
// every shared access made a sanitized launch ~10x slower: the string code is itself instrumented)
template <typename What>
IGC_EMU_NOSAN inline void check_shared(Shadow* shadow, uintptr_t a, size_t n, bool write, void* pc,
                                       const What& what) {
    const int t = int(sched.current - sched.fibers.data());
    for (size_t k = 0; k < n; ++k) {
        Shadow& s = shadow[k];
        if (s.epoch != san.epoch) { s.epoch = san.epoch; s.writer = -1; s.reader = -1; s.reader2 = -1; }
        if (!write) {
            if (s.write_epoch < san.block_first)
                fault("uninitialised shared memory: reads " + what() + ", which no thread of this block "
                      "has written (it holds the 0xFF poison; or a race: a thread that runs later in this interval "
                      "writes it with no __syncthreads() between)" + where(pc));
            if (s.writer >= 0 && s.writer != t)
                fault("shared-memory race (read after write): reads " + what() + ", written by thread " +
                      tid_str(sched.fibers[s.writer].tid) + " with no __syncthreads() between" + where(pc));
            if (s.reader == -1) s.reader = t;
            else if (s.reader != t && s.reader2 == -1) s.reader2 = t;
        } else {
            if (s.writer >= 0 && s.writer != t)
                fault("shared-memory race (write after write): writes " + what() + ", also written by thread " +
                      tid_str(sched.fibers[s.writer].tid) + " with no __syncthreads() between" + where(pc));
            const int r = s.reader >= 0 && s.reader != t ? s.reader : s.reader2 >= 0 && s.reader2 != t ? s.reader2 : -1;
            if (r >= 0)
                fault("shared-memory race (write after read): writes " + what() + ", read by thread " +
                      tid_str(sched.fibers[r].tid) + " with no __syncthreads() between" + where(pc));
            s.writer = t;
            s.write_epoch = san.epoch;
        }
    }
}

IGC_EMU_NOSAN inline void check_global(uintptr_t a, size_t n, const char* rw, void* pc) {
    const ArgExtent* near = nullptr;
    long long dist = 0;
    for (const ArgExtent& e : san.extents) {
        if (a >= e.lo && a + n <= e.hi) return;
        const long long d = a < e.lo ? (long long)(e.lo - a) : (long long)(a + n - e.hi);
        if (!near || d < dist) { near = &e; dist = d; }
    }
    std::string m = std::string("out-of-bounds global ") + rw + " of " + std::to_string(n) + " bytes";
    if (near) {
        const long long off = (long long)a - (long long)near->lo;
        m += " at byte offset " + std::to_string(off) + " of argument " + std::to_string(near->arg) +
             " (an array of " + std::to_string(near->bytes) + " bytes): " +
             (off < 0 ? std::to_string(-off) + " bytes before its start" : std::string("past its end"));
    }
    fault(m + where(pc));
}

IGC_EMU_NOSAN inline void check_access_now(uintptr_t a, size_t n, bool write, void* pc, bool atomic);

IGC_EMU_NOSAN inline void check_access(uintptr_t a, size_t n, bool write, void* pc, bool atomic = false) {
    if (!san.active || san.checking || !sched.current || sched.current->state != kRunning) return;
    san.checking = true;
    check_access_now(a, n, write, pc, atomic);
    san.checking = false;
}

IGC_EMU_NOSAN inline void check_access_now(uintptr_t a, size_t n, bool write, void* pc, bool atomic) {
    const char* rw = write ? "write" : "read";
    if (a >= san.arena_lo && a < san.arena_hi) {  // most accesses: global memory
        check_global(a, n, rw, pc);
    } else if (a >= san.dyn_lo && a < san.dyn_cap) {
        if (a + n > san.dyn_used)
            fault(std::string("out-of-bounds shared ") + rw + " of " + std::to_string(n) + " bytes at byte " +
                  std::to_string(a - san.dyn_lo) + " of dynamic shared memory, which has shared_mem=" +
                  std::to_string(san.dyn_used - san.dyn_lo) + " bytes" + where(pc));
        if (!atomic) check_shared(&san.shadow_dyn[a - san.dyn_lo], a, n, write, pc,
                     [&] { return "dynamic shared memory byte " + std::to_string(a - san.dyn_lo); });
    } else if (a >= san.vars_lo && a < san.vars_hi) {
        for (SharedVar& v : shared_vars) {
            const uintptr_t lo = uintptr_t(v.p);
            if (a < lo || a >= lo + v.bytes) continue;
            if (a + n > lo + v.bytes)
                fault(std::string("out-of-bounds shared ") + rw + " of " + std::to_string(n) + " bytes at byte " +
                      std::to_string(a - lo) + " of __shared__ " + v.name + " (" + std::to_string(v.bytes) +
                      " bytes)" + where(pc));
            if (!atomic)
                check_shared(static_cast<Shadow*>(v.shadow) + (a - lo), a, n, write, pc,
                             [&] { return "__shared__ " + std::string(v.name) + " byte " + std::to_string(a - lo); });
            return;
        }
    } else if (a >= san.static_lo && a < san.static_hi) {
        if (atomic) return;
        check_shared(&san.shadow_static[a - san.static_lo], a, n, write, pc,
                     [&] { return "file-scope __shared__ memory byte " + std::to_string(a - san.static_lo); });
    }
}

}  // namespace igc_emu

#define IGC_EMU_HOOK(n) \
    IGC_EMU_HOOK_FN void __tsan_read##n(void* p) { igc_emu::check_access(uintptr_t(p), n, false, __builtin_return_address(0)); } \
    IGC_EMU_HOOK_FN void __tsan_write##n(void* p) { igc_emu::check_access(uintptr_t(p), n, true, __builtin_return_address(0)); } \
    IGC_EMU_HOOK_FN void __tsan_unaligned_read##n(void* p) { igc_emu::check_access(uintptr_t(p), n, false, __builtin_return_address(0)); } \
    IGC_EMU_HOOK_FN void __tsan_unaligned_write##n(void* p) { igc_emu::check_access(uintptr_t(p), n, true, __builtin_return_address(0)); } \
    IGC_EMU_HOOK_FN void __tsan_volatile_read##n(void* p) { igc_emu::check_access(uintptr_t(p), n, false, __builtin_return_address(0)); } \
    IGC_EMU_HOOK_FN void __tsan_volatile_write##n(void* p) { igc_emu::check_access(uintptr_t(p), n, true, __builtin_return_address(0)); }
IGC_EMU_HOOK(1) IGC_EMU_HOOK(2) IGC_EMU_HOOK(4) IGC_EMU_HOOK(8) IGC_EMU_HOOK(16)
#undef IGC_EMU_HOOK
IGC_EMU_HOOK_FN void __tsan_read_range(void* p, size_t n) { igc_emu::check_access(uintptr_t(p), n, false, __builtin_return_address(0)); }
IGC_EMU_HOOK_FN void __tsan_write_range(void* p, size_t n) { igc_emu::check_access(uintptr_t(p), n, true, __builtin_return_address(0)); }
IGC_EMU_HOOK_FN void __tsan_init() {}
IGC_EMU_HOOK_FN void __tsan_func_entry(void*) {}
IGC_EMU_HOOK_FN void __tsan_func_exit() {}
IGC_EMU_HOOK_FN void __tsan_vptr_update(void**, void*) {}
IGC_EMU_HOOK_FN void __tsan_vptr_read(void**) {}
IGC_EMU_HOOK_FN void __tsan_atomic_thread_fence(int) {}
IGC_EMU_HOOK_FN void __tsan_atomic_signal_fence(int) {}

// -fsanitize=bounds: an index out of a fixed-size array's bounds (GCC's UBSan data layout)
struct IgcUbsanType { unsigned short kind, info; char name[1]; };
struct IgcUbsanOutOfBounds { const char* file; unsigned line, column; IgcUbsanType* array_type; IgcUbsanType* index_type; };
extern "C" IGC_EMU_NOSAN void __ubsan_handle_out_of_bounds(void* data, void* index) {
    const IgcUbsanOutOfBounds* d = static_cast<const IgcUbsanOutOfBounds*>(data);
    const long long i = (d->index_type->info & 1) ? (long long)(intptr_t)index : (long long)(uintptr_t)index;
    std::string m = "out-of-bounds index " + std::to_string(i) + " into an array of type " +
                    std::string(d->array_type->name) + " at " + d->file + ":" + std::to_string(d->line);
    if (igc_emu::sched.current && igc_emu::sched.current->state == igc_emu::kRunning) igc_emu::fault(m);
    fprintf(stderr, "igc_emu: %s\n", m.c_str());
    abort();
}
extern "C" IGC_EMU_NOSAN void __ubsan_handle_out_of_bounds_abort(void* data, void* index) {
    __ubsan_handle_out_of_bounds(data, index);
}
#endif  // IGC_EMU_SANITIZE
