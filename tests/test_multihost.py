"""Two machines simulated on this one: `mpirun -H nodea:1,nodeb:1` across Linux network namespaces.

Each host is a network namespace (its own address on a private bridge, its own /etc/hosts through
/etc/netns/NAME/) and a UTS namespace (its own hostname). mpirun runs on nodea, as a user would on the
first machine, and starts its daemon on nodeb through an rsh agent that enters nodeb's namespaces. Only
addresses created here, inside these namespaces, are used; the host's own network sees no traffic.
Needs root (CI runs as root); skipped where the namespaces cannot be created.
"""
import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ACTIVATED_PATH, MSRUN, ONE_JOB_AT_A_TIME, REPO, write_image_folder

pytestmark = ONE_JOB_AT_A_TIME
from mobilenetv3.checkpoints import files as checkpoint

MPIRUN = shutil.which("mpirun")
TOOLS = ("ip", "unshare")
HOSTS = ("nodea", "nodeb")
SUBNET = "10.213.7"  # nodea is .1, nodeb .2, on the bridge
UNREACHABLE = "10.213.8.1"  # on nodea's loopback interface only: nodeb has no route to it
# `sh -c AS_HOST NAME COMMAND` runs the shell command COMMAND with NAME as hostname (in a new UTS namespace).
AS_HOST = 'hostname "$0"; exec sh -c "$1"'
COMMON = ["--device_target", "CPU", "--num_classes", 3, "--resize", 32, "--num_parallel_workers", 1]


def sh(*command, check=True):
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, check=check)


class Hosts:
    """The two namespaces, their bridge and files; run(host, command) runs a command on a host."""

    def __init__(self, tag):
        self.tag = tag
        self.bridge = f"mv3br{tag}"
        self.netns = {host: f"mv3-{tag}-{host}" for host in HOSTS}
        self.created = []  # (kind, name) in creation order, undone in reverse by close()

    def netns_files(self, host) -> Path:
        return Path("/etc/netns") / self.netns[host]

    def create(self, work: Path):
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.created.append(("link", self.bridge))
        sh("ip", "link", "set", self.bridge, "up")
        for number, host in enumerate(HOSTS, start=1):
            netns, outside, inside = self.netns[host], f"mv3{self.tag}{number}h", f"mv3{self.tag}{number}n"
            sh("ip", "netns", "add", netns)
            self.created.append(("netns", netns))
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            self.created.append(("link", outside))  # deleting one end deletes the pair
            sh("ip", "link", "set", inside, "netns", netns)
            sh("ip", "link", "set", outside, "master", self.bridge, "up")
            sh("ip", "-n", netns, "addr", "add", f"{SUBNET}.{number}/24", "dev", inside)
            sh("ip", "-n", netns, "link", "set", inside, "up")
            sh("ip", "-n", netns, "link", "set", "lo", "up")
            self.netns_files(host).mkdir(parents=True, exist_ok=True)
            self.created.append(("dir", self.netns_files(host)))
            # Name lookups stay inside the namespace: no DNS server is reachable from it.
            (self.netns_files(host) / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        sh("ip", "-n", self.netns["nodea"], "addr", "add", f"{UNREACHABLE}/32", "dev", "lo")
        self.write_hosts(nodea=f"{SUBNET}.1")
        # mpirun's rsh agent: `agent HOST COMMAND...` runs COMMAND on HOST, as ssh would.
        self.agent = work / "rsh_agent.sh"
        self.agent.write_text(f"#!/bin/sh\nhost=$1; shift\nexec ip netns exec mv3-{self.tag}-$host unshare --uts "
                              f"sh -c '{AS_HOST}' \"$host\" \"$*\"\n")
        self.agent.chmod(0o755)

    def write_hosts(self, nodea):
        """Both hosts' /etc/hosts, with `nodea` at the given address (None: unknown)."""
        lines = ["127.0.0.1 localhost", f"{SUBNET}.2 nodeb"] + ([f"{nodea} nodea"] if nodea else [])
        for host in HOSTS:
            (self.netns_files(host) / "hosts").write_text("\n".join(lines) + "\n")

    def start(self, host, command, env, **popen):
        """Start `command` (a list) on `host`."""
        script = " ".join(f"'{part}'" for part in map(str, command))
        return subprocess.Popen(["ip", "netns", "exec", self.netns[host], "unshare", "--uts", "sh", "-c", AS_HOST,
                                 host, script], env=env, **popen)

    def run(self, host, command, env, timeout):
        """Run `command` (a list) on `host`; returns (exit status, output, seconds)."""
        start = time.monotonic()
        with self.start(host, command, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as done:
            try:
                output = done.communicate(timeout=timeout)[0]
            except subprocess.TimeoutExpired:
                done.kill()
                raise
        return done.returncode, output, time.monotonic() - start

    def close(self):
        for kind, name in reversed(self.created):
            if kind == "link":
                sh("ip", "link", "del", name, check=False)
            elif kind == "netns":
                sh("ip", "netns", "del", name, check=False)
            else:
                shutil.rmtree(name, ignore_errors=True)
        try:
            Path("/etc/netns").rmdir()  # only if no other namespace keeps files there
        except OSError:
            pass


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    missing = [tool for tool in (*TOOLS, "mpirun") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    probe = f"mv3-probe-{os.getpid()}"
    if sh("ip", "netns", "add", probe, check=False).returncode != 0:
        pytest.skip("ip netns add failed: network namespaces cannot be created here")
    sh("ip", "netns", "del", probe)
    hosts = Hosts(tag=str(os.getpid() % 100000))
    try:
        hosts.create(tmp_path_factory.mktemp("hosts"))
        yield hosts
    finally:
        hosts.close()


def environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "MS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env["PATH"] = ACTIVATED_PATH  # msrun starts "python"
    return env


def mpirun_command(hosts, script, *args, exported=()):
    """`mpirun -H nodea:1,nodeb:1 ...`; `exported` are NAME=VALUE pairs given to every rank with -x."""
    exports = [part for pair in exported for part in ("-x", pair)]
    return [MPIRUN, "--allow-run-as-root", "--bind-to", "none", "-H", "nodea:1,nodeb:1", "--mca", "plm_rsh_agent",
            hosts.agent, "-x", "PYTHONPATH", *exports, sys.executable, script, *args]


def mpirun(hosts, script, *args, exported=(), timeout=300):
    """mpirun_command(...) run on nodea; returns (exit status, output, seconds)."""
    return hosts.run("nodea", mpirun_command(hosts, script, *args, exported=exported), environment(), timeout)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), {"train": 8, "val": 7}, seed=3)


def metrics(output):
    """The metrics lines in mpirun's output, where the ranks' stdout and stderr arrive as they are written: a
    warning printed at once may land between a line's text and its newline."""
    return [ast.literal_eval(found) for found in re.findall(r"^\{'Top_1_Accuracy': [^}]*\}", output, re.M)]


@pytest.fixture(scope="module")
def trained(hosts, folder, tmp_path_factory):
    """One epoch at 32 px on both hosts: the checkpoint rank 0 wrote."""
    out_dir = tmp_path_factory.mktemp("trained")
    status, output, _ = mpirun(
        hosts, REPO / "scripts" / "train.py", *COMMON, "--data_url", folder, "--batch_size", 4, "--epoch_size", 1,
        "--ckpt_save_dir", out_dir, "--dataset_sink_mode", "false")
    assert status == 0, output[-5000:]
    # 24 images, 2 ranks x batch 4: 3 steps, logged by rank 0 only.
    assert [line[:36] for line in output.splitlines() if line.startswith("Epoch:[")] == \
        [f"Epoch:[  1/   1], step:[    {step}/    3]" for step in (1, 2, 3)]
    return out_dir / "mobilenet_v3_small-1_3.ckpt"


# 24 images, 2 ranks x batch 2: 6 steps an epoch; a stop in epoch 1 leaves two epochs to resume.
RESUME_EPOCHS, RESUME_STEPS = 3, 6


def train_args(folder, ckpt_dir, *extra):
    return [*COMMON, "--data_url", folder, "--batch_size", 2, "--epoch_size", RESUME_EPOCHS, "--ckpt_save_dir",
            ckpt_dir, "--dataset_sink_mode", "false", *extra]


def final_weights(ckpt_dir):
    params, meta = checkpoint.load(checkpoint.latest(ckpt_dir))
    assert (meta["epoch"], meta["epoch_step"]) == (RESUME_EPOCHS, 0)
    return {name: p.asnumpy() for name, p in params.items()}


@pytest.fixture(scope="module")
def uninterrupted(hosts, folder, tmp_path_factory):
    """RESUME_EPOCHS epochs on both hosts in one go: the final checkpoint's parameters."""
    ckpt_dir = tmp_path_factory.mktemp("uninterrupted")
    status, output, _ = mpirun(hosts, REPO / "scripts" / "train.py", *train_args(folder, ckpt_dir), timeout=600)
    assert status == 0, output[-5000:]
    return final_weights(ckpt_dir)


def descendant(pid, program):
    """The first process under `pid` (depth first) whose argv[0] is `program`, or None."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0].decode() == program:
                return int(child)
            found = descendant(child, program)
        except FileNotFoundError:  # ended meanwhile
            continue
        if found is not None:
            return found
    return None


@pytest.fixture(scope="module")
def eval_args(folder, trained):
    return [*COMMON, "--data_url", folder, "--pretrained", trained, "--batch_size", 4]


@pytest.fixture(scope="module")
def single_process_metrics(eval_args):
    done = subprocess.run([sys.executable, REPO / "scripts" / "eval.py", *map(str, eval_args)],
                          capture_output=True, text=True, env=environment(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(metrics(done.stdout)) == 1
    return metrics(done.stdout)


@pytest.mark.slow  # two two-host jobs and the one-process run they match: run with --runslow
def test_mpirun_on_two_hosts_trains_and_evaluates_like_one_process(hosts, eval_args, single_process_metrics):
    # The scheduler's host given by name, which MindSpore alone would not take.
    status, output, _ = mpirun(hosts, REPO / "scripts" / "eval.py", *eval_args, exported=["MS_SCHED_HOST=nodea"])
    assert status == 0, output[-5000:]
    assert metrics(output) == single_process_metrics  # exactly, floats included; printed by rank 0 only


@pytest.mark.slow  # adds a third two-host job to the two above; the cluster across hosts is the same
def test_msrun_on_two_hosts_evaluates_like_one_process(hosts, eval_args, single_process_metrics, tmp_path):
    """One msrun per host, as the README says, node 0's address as --master_addr."""
    if MSRUN is None:
        pytest.skip("msrun (installed with mindspore) is not on PATH")
    port = 8118  # inside the namespaces, where nothing else listens
    launches = [hosts.start(host, [MSRUN, "--worker_num=2", "--local_worker_num=1", f"--master_addr={SUBNET}.1",
                                   f"--master_port={port}", f"--node_rank={rank}", f"--log_dir={tmp_path / host}",
                                   "--join=True", "--cluster_time_out=60", REPO / "scripts" / "eval.py",
                                   *eval_args], environment())
                for rank, host in enumerate(HOSTS)]
    try:
        statuses = [launch.wait(timeout=300) for launch in launches]
    finally:
        for launch in launches:
            launch.kill()
    logs = {host: "".join(log.read_text() for log in sorted((tmp_path / host).glob("*.log"))) for host in HOSTS}
    assert statuses == [0, 0], logs
    assert metrics(logs["nodea"]) == single_process_metrics, logs
    assert metrics(logs["nodeb"]) == []


@pytest.mark.parametrize("nodea, exported, message", [
    (None, [], "the ranks run on several machines but rank 0's machine name 'nodea' does not resolve "
               "{why}; add it to /etc/hosts there, or give every rank MS_SCHED_HOST=<this "
               "machine's IP> (mpirun -x MS_SCHED_HOST=...)"),
    (f"{SUBNET}.1", ["MS_SCHED_HOST=nodec"],
     "MS_SCHED_HOST 'nodec' does not resolve on rank 0's machine nodea {why}; set "
     "MS_SCHED_HOST to an IP address of rank 0's machine nodea (mpirun -x MS_SCHED_HOST=...)"),
    (f"{SUBNET}.1", ["MS_SCHED_HOST=nodeb"],
     f"MS_SCHED_HOST 'nodeb' ({SUBNET}.2) is not an address of rank 0's machine nodea, where the scheduler "
     "must listen; set MS_SCHED_HOST to an IP address of rank 0's machine nodea (mpirun -x MS_SCHED_HOST=...), or "
     "unset it"),
    (UNREACHABLE, [], f"rank 1 on nodeb {{why}} cannot reach the MindSpore scheduler at "
                      f"{UNREACHABLE}:"),
])
def test_launch_mistakes_end_at_once_in_one_line(hosts, tmp_path, nodea, exported, message):
    """Before: the first waited forever, the second and third blamed MS_SCHED_PORT, and the last retried for
    minutes; `nodea` is nodea's address in both hosts files (None: not there)."""
    hosts.write_hosts(nodea=nodea)
    try:
        status, output, seconds = mpirun(hosts, REPO / "tests" / "distributed_job.py", tmp_path, exported=exported,
                                         timeout=120)
    finally:
        hosts.write_hosts(nodea=f"{SUBNET}.1")
    assert status != 0
    # The resolver's or the kernel's reason in brackets; rank 0's line and rank 1's.
    pattern = re.escape(message).replace(re.escape("{why}"), r"\([^)]+\)")
    assert len(re.findall(pattern, output)) == 2, output[-5000:]
    assert seconds < 60, output[-3000:]  # 9-14 s here, mostly starting Python and MindSpore on both hosts


@pytest.mark.slow  # two more two-host training jobs, and the uninterrupted one they are compared with
def test_sigusr1_to_mpirun_stops_both_hosts_at_one_step_and_resumes_exactly(hosts, folder, uninterrupted, tmp_path):
    """mpirun forwards SIGUSR1 at once to rank 1 through nodeb's daemon: both ranks stop at one step, rank 0
    saves, both exit 138, and `--resume auto` ends with the uninterrupted run's parameters, bit for bit."""
    script, when = REPO / "scripts" / "train.py", f"Epoch:[  1/   {RESUME_EPOCHS}], step:[    2/    {RESUME_STEPS}]"
    # Under the namespace wrappers: `sh -c` (dash) runs mpirun as its child rather than exec it, and SIGUSR1
    # would end the shell, so the signal goes to mpirun's own pid; a new session lets a hang be cleaned up.
    process = hosts.start("nodea", mpirun_command(hosts, script, *train_args(folder, tmp_path)), environment(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen, signalled = [], False
    try:
        for line in process.stdout:
            seen.append(line)
            if not signalled and when in line:
                os.kill(descendant(process.pid, MPIRUN), signal.SIGUSR1)
                signalled = True
        status = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = "".join(seen)
    assert signalled, f"{when!r} never printed:\n{output[-5000:]}"
    stops = re.findall(rf"^error: SIGUSR1: stopped at step (\d+) of epoch (\d+) \({RESUME_STEPS} steps per epoch\); saved (\S+)\. "
                       r"Continue with --resume auto$", output, re.MULTILINE)
    assert status == 128 + signal.SIGUSR1 and len(stops) == 1, output[-5000:]
    step, epoch, saved = int(stops[0][0]), int(stops[0][1]), stops[0][2]
    meta = checkpoint.load(saved)[1]
    assert (meta["epoch"], meta["epoch_step"]) == ((epoch - 1, step) if step < RESUME_STEPS else (epoch, 0))
    assert meta["epoch"] < RESUME_EPOCHS, "the run ended before the signal arrived: make it longer"
    assert checkpoint.latest(tmp_path) == Path(saved)
    status, resumed, _ = mpirun(hosts, script, *train_args(folder, tmp_path, "--resume", "auto"), timeout=600)
    assert status == 0 and "resumed from" in resumed, resumed[-5000:]
    final = final_weights(tmp_path)
    assert set(final) == set(uninterrupted)
    assert all(np.array_equal(final[name], uninterrupted[name]) for name in final)
