"""Training across two machines, stood in for by two Linux network namespaces on this one.

Each "host" is a network namespace with its own address on a veth pair (10.200.N.1 and .2, only
inside the namespaces) and its own host name (``unshare --uts``); /etc/netns/NS/hosts names both
(``ip netns exec`` mounts it over /etc/hosts). MPICH's ``mpiexec -f hosts -launcher ssh
-launcher-exec STAND_IN`` starts the remote proxy through a stand-in for ssh that runs the
command in the namespace named by the host, as ssh would run it on that machine. The MPI traffic
is forced onto the network (``MPIR_CVAR_NOLOCAL=1``: no shared memory; ``UCX_TLS=tcp,self``), and
the veth's byte counters show it crossed the link. Checked: the trainer on the two hosts equals
``--micro-batches 2`` on one process bit for bit, and killing the second host's rank ends the job
within seconds, naming that rank. Skipped, with the reason, where namespaces cannot be made (not
root, no ``ip``/``unshare``, a container without CAP_SYS_ADMIN).

The same recipe on real machines: a hosts file with one line per machine (``name:ranks``), the
checkout and Python at the same path on each, passwordless ssh, and
``mpiexec -f hosts -n 2 python examples/cifar10_igc.py ...`` on the first machine.
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_distributed as td  # noqa: E402  (the trainer options, the twin and the comparison)

ROOT = td.ROOT
SSH_STAND_IN = """#!/bin/sh
# ssh as mpiexec calls it ("ssh -x HOST 'command' args..."), run in HOST's network namespace
# under its own host name, the command read by a shell as sshd would
while [ "${1#-}" != "$1" ]; do shift; done
host=$1
shift
case $host in
%s
*) echo "ssh stand-in: unknown host $host" >&2; exit 255 ;;
esac
exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$1"; shift; eval "exec $*"' sh "$host" "$@"
"""


def _cannot_make_namespaces():
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    for tool in ("ip", "unshare", "mpiexec"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    return None


class TwoHosts:
    """Two namespaces hostA/hostB joined by a veth pair; `run` starts mpiexec on hostA."""

    def __init__(self, tmp):
        tag = f"{os.getpid() % 100000}"
        net = 10 + os.getpid() % 240  # 10.200.<net>.0/24, inside the namespaces only
        self.ns = {"hostA": f"igcA{tag}", "hostB": f"igcB{tag}"}
        self.veth = {"hostA": f"igcvA{tag}", "hostB": f"igcvB{tag}"}
        self.addr = {"hostA": f"10.200.{net}.1", "hostB": f"10.200.{net}.2"}
        self.made, self.tmp = [], tmp

    def make(self):
        """Create both namespaces, the link, the hosts files and the ssh stand-in (OSError if not)."""
        tmp = self.tmp
        A, B = self.ns["hostA"], self.ns["hostB"]
        self._ip("netns", "add", A)
        self.made.append(A)
        self._ip("netns", "add", B)
        self.made.append(B)
        self._ip("link", "add", self.veth["hostA"], "type", "veth", "peer", "name", self.veth["hostB"])
        hosts = "127.0.0.1 localhost\n" + "".join(f"{a} {h}\n" for h, a in self.addr.items())
        for h in ("hostA", "hostB"):
            ns, dev = self.ns[h], self.veth[h]
            self._ip("link", "set", dev, "netns", ns)  # the pair goes when its namespace goes
            self._ip("-n", ns, "addr", "add", f"{self.addr[h]}/24", "dev", dev)
            self._ip("-n", ns, "link", "set", dev, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
            os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
            with open(f"/etc/netns/{ns}/hosts", "w") as f:
                f.write(hosts)
        self.ssh = os.path.join(tmp, "ssh-stand-in")
        cases = "\n".join(f'{h}) ns={ns} ;;' for h, ns in self.ns.items())
        with open(self.ssh, "w") as f:
            f.write(SSH_STAND_IN % cases)
        os.chmod(self.ssh, stat.S_IRWXU)
        self.hosts_file = os.path.join(tmp, "hosts")
        with open(self.hosts_file, "w") as f:
            f.write("hostA:1\nhostB:1\n")

    def _ip(self, *args):
        p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise OSError(f"ip {' '.join(args)}: {p.stderr.strip()}")

    def close(self):
        for ns in self.made:  # deleting a namespace deletes its end of the veth, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        # a pair left outside the namespaces (a failure half-way): gone with either end
        subprocess.run(["ip", "link", "del", self.veth["hostA"]], capture_output=True, timeout=30)

    def link_bytes(self):
        """Bytes received on hostB's end of the link."""
        out = subprocess.run(["ip", "-n", self.ns["hostB"], "-s", "-j", "link", "show", "dev",
                              self.veth["hostB"]], capture_output=True, text=True, check=True).stdout
        return json.loads(out)[0]["stats64"]["rx"]["bytes"]

    def mpiexec(self, args, n=2):
        """The command line of mpiexec started on hostA, one rank per host."""
        inner = ["mpiexec", "-f", self.hosts_file, "-launcher", "ssh", "-launcher-exec", self.ssh,
                 "-n", str(n), *args]
        return ["ip", "netns", "exec", self.ns["hostA"], "unshare", "--uts", "/bin/sh", "-c",
                'hostname hostA; exec "$@"', "sh", *inner]

    def env(self):
        env = td._worker_env(MPIR_CVAR_NOLOCAL="1", UCX_TLS="tcp,self")
        env["PYTHONUNBUFFERED"] = "1"
        return env


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    why = _cannot_make_namespaces()
    if why:
        pytest.skip(f"two stand-in hosts cannot be made here: {why}")
    two = TwoHosts(str(tmp_path_factory.mktemp("hosts")))
    try:
        try:
            two.make()
        except OSError as e:
            pytest.skip(f"two stand-in hosts cannot be made here: {e}")
        yield two
    finally:
        two.close()  # whatever was made


HELLO = """
import socket
import numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD
a = np.full(1 << 20, c.Get_rank() + 1.0)  # 8 MB each way: must cross the link
b = np.zeros_like(a)
c.Allreduce(a, b)
names = c.gather(socket.gethostname())
if c.Get_rank() == 0:
    print(" ".join(names), b[0], flush=True)
"""


def test_two_hosts_talk_over_the_link(hosts):
    before = hosts.link_bytes()
    p = subprocess.run(hosts.mpiexec([sys.executable, "-c", HELLO]), env=hosts.env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == "hostA hostB 3.0"  # rank 0 on hostA, rank 1 on hostB
    assert hosts.link_bytes() - before > 8 << 20  # the reduction went over the veth


def test_trainer_on_two_hosts_equals_two_micro_batches(hosts, tmp_path):
    out = tmp_path / "hosts"
    before = hosts.link_bytes()
    p = subprocess.run(hosts.mpiexec([sys.executable, td.WORKER, "trainer", *td.TRAINER,
                                      "--num-epochs", "2", "--output-dir", str(out)]),
                       env=hosts.env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Data parallel: 2 mpi rank(s)" in p.stdout
    assert td._trainer_here(tmp_path / "micro", "--num-epochs", "2", "--micro-batches", "2") == 0
    assert td._files(out) == td._files(tmp_path / "micro")
    for name in ("model-0001.npz", "model-0002.npz"):
        assert td._same_checkpoints(out / name, tmp_path / "micro" / name) == []
    params = sum(int(np.prod(v.shape)) for k, v in np.load(out / "model-0002.npz").items()
                 if k.startswith("model/"))
    assert hosts.link_bytes() - before > 8 * params  # every step's reduction crossed the link


def _pids_in(ns, name):
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if any(name.encode() in part for part in cmd[:3]):
            found.append(int(pid))
    return found


def test_killing_the_second_hosts_rank_ends_the_job_within_seconds(hosts, tmp_path):
    out = tmp_path / "killed"
    job = subprocess.Popen(hosts.mpiexec([sys.executable, td.WORKER, "trainer", *td.TRAINER,
                                          "--num-epochs", "50", "--output-dir", str(out)]),
                           env=hosts.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not (out / "model-0001.npz").exists():  # training is under way on both hosts
            assert job.poll() is None, job.communicate()
            assert time.monotonic() - t0 < 300, "the first epoch did not finish"
            time.sleep(0.2)
        rank1 = _pids_in(hosts.ns["hostB"], "dist_worker.py")
        assert rank1, "rank 1's python is not in hostB's namespace"
        for pid in rank1:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        stdout, stderr = job.communicate(timeout=120)
        seconds = time.monotonic() - killed
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode != 0
    assert seconds < 15, f"the job took {seconds:.1f} s to end after rank 1 was killed"
    # the first error named: mpiexec's banner (on stdout) gives the process, its host and status
    banner = stdout[stdout.index("BAD TERMINATION"):] if "BAD TERMINATION" in stdout else stdout[-2000:]
    assert f"PID {rank1[0]} RUNNING AT hostB" in banner and "EXIT CODE: 9" in banner, banner + stderr
    print(f"job ended {seconds:.2f} s after rank 1 on hostB was killed")
