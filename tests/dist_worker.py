"""One rank of the data-parallel tests (tests/test_distributed.py), started by mpiexec or spawn.

    mpiexec -n 3 python tests/dist_worker.py OUT_DIR STEPS [--resume STATE.npz] [--dist KIND]

--resume: rank 0 alone reads the file (``distributed.root_reads``); the other ranks may be given a
path they cannot read. IGC_NP_TEST_RAISE="RANK,STEP" makes rank RANK raise a ValueError before
its step STEP (a rank failing mid-run).

Trains a tiny resnet_igc in float64 on random 8x8 images with ``distributed.dp_step`` for STEPS
batches (batch 8 of 23 images: the epoch ends on an uneven batch of 7), continuing from
STATE.npz if given. Every rank compares its final state with rank 0's (broadcast), the verdict
is reduced, and rank 0 alone writes OUT_DIR/state.npz. ``run`` is also what the test calls in-process
for the single-process twin (``micro_batches=K``), so both sides train the very same way.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from igc_np import nets, optim  # noqa: E402
from igc_np.app import distributed  # noqa: E402
from igc_np.app.data import iterate_batches  # noqa: E402

N_IMAGES, BATCH = 23, 8


def make_data():
    rng = np.random.default_rng(123)
    x = rng.integers(0, 256, size=(N_IMAGES, 3, 8, 8), dtype=np.uint8)
    return x, rng.integers(0, 10, size=N_IMAGES).astype(np.int64)


def make_model(device="cpu"):
    model = nets.get_network("resnet_igc", 8, num_classes=10, primary_partition=2,
                             secondary_partition=2, rng=np.random.default_rng(0))
    model.to(device, np.float64)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    return model, opt


def batches(step, rng_state):
    """(xb, yb, epoch_state) of the global batches from `step` on.

    rng_state: the data rng's state at the start of the epoch holding batch `step` (what a
    checkpoint stores); that epoch's shuffle is drawn again and its finished batches skipped.
    """
    x, y = make_data()
    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    skip = step % -(-N_IMAGES // BATCH)
    while True:
        epoch_state = rng.bit_generator.state
        for xb, yb in iterate_batches(x, y, BATCH, shuffle=True, rng=rng, augment=True,
                                      dtype=np.float64, pad=2, start_batch=skip):
            yield xb, yb, epoch_state
        skip = 0


def pack(model, opt, step, rng_state, sums):
    state = {f"model/{k}": v for k, v in model.state_dict().items()}
    state.update({f"optimizer/{k}": np.asarray(v) for k, v in opt.state_dict().items()})
    state.update(step=np.int64(step), rng_state=np.array(json.dumps(rng_state)),
                 sums=np.asarray(sums))
    return state


def run(comm, steps, micro_batches=1, state=None, device="cpu"):
    """Train `steps` batches from `state` (a pack() dict) or from scratch; returns pack()."""
    model, opt = make_model(device)
    step, rng_state, sums = 0, np.random.default_rng(7).bit_generator.state, np.zeros(4)
    if state is not None:
        model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model/")})
        opt.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("optimizer/")})
        step, rng_state = int(state["step"]), json.loads(str(state["rng_state"]))
        sums = np.array(state["sums"])
    source = batches(step, rng_state)
    fail_rank, fail_step = (int(v) for v in os.environ.get("IGC_NP_TEST_RAISE", "-1,-1").split(","))
    for i in range(steps):
        if comm.rank == fail_rank and i == fail_step:
            raise ValueError(f"rank {comm.rank} failed on purpose before step {i} (IGC_NP_TEST_RAISE)")
        xb, yb, epoch_state = next(source)
        result = distributed.dp_step(model, opt, xb, yb, comm, micro_batches=micro_batches)
        assert result.finite, "the loss became non-finite in the test run"
        sums = sums + result.sums
        step += 1
    # the rng state to resume from: the one at the start of the epoch of the next batch
    _, _, epoch_state = next(source)
    return pack(model, opt, step, epoch_state, sums)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("steps", type=int)
    p.add_argument("--resume")
    p.add_argument("--dist", default="auto")
    p.add_argument("--gpus")
    a = p.parse_args()
    comm = distributed.init(a.dist, gpus=a.gpus)
    # only rank 0 needs to see the file: it reads it and sends the arrays to the others
    state = distributed.root_reads(comm, lambda: dict(np.load(a.resume))) if a.resume else None
    final = run(comm, a.steps, state=state, device="cuda" if a.gpus else "cpu")
    # every rank must hold the same bits: compare with rank 0's, through the communicator
    mine = np.concatenate([np.asarray(final[n], dtype=np.float64).reshape(-1)
                           for n in sorted(final) if final[n].dtype.kind == "f"])
    same = np.array_equal(comm.broadcast(mine.copy(), root=0), mine)
    identical = not distributed.reduce_flag(comm, not same)
    # the test set split over the ranks, metrics reduced
    model, _ = make_model()
    model.load_state_dict({k[6:]: v for k, v in final.items() if k.startswith("model/")})
    x, y = make_data()
    tested = distributed.evaluate_ranks(model, x, y, (0, 0, 0), (1, 1, 1), comm, batch_size=5,
                                  dtype=np.float64)
    # the stop flag: one rank asking is every rank stopping
    flags = [distributed.reduce_flag(comm, comm.rank == comm.size - 1),
             distributed.reduce_flag(comm, False)]
    if comm.is_root:
        final.update(flags=np.array(flags), test_sums=np.asarray(tested.sums))
        final.update(world_size=np.int64(comm.size), kind=np.array(comm.kind),
                     identical=np.bool_(identical), threads=np.int64(_threads()))
        os.makedirs(a.out_dir, exist_ok=True)
        np.savez(os.path.join(a.out_dir, "state.npz"), **final)


def _threads():
    from igc_np.ops import parallel
    return parallel.THREADS


def load_trainer():
    """examples/cifar10_igc.py as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "cifar10_igc", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "examples", "cifar10_igc.py"))
    trainer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trainer)
    return trainer


def trainer_main(argv):
    """``dist_worker.py trainer ARGS``: examples/cifar10_igc.py's main(ARGS) on this rank, where
    IGC_NP_TEST_SIGNAL="STEP,RANK,NAME" raises signal NAME on rank RANK right after its
    optimizer step number STEP (a signal on one rank only, at a known batch); NAME "RAISE" makes
    it raise a RuntimeError there instead."""
    import signal
    from igc_np import optim as optim_module
    trainer = load_trainer()
    plan = os.environ.get("IGC_NP_TEST_SIGNAL")
    if plan:
        at, rank, name = plan.split(",")
        real_step, calls = optim_module.SGD.step, []

        def step_then_signal(self):
            real_step(self)
            calls.append(1)
            if len(calls) == int(at) and os.environ.get("PMI_RANK", "0") == rank:
                if name == "RAISE":  # a rank failing mid-run instead
                    raise RuntimeError(f"rank {rank} failed on purpose after step {at}")
                signal.raise_signal(getattr(signal, name))
        optim_module.SGD.step = step_then_signal
    return trainer.main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["trainer"]:
        sys.exit(trainer_main(sys.argv[2:]))
    main()
