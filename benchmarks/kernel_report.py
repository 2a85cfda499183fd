"""What the primary conv kernels would do on a GPU, measured without one.

    python benchmarks/kernel_report.py              # resources of every kernel and version
    python benchmarks/kernel_report.py --roofline   # and the roofline model of the default versions
    python benchmarks/kernel_report.py --roofline --all-versions --device h200

Needs libnvrtc (pip install nvidia-cuda-nvrtc-cu12), ptxas (CUDA toolkit) and cuobjdump +
nvdisasm (CUDA toolkit, or pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm).

Resources (per kernel instantiation, from ptxas -v and cuobjdump -sass of sm_90 code): registers,
static shared memory, the dynamic shared memory of its launch on CIFAR stage 1 (batch 64), the
occupancy that gives on sm_90 (64K registers, 2048 threads, 228 KiB shared memory and 32 blocks per
SM; registers allocated per warp in units of 256, 1 KiB of shared memory reserved per block), and
the instructions per multiply-add of its hot inner loop (the innermost loop with the most
FFMA/DFMA: its instruction count / its FMA count).

The roofline model (``roofline``, importable: ``from kernel_report import roofline``) for one op,
version and conv shape:
  - FLOPs = 2 * N * C_out * Ho * Wo * (C_in/G) * KH * KW (the same for the three ops);
  - bytes = compulsory DRAM traffic: the two inputs and the output once (plus the partial sums,
    written and read, of v3's two-pass weight gradient); re-reads are assumed to hit L2;
  - roofline time = max(FLOPs / peak FLOP/s, bytes / DRAM bandwidth) on the GPU: the one CuPy
    sees when it is importable with a device, else ``--device`` (h100: H100 SXM, 132 SMs, 1.98 GHz,
    128 FP32 lanes per SM = 67 TFLOP/s, 3.3 TB/s; h200: the same SMs, 4.3 TB/s measured for
    copies of its 4.8 nominal), 228 KiB of shared memory per SM;
  - modelled time = max(sum over the op's launches of max(issue time, shared-memory time),
    bytes / bandwidth), where issue time = instructions / (SMs used * 128 lanes * clock * issue
    efficiency) and shared-memory time = wavefronts / (SMs used * clock) (one 128-byte wavefront
    per clock and SM: a warp's 32-bit load of 32 distinct banks is one, an n-way bank conflict n;
    the staged tiles' reads take the conflicts of the plan's pitch (kernels/launch.py conflict_ways),
    the other shared loads of the hot loop one wavefront per word), and
      instructions = FMA slots * (instructions per FMA of the inner loop)
                   + staged shared-memory elements * (instructions per element of the staging loops)
                   + threads * (instructions outside every loop),
    the FMA slots count the taps a kernel's loop runs, padded or not (e.g. v3's partial tiles),
    SMs used = min(SMs, blocks), and issue efficiency = min(1, occupancy / 0.25): a quarter of
    the SM's warps (4 per scheduler) is taken to hide the latency of shared memory and L1.
  It ignores DRAM latency, bank conflicts, L2 bandwidth and the tail of the last wave, and it
  charges the hot loop's rate: where the compiler unrolled a runtime-bound loop (v1's taps, v1/v2's
  channel loops) and the trip count is below the unroll factor, the remainder loop runs instead,
  at the "worst" rate, so v1 and v2 are modelled faster than they are.
A kernel PASSes when its modelled time is within 3x of the roofline; DEFAULT marks the version
the package runs (igc_np.kernels.versions). The table shows the defaults; ``--all-versions`` adds
the other rungs of each ladder (kept for teaching and comparison: their FAIL is expected, not an
alarm). A plan a GPU would refuse (threads over the kernel's __launch_bounds__, grid or shared
memory over the limits: kernels/launch.py) is FAIL (unlaunchable) whatever its model says.
"""
import argparse
import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from igc_np.kernels import conv, launch, sass, versions  # noqa: E402
from igc_np.kernels.launch import LaunchPlanError  # noqa: E402
from igc_np.kernels.loader import c_type, instantiations, name_expression  # noqa: E402


def gpu_figures(name, sms, clock, bandwidth, lanes=128):
    return dict(name=name, sms=sms, clock=clock, lanes=lanes, bandwidth=bandwidth, flops=2 * sms * lanes * clock)


H100 = gpu_figures("H100 SXM", 132, 1.98e9, 3.3e12)
H200 = gpu_figures("H200", 132, 1.98e9, 4.3e12)   # 4.8 TB/s nominal, ~4.3 measured for copies
DEVICES = {"h100": H100, "h200": H200}
SM90 = dict(regs=65536, threads=2048, smem=228 * 1024, blocks=32, reserved_smem=1024)
CONV_OPS = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")
TARGET = 3.0  # a default kernel must be modelled within TARGET x its roofline

# IGC primary convs (3x3, stride 1, padding 1, L groups, C = L*M): (name, N, C, H=W, L). The one
# list of IGC layers: benchmarks/bench_gpu.py times its kernels on these (secondary S = M = C/L).
SHAPES = [
    ("CIFAR IGC-L24M2 stage 1", 64, 48, 32, 24),
    ("CIFAR IGC-L24M4 stage 2", 64, 96, 16, 24),
    ("CIFAR IGC-L24M8 stage 3", 64, 192, 8, 24),
    ("ImageNet IGC-L4M32 stage 1", 256, 128, 56, 4),
    ("ImageNet IGC-L100M2 stage 1", 256, 200, 56, 100),
]


# cudaDeviceAttr values (stable across CUDA versions; CUDA 13 dropped clockRate and
# memoryClockRate from cudaDeviceProp, so they are read as attributes)
_ATTR = dict(sms=16, clock_khz=13, memory_clock_khz=36, bus_bits=37)


def cupy_device():
    """The figures of CuPy's current GPU (device attributes), or None without CuPy or a GPU.
    Bandwidth: 90% of the nominal 2 * memory clock * bus width (copies reach ~4.3 of the H200's 4.8)."""
    try:
        import cupy
        dev = cupy.cuda.Device().id
        get = cupy.cuda.runtime.deviceGetAttribute
        a = {k: int(get(v, dev)) for k, v in _ATTR.items()}
        name = cupy.cuda.runtime.getDeviceProperties(dev)["name"]
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: use --device
        return None
    name = name.decode() if isinstance(name, bytes) else str(name)
    nominal = 2 * a["memory_clock_khz"] * 1e3 * a["bus_bits"] / 8
    return gpu_figures(name, a["sms"], a["clock_khz"] * 1e3, 0.9 * nominal)


def dims_of(N, C_in, H, W, C_out, k=3, stride=1, padding=1, groups=1):
    """The 14-int argument tail of the conv kernels."""
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    return (N, C_in, H, W, C_out, k, k, stride, stride, padding, padding, groups, Ho, Wo)


def occupancy(registers, threads, shared):
    """Fraction of sm_90's 2048 thread slots a kernel fills, and what limits it."""
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    limits = {"threads": SM90["threads"] // (warps * 32), "blocks": SM90["blocks"],
              "registers": SM90["regs"] // (regs_per_warp * warps)}
    if shared:
        limits["shared memory"] = SM90["smem"] // (shared + SM90["reserved_smem"])
    blocks = min(limits.values())
    return blocks * warps * 32 / SM90["threads"], min(limits, key=limits.get)


@functools.lru_cache(maxsize=None)
def kernel_info(filename, kernel, targs, dtype=np.float32):
    """(Resources, hot inner loop, [instructions per staged element of each staging loop, in
    address (= source) order], instructions outside loops)."""
    expr = name_expression(kernel, c_type(dtype), targs)
    res = sass.resources(filename, dtype)[expr]
    _, _, lowered = sass.cubin(filename, np.dtype(dtype), "sm_90")
    code = sass.sass(filename, dtype)[lowered[expr]]
    spans = sass.loops(code)
    inside = set()
    stage = []
    for start, end in spans:
        body = [t for off, t in code if start <= off <= end]
        inside.update(off for off, _ in code if start <= off <= end)
        innermost = not any((s, e) != (start, end) and start <= s and e <= end for s, e in spans)
        stores = sum(1 for t in body if t.startswith("STS") or " STS" in t)
        loads = any("LDG" in t for t in body)  # global to shared: staging (not setting up offsets)
        if innermost and stores and loads and not any(sass._FMA.search(t) for t in body):
            stage.append(len(body) / stores)  # a staging loop: one element per shared-memory store
    straight = sum(1 for off, _ in code if off not in inside)
    return res, sass.inner_loop(filename, dtype, expr), tuple(stage), straight


def _fma_slots_and_staged(op, version, L, dims):
    """(FMA slots, [shared-memory elements staged by each staging loop, in source order]) of
    launch L of `op` `version` (see the module doc)."""
    N, C_in, H, W, C_out, KH, KW, SH, SW, PH, PW, G, Ho, Wo = dims
    Cg_in, Cg_out = C_in // G, C_out // G
    khw = KH * KW
    if L.kind == "reduce":
        return L.extra[0] * L.extra[1], ()  # adds, not FMAs: counted with the loop's instructions
    if version in (1, 2):
        if op == "conv2d_forward":
            return N * C_out * Ho * Wo * Cg_in * khw, ()
        if op == "conv2d_backward_data":
            return N * C_in * H * W * Cg_out * khw // (SH * SW), ()
        return C_out * Cg_in * khw * N * Ho * Wo, ()
    if op in ("conv2d_forward", "conv2d_backward_data"):
        tx, ty, tz = L.block
        depth = Cg_in if op == "conv2d_forward" else Cg_out   # the channels each output sums over
        slots = L.blocks * L.threads * conv.CQ * conv.RW * depth * khw
        if op == "conv2d_forward":
            PRH, PRW = (ty - 1) * SH + KH, (tx * conv.RW - 1) * SW + KW
        else:
            PRH, PRW = (ty + KH - 2) // SH + 2, (tx * conv.RW + KW - 2) // SW + 2
        # every chunk of channels: its input patch, then its weights
        return slots, (L.blocks * depth * PRH * PRW, L.blocks * depth * tz * conv.CQ * khw)
    GB, COB, CIB, NB = L.extra
    KWB = KW if conv._targs(dims) != (0, 0, 0, 0) and KW <= 3 else 1
    n_cq = -(-COB // conv.CQ)
    n_slots = GB * n_cq * CIB * KH * (KW // KWB)
    slots = L.blocks * NB * n_slots * conv.TH * conv.TW * conv.CQ * KWB
    PRH, PRW = (conv.TH - 1) * SH + KH, (conv.TW - 1) * SW + KW
    # every image: the gy tile, then the x tile
    return slots, (L.blocks * NB * GB * n_cq * conv.CQ * conv.TH * conv.TW, L.blocks * NB * GB * CIB * PRH * PRW)


def roofline(op, version, dims, dtype=np.float32, gpu=H100):
    """The model of the module doc for `op` ("conv2d_forward", ...) `version` on a conv with the
    kernels' 14-int `dims` (see dims_of): dict of flops, bytes, roofline_s, model_s, ratio, and
    per-launch details."""
    dtype = np.dtype(dtype)
    N, C_in, H, W, C_out, KH, KW, SH, SW, PH, PW, G, Ho, Wo = dims
    flops = 2 * N * C_out * Ho * Wo * (C_in // G) * KH * KW
    x, y, w = N * C_in * H * W, N * C_out * Ho * Wo, C_out * (C_in // G) * KH * KW
    compulsory = (x + y + w) * dtype.itemsize
    try:
        launches = conv.plan(op, version, dims, dtype.itemsize)
    except LaunchPlanError as e:  # a GPU refuses it: no time to model
        return dict(op=op, version=version, flops=flops, bytes=compulsory, roofline_s=float("nan"),
                    memory_s=float("nan"), model_s=float("inf"), ratio=float("inf"), launches=[],
                    unlaunchable=str(e))
    scratch = sum(2 * int(np.prod(L.scratch)) for L in launches if L.scratch) * dtype.itemsize
    model, details = 0.0, []
    for L in launches:
        res, loop, stage_instr, straight = kernel_info(L.file, L.kernel, L.targs, dtype.type)
        slots, staged = _fma_slots_and_staged(op, version, L, dims)
        if L.kind == "reduce":  # adds, not FMAs
            per_slot = _reduce_loop_instructions(L.file, L.kernel, dtype.type)
        else:
            per_slot = loop.per_fma
        if len(staged) == len(stage_instr):
            staging = sum(n * c for n, c in zip(staged, stage_instr))
        else:  # the compiler merged or split the staging loops: charge the costliest rate
            staging = sum(staged) * max(stage_instr, default=0)
        instructions = slots * per_slot + staging + L.blocks * L.threads * straight
        occ, limit = occupancy(res.registers, L.threads, L.shared + res.shared)
        efficiency = min(1.0, occ / 0.25)
        sms = min(gpu["sms"], L.blocks)
        issue_s = instructions / (sms * gpu["lanes"] * gpu["clock"] * efficiency)
        ways = 1
        wavefronts = 0.0
        if loop is not None and L.kind != "reduce" and loop.fmas:
            ways, tile_words = shared_conflicts(op, version, L, dims, dtype.itemsize, loop)
            per_iteration = tile_words * ways + (loop.shared_words - tile_words)
            wavefronts = slots / (32 * loop.fmas) * per_iteration
        smem_s = wavefronts / (sms * gpu["clock"])
        details.append(dict(kernel=name_expression(L.kernel, c_type(dtype), L.targs), instructions=instructions,
                            occupancy=occ, limit=limit, issue_s=issue_s, smem_s=smem_s, conflict_ways=ways,
                            registers=res.registers, shared=L.shared + res.shared, blocks=L.blocks,
                            threads=L.threads))
        model += max(issue_s, smem_s)
    bytes_moved = compulsory + scratch
    memory_s = bytes_moved / gpu["bandwidth"]
    model = max(model, memory_s)
    roof = max(flops / gpu["flops"], compulsory / gpu["bandwidth"])
    return dict(op=op, version=version, flops=flops, bytes=bytes_moved, roofline_s=roof, memory_s=memory_s,
                model_s=model, ratio=model / roof, launches=details)


def shared_conflicts(op, version, L, dims, itemsize, loop):
    """(bank-conflict ways of the staged tile's reads, 32-bit words of the hot loop's shared loads
    that read that tile) for launch L; (1, 0) for the kernels without a modelled tile."""
    N, C_in, H, W, C_out, KH, KW, SH, SW, PH, PW, G, Ho, Wo = dims
    if version != 3 or L.kind == "reduce":
        return 1, 0
    words = 2 if itemsize == 8 else 1
    if op in ("conv2d_forward", "conv2d_backward_data"):
        steps = (SH, SW) if op == "conv2d_forward" else (1, 1)
        ways = launch.conflict_ways(conv.tile_read_addresses(L.block, L.extra[1], *steps), itemsize)
        # of RW + CQ loads per tap, RW read the staged input (the CQ weights are broadcasts)
        return ways, loop.shared_words * conv.RW // (conv.RW + conv.CQ) // words * words
    GB, COB, CIB, NB = L.extra
    KWB = KW if conv._targs(dims) != (0, 0, 0, 0) and KW <= 3 else 1
    addresses = conv.weight_gy_addresses(GB, COB, CIB, KH, KW // KWB, L.threads, conv.GP)
    ways = launch.conflict_ways(addresses, itemsize)
    # per pixel CQ gy loads and about KWB x loads (see the kernel): the gy share of the words
    return ways, loop.shared_words * conv.CQ // (conv.CQ + KWB)


@functools.lru_cache(maxsize=None)
def _reduce_loop_instructions(filename, kernel, dtype):
    """Instructions per iteration of the add loop of a reduce kernel (its smallest loop)."""
    expr = name_expression(kernel, c_type(dtype))
    _, _, lowered = sass.cubin(filename, np.dtype(dtype), "sm_90")
    code = sass.sass(filename, dtype)[lowered[expr]]
    spans = sass.loops(code)
    if not spans:
        return 8
    # the compiler unrolls the add loop by 4: per iteration = body / number of loads
    best = min(spans, key=lambda se: se[1] - se[0])
    body = [t for off, t in code if best[0] <= off <= best[1]]
    loads = max(1, sum(1 for t in body if "LDG" in t))
    return len(body) / loads


def resource_rows(dtype=np.float32):
    """One row per conv kernel instantiation: (op, version, expr, registers, static smem,
    dynamic smem on CIFAR stage 1, occupancy, limit, instructions per FMA)."""
    dims = dims_of(64, 48, 32, 32, 48, groups=24)
    rows = []
    for op in CONV_OPS:
        for version in sorted(versions.versions(op)):
            launches = conv.plan(op, version, dims, np.dtype(dtype).itemsize)
            for L in launches:
                for targs in instantiations(L.file)[L.kernel]:
                    res, loop, _, _ = kernel_info(L.file, L.kernel, targs, dtype)
                    dyn = L.shared if targs == L.targs else None
                    occ, limit = occupancy(res.registers, L.threads, (dyn or 0) + res.shared)
                    expr = name_expression(L.kernel, c_type(dtype), targs)
                    # the costliest inner loop: a runtime-bound loop's remainder (see sass.inner_loop)
                    worst = max((lp.per_fma for lp in sass.fma_loops(L.file, dtype, expr)), default=None)
                    rows.append((op, version, expr, res.registers, res.shared, dyn, occ, limit,
                                 loop.per_fma if loop else None, worst))
    return rows


def print_resources(dtype):
    print(f"Kernel resources, sm_90, {np.dtype(dtype).name} (dynamic shared memory and occupancy of the "
          "launch on CIFAR IGC-L24M2 stage 1, batch 64; '-' for the shapes it does not run):")
    print(f"{'op':24} {'v':>2} {'kernel':52} {'regs':>4} {'smem':>6} {'dyn':>6} {'occ':>5} {'limit':>13} "
          f"{'instr/FMA':>9} {'worst':>6}")
    for op, v, expr, regs, smem, dyn, occ, limit, per, worst in resource_rows(dtype):
        print(f"{op:24} {v:>2} {expr:52} {regs:>4} {smem:>6} {'-' if dyn is None else dyn:>6} "
              f"{occ:>5.0%} {limit:>13} {'-' if per is None else f'{per:.2f}':>9} "
              f"{'-' if worst is None else f'{worst:.1f}':>6}")
    print("instr/FMA: the hot inner loop (most FMAs); worst: the costliest loop with FMAs, e.g. the remainder "
          "of a loop with a runtime trip count, which is what runs for 3 taps: the model uses instr/FMA and so "
          "flatters v1 and v2 (v3's taps are compile-time, fully unrolled)")


def print_roofline(dtype, gpu=H100, all_versions=False):
    print(f"\nRoofline model, {gpu['name']} ({gpu['sms']} SMs, {gpu['clock'] / 1e9:.2f} GHz, "
          f"{gpu['bandwidth'] / 1e12:.1f} TB/s, {gpu['flops'] / 1e12:.0f} TFLOP/s fp32), {np.dtype(dtype).name}, "
          f"primary 3x3 conv, stride 1, padding 1{'' if all_versions else ', the default versions'}:")
    print(f"{'shape':30} {'op':24} {'v':>2} {'GFLOP':>7} {'MB':>8} {'roof us':>9} {'model us':>10} "
          f"{'smem us':>8} {'bank':>4} {'x roof':>7}  verdict")
    failed = []
    for name, N, C, HW, L in SHAPES:
        dims = dims_of(N, C, HW, HW, C, groups=L)
        for op in CONV_OPS:
            for v in sorted(versions.versions(op)):
                default = v == versions.default(op)
                if not (default or all_versions):
                    continue
                r = roofline(op, v, dims, dtype, gpu)
                verdict = ("FAIL (unlaunchable)" if "unlaunchable" in r else "PASS" if r["ratio"] <= TARGET
                           else "FAIL") + (" (DEFAULT)" if default else "")
                if default and not r["ratio"] <= TARGET:
                    failed.append((name, op))
                smem = sum(d["smem_s"] for d in r["launches"])
                ways = max((d["conflict_ways"] for d in r["launches"]), default=1)
                print(f"{name:30} {op:24} {v:>2} {r['flops'] / 1e9:>7.2f} {r['bytes'] / 1e6:>8.1f} "
                      f"{r['roofline_s'] * 1e6:>9.1f} {r['model_s'] * 1e6:>10.1f} {smem * 1e6:>8.1f} {ways:>4} "
                      f"{r['ratio']:>7.2f}  {verdict}")
                if "unlaunchable" in r:
                    print(f"    {r['unlaunchable']}")
    print(f"\nverdict: PASS = modelled within {TARGET:g}x of the roofline; FAIL = slower than that "
          "(for a non-default version: the ladder's slower rungs, kept for teaching and comparison, not run "
          "unless chosen) or 'unlaunchable' (a plan a GPU refuses); DEFAULT = the version igc_np runs. "
          "smem us: shared-memory time; bank: the worst bank-conflict ways of a staged tile's reads.")
    print(f"Default kernels within {TARGET:g}x of the roofline: "
          + ("all PASS" if not failed else f"FAIL for {failed}"))
    return not failed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--roofline", action="store_true", help="also print the roofline model on the IGC shapes")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="element type of the resources table (the roofline is float32: training's type)")
    p.add_argument("--all-versions", action="store_true",
                   help="model every version of each op, not only the defaults (slower rungs read FAIL)")
    p.add_argument("--device", choices=sorted(DEVICES),
                   help="the GPU to model (default: the one CuPy sees, else h100)")
    args = p.parse_args(argv)
    missing = sass.tools_missing("ptxas", "cuobjdump", "nvdisasm")
    if missing:
        sys.exit(f"kernel_report.py: {missing}")
    dtype = np.dtype(args.dtype).type
    print_resources(dtype)
    ok = True
    if args.roofline:
        gpu = DEVICES[args.device] if args.device else (cupy_device() or H100)
        ok = print_roofline(np.float32, gpu, args.all_versions)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
