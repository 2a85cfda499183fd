"""The optimizer-step launchers (kernels/sgd.py, kernels/adam.py) and what they share
(kernels/multi_tensor.py): one set of array checks, plan-checked launches, tensors without
elements, $IGC_NP_KERNELS naming "adam" at start. Their numbers are tested against the float64
maths in tests/test_kernels_fused.py (SGD) and tests/test_optim.py (Adam)."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from igc_np.kernels import KERNEL_DIR, adam, launch, multi_tensor, sgd
from igc_np.kernels.launch import LaunchPlanError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HYPER = (0.01, (0.9, 0.999), 1e-8, 1e-2, True)  # adam_step's lr, betas, eps, weight_decay, decoupled


def sgd_call(ws, gs, states, device="emu", version=None):
    sgd.sgd_step(ws, gs, states[0], 0.1, 0.9, True, 1e-4, device, version=version)


def adam_call(ws, gs, states, device="emu", version=None):
    adam.adam_step(ws, gs, states[0], states[1], 1, *HYPER, device, version=version, max_exp_avg_sqs=states[2])


GUARD = 12345.0
STEPS = {"sgd": (sgd_call, 1), "adam": (adam_call, 3)}  # the launcher and its number of state lists


def arrays(shapes, n_states, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal(s).astype(dtype) for s in shapes]
    gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    states = [[np.abs(rng.standard_normal(s)).astype(dtype) for s in shapes] for _ in range(n_states)]
    return ws, gs, states


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("op", sorted(STEPS))
def test_tensors_without_elements_are_skipped(op, version):
    """Before, SGD v2 on parameters with no element planned a grid of 0 blocks (a LaunchPlanError);
    an empty tensor among others must leave the others' step as it is without it."""
    step, n_states = STEPS[op]
    ws, gs, states = arrays([(0,)], n_states)
    step(ws, gs, states, version=version)  # nothing to do, nothing launched
    ws, gs, states = arrays([(3, 4), (0, 5), (7,)], n_states)
    keep = [0, 2]  # the same step without the empty tensor
    kws, kgs = [ws[i].copy() for i in keep], [gs[i].copy() for i in keep]
    kstates = [[s[i].copy() for i in keep] for s in states]
    step(ws, gs, states, version=version)
    step(kws, kgs, kstates, version=version)
    for j, i in enumerate(keep):
        np.testing.assert_array_equal(ws[i], kws[j])
        assert not np.array_equal(ws[i], arrays([(3, 4), (0, 5), (7,)], n_states)[0][i])  # it did step


@pytest.mark.parametrize("version, where", [(1, r"v1 \(tensor 0, shape \(5,\)\)"), (2, r"v2 \(1 tensors, 1 chunks\)")])
@pytest.mark.parametrize("op", sorted(STEPS))
def test_every_launch_is_plan_checked(monkeypatch, op, version, where):
    """Adam launched without the plan checks before: a kernel limited to 128 threads a block
    (say, a __launch_bounds__ added to its .cu) ran with 256."""
    monkeypatch.setattr(launch, "thread_limit", lambda filename, kernel: 128)
    step, n_states = STEPS[op]
    with pytest.raises(LaunchPlanError, match=rf"{op}_step {where}: the launch plan of {op}_\w+ \({op}.cu\) is "
                                              r"one a GPU refuses: block \(256,\) = 256 threads exceeds"):
        step(*arrays([(5,)], n_states), version=version)


@pytest.mark.parametrize("op", sorted(STEPS))
def test_one_set_of_array_checks(op):
    step, n_states = STEPS[op]
    ws, gs, states = arrays([(2, 3)], n_states)
    first_state = {"sgd": "velocities", "adam": "exp_avgs"}[op]
    with pytest.raises(ValueError, match=rf"{op}_step: needs as many weights, grads, {first_state}.* \(at least one\), "
                                         r"got 1, 2"):
        step(ws, gs + gs, states)
    with pytest.raises(ValueError, match=rf"{op}_step: {first_state}\[0\] \(shape \(2, 3\), float64\) must be a "
                                         r"C-contiguous float32 array of weights\[0\]'s shape \(2, 3\)"):
        step(ws, gs, [[s[0].astype(np.float64)] for s in states])
    with pytest.raises(ValueError, match=rf"{op}_step: grads\[0\] \(shape \(3, 2\), float32\) must be a C-contiguous"):
        step(ws, [gs[0].T], states)
    with pytest.raises(ValueError, match=rf"{op}_step: weights must be float32 or float64, got int64"):
        step([np.zeros((2, 3), np.int64)], gs, states)
    with pytest.raises(TypeError, match=rf"{op}_step: weights\[0\] must be a numpy.ndarray on device 'emu', got "
                                        r"builtins.list"):
        step([[1.0]], gs, states)


@pytest.mark.parametrize("op", sorted(STEPS))
def test_arrays_over_the_int_indexing_are_refused(op):
    """v1 indexes with int and strides by up to 2^28: the bound is launch.MAX_INDEXED_ELEMENTS = 2^30
    (SGD allowed up to 2^31 - 1 elements before, where i + stride overflows)."""
    step, n_states = STEPS[op]
    big = np.broadcast_to(np.float32(0), (launch.MAX_INDEXED_ELEMENTS + 1,))  # no memory behind it
    with pytest.raises(ValueError, match=rf"{op}_step: weights\[0\] of 1073741825 elements exceeds the kernels' int "
                                         r"indexing \(at most 1073741824\)"):
        step([big], [big], [[big]] * n_states)


@pytest.mark.parametrize("op", sorted(STEPS))
def test_cuda_without_cupy_says_how_to_install_it(monkeypatch, op):
    """adam.py imported cupy itself before: a bare "import of cupy halted" / "No module named 'cupy'"."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    step, n_states = STEPS[op]
    with pytest.raises(ModuleNotFoundError, match=r"device 'cuda' needs CuPy: pip install cupy-cuda12x"):
        step(*arrays([(2,)], n_states), device="cuda")


def test_only_the_loader_imports_cupy():
    for path in pathlib.Path(KERNEL_DIR).glob("*.py"):
        if path.name != "loader.py":
            assert not re.search(r"^\s*(import cupy|from cupy)", path.read_text(), re.M), path.name


def test_every_registered_op_is_known_when_the_switch_is_checked():
    """igc_np.kernels checks $IGC_NP_KERNELS on import: a launcher module it does not import registers
    its op too late ("adam=1" was an unknown op at start, issue: adam.py was not imported there)."""
    registered = set()
    for path in pathlib.Path(KERNEL_DIR).glob("*.py"):
        registered |= set(re.findall(r'versions\.register\(\s*"(\w+)"', path.read_text()))
    assert {"adam", "sgd", "conv2d_forward", "batch_norm"} <= registered
    env = dict(os.environ, IGC_NP_KERNELS="adam=1, sgd=1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", "import igc_np.kernels as k\n"
                        "print(k.versions.selected('adam'), k.versions.selected('sgd'), ' '.join(k.versions.ops()))"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    adam_version, sgd_version, *ops = r.stdout.split()
    assert (adam_version, sgd_version) == ("1", "1") and set(ops) == registered


def test_the_table_of_version_2():
    """For tensor t its arrays' addresses and size, then (tensor, first element) per CHUNK."""
    seen = {}

    class Module:
        def get_function(self, name, targs):
            return lambda grid, block, args, shared_mem=0: seen.update(grid=grid, args=args)

    ws, gs, states = arrays([(multi_tensor.CHUNK + 1,), (3,)], 1)
    tensors = [(w, g, v) for w, g, v in zip(ws, gs, states[0])]
    multi_tensor.run_multi_tensor(Module(), "sgd.cu", "sgd_multi_tensor", tensors, (), "test", 4)
    table, n_tensors, n_chunks, chunk = seen["args"]
    assert (n_tensors, n_chunks, chunk, seen["grid"]) == (2, 3, multi_tensor.CHUNK, (3,))
    addresses = [a.ctypes.data for t in tensors for a in t]
    assert table.tolist() == addresses[:3] + [multi_tensor.CHUNK + 1] + addresses[3:] + [3] + \
        [0, 0, 0, multi_tensor.CHUNK, 1, 0]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("op", sorted(STEPS))
def test_no_write_outside_a_tensor(op, version):
    """The emulator's sanitizer checks the array arguments of a launch, not the arrays that v2
    reaches through its table of addresses: here every tensor is a slice of one buffer with guards
    between, at chunk edges (CHUNK - 1, CHUNK, CHUNK + 1 elements), and no guard may change (a step
    on a guard changes it: GUARD is no fixed point of either update)."""
    step, n_states = STEPS[op]
    sizes, gap = [multi_tensor.CHUNK - 1, multi_tensor.CHUNK + 1, 1, multi_tensor.CHUNK], 3
    total = sum(sizes) + gap * (len(sizes) + 1)
    rng = np.random.default_rng(1)
    buffers = [np.full(total, GUARD, np.float32) for _ in range(2 + n_states)]
    views, at = [], gap
    for n in sizes:
        views.append([b[at:at + n] for b in buffers])
        for v in views[-1]:
            v[:] = np.abs(rng.standard_normal(n)) + 0.5
        at += n + gap
    inside = np.zeros(total, bool)
    for v in views:
        start = v[0].ctypes.data - buffers[0].ctypes.data
        inside[start // 4:start // 4 + v[0].size] = True
    step([v[0] for v in views], [v[1] for v in views], [[v[2 + k] for v in views] for k in range(n_states)],
         version=version)
    for b in buffers:
        assert (b[~inside] == GUARD).all() and (b[inside] != GUARD).all()
