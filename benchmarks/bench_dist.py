"""Data-parallel speed: 1 process x 2 threads against 2 MPI ranks x 1 thread, and a scaling model.

    pip install -e ".[dist]"                      # mpi4py + the mpich wheel (its mpiexec)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_dist.py   # --quick: fewer

1. A training step (``distributed.dp_step``: forward, cross-entropy, backward, the rank-ordered
   reduction, Nesterov SGD) of resnet_igc-20 IGC-L24M2 on CIFAR-sized input, global batch 64,
   float32, in three set-ups: one process with 2 threads, one process with 1 thread, and
   ``mpiexec -n 2`` with 1 thread per rank (32 images each). Reported: images/s (global batch
   / median step time) and, for 2 ranks, the time of one all-reduce of the gradient + BatchNorm
   buffer (what every step sends), measured separately in the same processes.
2. A model of the reduction time per step for 2..64 ranks over typical links (nominal bandwidths
   and latencies, stated in the table: assumptions, not measurements): the all-to-all + ordered
   sum + all-gather moves 2 (P-1)/P of the buffer per rank, as a ring all-reduce does; and the
   images/s of P machines like this one that it implies.

The set-ups run one after another, ``--rounds`` times, interleaved, and each figure is the median
over rounds: the machine's load moves absolute speeds, the interleaving keeps the ratios fair.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

BATCH = 64
SETUPS = [("1 process x 2 threads", 1, 2), ("1 process x 1 thread", 1, 1), ("2 ranks x 1 thread", 2, 1)]
# (link, bandwidth per direction in GB/s that a collective achieves, latency per message in us):
# nominal figures for the model, not measured here
LINKS = [("NVLink 4 (8x H100 SXM, one machine)", 150.0, 5.0),
         ("PCIe 4.0 x16 (GPUs without NVLink)", 12.0, 10.0),
         ("InfiniBand HDR 200 Gb/s (machines)", 20.0, 5.0),
         ("Ethernet 25 Gb/s (machines)", 2.5, 30.0),
         ("Ethernet 10 Gb/s (machines)", 1.0, 50.0)]


def worker(steps, repeats):
    """One rank: time `steps` dp_steps and `repeats` all-reduces; rank 0 prints JSON."""
    import igc_np as ig
    from igc_np import distributed
    # IGC_NP_THREADS (set by the parent) is all a set-up needs: ops/parallel.py holds BLAS to one
    # thread when it is 1, and init gives each rank its share of the cores (and of BLAS)
    comm = distributed.init("auto")
    rng = np.random.default_rng(0)
    model = ig.nets.get_network("resnet_igc", 20, 10, primary_partition=24, secondary_partition=2,
                                rng=np.random.default_rng(1))
    opt = ig.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    xb = rng.standard_normal((BATCH, 3, 32, 32), dtype=np.float32)
    yb = rng.integers(0, 10, BATCH)
    times = []
    for i in range(steps + 1):  # the first step warms up allocations and thread pools
        comm.barrier()
        t0 = time.perf_counter()
        distributed.dp_step(model, opt, xb, yb, comm)
        comm.barrier()
        if i:
            times.append(time.perf_counter() - t0)
    n = sum(p.size for p in opt.params) + sum(getattr(m, k).size for _, m, k in model.named_buffers())
    buf = np.ones(n, np.float32)
    reduce_times = []
    for _ in range(repeats):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce(buf)
        reduce_times.append(time.perf_counter() - t0)
    if comm.is_root:
        from threadpoolctl import threadpool_info
        from igc_np.ops import parallel
        blas = sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        print(json.dumps(dict(step_s=statistics.median(times), reduce_s=statistics.median(reduce_times),
                              elements=n, params=sum(p.size for p in opt.params), size=comm.size,
                              threads=parallel.THREADS, blas_threads=blas)))


def run_setup(ranks, threads, steps, repeats):
    env = dict(os.environ, IGC_NP_THREADS=str(threads),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--steps", str(steps),
           "--repeats", str(repeats)]
    if ranks > 1:
        cmd = ["mpiexec", "-n", str(ranks)] + cmd
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"bench_dist: {' '.join(cmd)} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def reduce_model_s(nbytes, P, bandwidth_gbs, latency_us):
    """Seconds for the deterministic all-reduce of `nbytes` over P ranks: all-to-all of P-1
    chunks, then an all-gather (ring: P-1 messages); each moves (P-1)/P of the buffer."""
    if P == 1:
        return 0.0
    return 2 * (P - 1) / P * nbytes / (bandwidth_gbs * 1e9) + 2 * (P - 1) * latency_us * 1e-6


def model_elements():
    """Parameters + BN buffers of resnet_igc-20 L24M2: what every training step all-reduces."""
    import igc_np as ig
    model = ig.nets.get_network("resnet_igc", 20, primary_partition=24, secondary_partition=2, rng=0)
    return (sum(p.size for p in model.parameters())
            + sum(getattr(m, k).size for _, m, k in model.named_buffers()))


def imagenet_elements():
    """Parameters + BN buffers of the released IGC-L4M32 ImageNet model (ResNet-18 layout)."""
    import igc_np as ig
    model = ig.nets.imagenet_model("igc_l4m32")
    return (sum(p.size for p in model.parameters())
            + sum(getattr(m, k).size for _, m, k in model.named_buffers()))


def nccl_rank(elements, repeats, json_path):
    """One rank of ``--nccl`` (started by distributed.spawn): time the rank-ordered all-reduce of
    `elements` float32 on its GPU, check it against the ordered sum, rank 0 writes the JSON."""
    from igc_np import backend, distributed
    comm = distributed.init("nccl", gpus="0,1", threads=False)
    cp = backend.cupy_module()
    bufs = [np.random.default_rng(r).standard_normal(elements).astype(np.float32) for r in range(comm.size)]
    mine = cp.asarray(bufs[comm.rank])
    got = comm.allreduce(mine)  # also the warm-up
    ok = bool(np.array_equal(cp.asnumpy(got), distributed.ordered_sum(bufs)))
    cp.cuda.get_current_stream().synchronize()
    comm.barrier()
    t = time.perf_counter()
    for _ in range(repeats):
        comm.allreduce(mine)
    cp.cuda.get_current_stream().synchronize()
    seconds = (time.perf_counter() - t) / repeats
    ok = not distributed.reduce_flag(comm, not ok)
    if comm.is_root:
        figures = dict(ranks=comm.size, elements=elements, bytes=4 * elements, allreduce_ms=1e3 * seconds,
                       bus_gbs=2 * (comm.size - 1) / comm.size * 4 * elements / seconds / 1e9,
                       equal_to_ordered_sum=ok)
        print(f"NCCL all-reduce, {comm.size} GPUs, {4 * elements / 1e6:.2f} MB float32: {1e3 * seconds:.3f} ms "
              f"({figures['bus_gbs']:.1f} GB/s bus bandwidth), equal to the rank-ordered sum: {ok}")
        if json_path:
            with open(json_path, "w") as f:
                json.dump(figures, f, indent=1)
    return 0 if ok else 1


def nccl(elements, repeats, json_path):
    """``--nccl``: two processes on GPUs 0 and 1 (``distributed.spawn``), one all-reduce each."""
    from igc_np import distributed
    return distributed.spawn("0,1", [os.path.abspath(__file__), "--nccl-rank", "--elements", str(elements),
                                     "--repeats", str(repeats)] + (["--json", json_path] if json_path else []),
                             grace_s=5)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nccl", action="store_true",
                   help="instead: time a 2-GPU NCCL all-reduce of --elements floats (needs 2 GPUs)")
    p.add_argument("--elements", type=int, default=None,
                   help="--nccl: floats reduced (default resnet_igc-20 L24M2's gradient + BN buffer)")
    p.add_argument("--json", help="--nccl: write the figures to this file")
    p.add_argument("--nccl-rank", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="1 round of 3 steps")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=20, help="all-reduces timed per set-up")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a.steps, a.repeats)
    if a.nccl or a.nccl_rank:
        elements = a.elements or model_elements()
        return (nccl_rank if a.nccl_rank else nccl)(elements, a.repeats, a.json)
    if shutil.which("mpiexec") is None:
        sys.exit("bench_dist.py needs mpiexec and mpi4py: pip install -e \".[dist]\"")
    rounds, steps = (1, 3) if a.quick else (a.rounds, a.steps)
    results = {name: [] for name, _, _ in SETUPS}
    for r in range(rounds):
        for name, ranks, threads in SETUPS:
            results[name].append(run_setup(ranks, threads, steps, a.repeats))
            print(f"round {r + 1}/{rounds}  {name}: {BATCH / results[name][-1]['step_s']:.1f} images/s",
                  file=sys.stderr)
    base = statistics.median(BATCH / x["step_s"] for x in results[SETUPS[0][0]])
    first = results[SETUPS[0][0]][0]
    nbytes = 4 * first["elements"]
    print(f"\nresnet_igc-20 IGC-L24M2, {first['params']:,} parameters, global batch {BATCH}, float32; "
          f"median of {rounds} rounds x {steps} steps\n")
    print("| set-up | images/s | vs 1 process x 2 threads | all-reduce per step | BLAS threads |")
    print("|---|---|---|---|---|")
    for name, ranks, threads in SETUPS:
        ips = statistics.median(BATCH / x["step_s"] for x in results[name])
        red = statistics.median(x["reduce_s"] for x in results[name])
        print(f"| {name} | {ips:.1f} | {ips / base:.2f}x | "
              + (f"{1e3 * red:.2f} ms ({nbytes / 1e6:.2f} MB)" if ranks > 1 else "-")
              + f" | {results[name][0]['blas_threads']} |")

    big = 4 * imagenet_elements()
    print(f"\nModel of the reduction per step (gradient + BN buffers, float32): resnet_igc-20 L24M2 "
          f"{nbytes / 1e6:.2f} MB, ImageNet IGC-L4M32 {big / 1e6:.1f} MB. Time = 2 (P-1)/P x bytes / "
          f"bandwidth + 2 (P-1) x latency; bandwidths and latencies are nominal.\n")
    Ps = (2, 8, 16, 64)
    print("| link (GB/s, us) | " + " | ".join(f"P={P}" for P in Ps) + " | ImageNet P=8 | ImageNet P=64 |")
    print("|---|" + "---|" * (len(Ps) + 2))
    for link, bw, lat in LINKS:
        cells = [f"{1e3 * reduce_model_s(nbytes, P, bw, lat):.2f} ms" for P in Ps]
        cells += [f"{1e3 * reduce_model_s(big, P, bw, lat):.1f} ms" for P in (8, 64)]
        print(f"| {link} ({bw:g}, {lat:g}) | " + " | ".join(cells) + " |")

    # machines like this one (1 process x 2 threads each), the batch split P ways: the compute
    # shrinks as 1/P (optimistic for small slices), the reduction is the model's
    step = statistics.median(x["step_s"] for x in results[SETUPS[0][0]])
    print(f"\nModelled images/s of P machines like this one (measured step {step:.2f} s at batch "
          f"{BATCH}, divided by P, plus the reduction):\n")
    print("| link | " + " | ".join(f"P={P}" for P in (1,) + Ps[:2]) + " |")
    print("|---|---|---|---|")
    for link, bw, lat in LINKS[2:]:
        cells = [f"{BATCH / (step / P + reduce_model_s(nbytes, P, bw, lat)):.0f}" for P in (1,) + Ps[:2]]
        print(f"| {link} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
