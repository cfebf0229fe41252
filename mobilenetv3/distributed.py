"""Data-parallel start-up that works unchanged under mpirun, msrun or as a single process.

    info = init_distributed(config.device_target, config.run_distribute)  # before datasets and networks
    check_same_config(vars(config))
    dataset = ...(num_shards=info.size, shard_id=info.rank)
    if is_main_process(): print(step_log)

Launchers, told apart by the variables they export:
- mpirun (OMPI_COMM_WORLD_SIZE): on GPU and Ascend, `init("nccl"/"hccl")` uses OpenMPI directly. On CPU
  that path fails ("Failed to initialize communication library"), so the ranks join MindSpore's dynamic
  cluster the way msrun would set it up: rank 0 starts the scheduler process (cluster_scheduler.py) on a free
  port, waits until it listens and broadcasts its address over mpi4py; rank r becomes MS_WORKER r.
- msrun (MS_ROLE): msrun has exported everything and `init()` joins. msrun also runs the script as the
  scheduler (MS_ROLE=MS_SCHED), whose `init()` serves the cluster and exits without returning.
- MPICH's or Intel MPI's mpiexec (PMI_SIZE) and Slurm's srun (SLURM_STEP_NUM_TASKS, which srun sets
  and an sbatch script does not): refused when they start several processes, as MindSpore's mpirun
  path needs OpenMPI and nothing here can gather the ranks otherwise.
- none of these: one process, no collectives.

A rank that dies ends the job: mpirun kills the other ranks when one exits abnormally, and the scheduler
dies with rank 0. Under msrun the scheduler notices the missing heartbeat after MS_NODE_TIMEOUT and
msrun then stops the rest. A rank that raises under mpirun once MPI is up would instead wait in
MPI_Finalize for ranks that wait for it in a collective, so config.run_cli ends the job with MPI_Abort
(abort_job) on any exception but an EveryRankError, which every rank raises alike.

Environment set here (a value the user exported wins): GLOG_v=3 on every rank but 0 and on the
scheduler, MS_SUBMODULE_LOG_v=CLUSTER_CHATTER, MS_TOPO_TIMEOUT and MS_NODE_TIMEOUT (CLUSTER_TIMEOUTS);
under mpirun on CPU also MS_ROLE, MS_WORKER_NUM, MS_NODE_ID, MS_SCHED_HOST and MS_SCHED_PORT, where an
exported MS_SCHED_HOST (an address or name of rank 0's machine, needed across machines if its name
resolves to 127.x) or MS_SCHED_PORT is what rank 0 uses; every rank checks that it reaches the scheduler
before joining.
"""
import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import UserError, mindspore_cause

# MindSpore's dynamic-cluster timeouts in seconds, set unless the user exported them. Its defaults
# (30 min to form the cluster, 30 s without heartbeat) leave a broken job hanging long after the cause.
CLUSTER_TIMEOUTS = {
    "MS_TOPO_TIMEOUT": "300",  # every rank must register with the scheduler within this window
    "MS_NODE_TIMEOUT": "20",  # a rank silent this long is declared dead and the job stops
}
SCHEDULER_START_TIMEOUT = 120.0
SCHEDULER_CONNECT_TIMEOUT = 5.0  # seconds for each rank's test connection to the scheduler
# Errors only from the submodules that narrate cluster start-up ("The worker node start sync start!",
# "The group mccl_world_group has already existed", ...), on rank 0 too.
CLUSTER_CHATTER = "{DISTRIBUTED:3,DEVICE:3}"
# Only where a launcher started the process: without one, a single process is what the user asked for.
SINGLE_PROCESS_WARNING = "run_distribute is true but the launcher started only one process; running on one process"


class EveryRankError(UserError):
    """A UserError every rank raises alike (its cause was shared by a collective): each rank can exit
    normally, none waits for another."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    size: int = 1
    is_distributed: bool = False


_state = {"info": DistInfo(), "joined": False, "warned_single": False, "all_gather": None}


# Launchers that start several processes this package cannot join: the variable holding their number.
UNSUPPORTED_LAUNCHERS = {
    "MPICH or Intel MPI mpiexec": "PMI_SIZE",
    "Slurm srun": "SLURM_STEP_NUM_TASKS",
}


def _process_count(environ, variable) -> int:
    try:
        return int(environ.get(variable) or 1)
    except ValueError:
        return 1


def detect_launcher(environ=None) -> str:
    """'mpirun' (OpenMPI), 'msrun', a key of UNSUPPORTED_LAUNCHERS (several processes) or 'single'.

    OpenMPI is checked first: its mpirun starts ranks through srun inside a Slurm allocation."""
    environ = os.environ if environ is None else environ
    if "OMPI_COMM_WORLD_SIZE" in environ:
        return "mpirun"
    if "MS_ROLE" in environ:
        return "msrun"
    for launcher, variable in UNSUPPORTED_LAUNCHERS.items():
        if _process_count(environ, variable) > 1:
            return launcher
    return "single"


def launcher_rank(environ=None) -> Optional[str]:
    """This process's rank as the launcher set it (before init_distributed), or None outside mpirun/msrun."""
    environ = os.environ if environ is None else environ
    launcher = detect_launcher(environ)
    return environ.get("OMPI_COMM_WORLD_RANK") if launcher == "mpirun" else environ.get("MS_NODE_ID")


def apply_log_defaults(environ=None):
    """Keep MindSpore's log to what rank 0 has to say; must run before MindSpore is imported.

    Every other rank and the scheduler log errors only (GLOG_v=3); rank 0 keeps its warnings but not the
    cluster's connection chatter. A value the user exported wins.
    """
    environ = os.environ if environ is None else environ
    launcher = detect_launcher(environ)
    if launcher not in ("mpirun", "msrun"):
        return
    if environ.get("MS_ROLE") == "MS_SCHED" or launcher_rank(environ) not in (None, "0"):
        environ.setdefault("GLOG_v", "3")
    environ.setdefault("MS_SUBMODULE_LOG_v", CLUSTER_CHATTER)


def is_main_process() -> bool:
    """True on the one rank that prints step logs and writes checkpoints (on every rank before
    init_distributed)."""
    return _state["info"].rank == 0


def init_distributed(device_target: str, run_distribute: bool, device_id: int = 0) -> DistInfo:
    """Select the device and, if several processes were launched, join them for data-parallel training.

    Sets DATA_PARALLEL with gradients_mean=True, so N ranks at batch B step like one process at batch N*B.
    Raises UserError for launch mistakes a user can fix.
    """
    import mindspore as ms

    launcher = detect_launcher()
    if launcher in UNSUPPORTED_LAUNCHERS:
        variable = UNSUPPORTED_LAUNCHERS[launcher]
        raise UserError(f"{launcher} started {os.environ[variable]} processes ({variable}), which cannot join one "
                        "job here: each would train alone as rank 0 on the same device. Launch with OpenMPI's "
                        "mpirun (mpirun -n N python scripts/train.py ...) or MindSpore's msrun")
    size = int(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("MS_WORKER_NUM") or 1)
    if device_id and launcher != "single" and (size > 1 or launcher == "msrun"):
        raise UserError(f"device_id {device_id} is for a single process: under {launcher} rank r of each machine "
                        "takes its r-th visible device; choose the GPUs with CUDA_VISIBLE_DEVICES (mpirun -x "
                        "CUDA_VISIBLE_DEVICES=4,5,6,7 ...) and leave device_id at 0")
    from .runtime import select_device
    select_device(device_target, device_id)  # init() needs it, and runtime.setup may select it again afterwards
    if _state["joined"]:
        return _state["info"]
    if run_distribute and size == 1 and launcher != "single" and not _state["warned_single"]:
        _state["warned_single"] = True
        print(f"warning: {SINGLE_PROCESS_WARNING}", file=sys.stderr)
    if launcher == "single" or (launcher == "mpirun" and size == 1):
        return _state["info"]
    if not run_distribute and size > 1:
        raise UserError(f"{launcher} launched {size} processes but run_distribute is false, so each would train "
                        "alone and they would overwrite each other's checkpoints; pass --run_distribute true, "
                        "or start one process without a launcher")
    if launcher == "mpirun":
        release_core_binding()  # again: for threads started since the package was imported
        if device_target == "CPU":
            _join_cluster_from_mpirun(int(os.environ["OMPI_COMM_WORLD_RANK"]), size)
    for name, seconds in CLUSTER_TIMEOUTS.items():
        os.environ.setdefault(name, seconds)
    _init_communication(device_target, launcher)

    from mindspore.communication import get_group_size, get_rank
    info = DistInfo(rank=get_rank(), size=get_group_size(), is_distributed=get_group_size() > 1)
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=info.size)
    _state.update(info=info, joined=True)
    return info


def release_core_binding():
    """Under mpirun, let every thread run on every CPU: mpirun binds each rank to one core by default,
    which starves MindSpore's thread pools. Best before MindSpore starts them; each thread has its own
    mask, so all threads started so far are released."""
    if detect_launcher() != "mpirun":
        return
    all_cpus = set(range(os.cpu_count() or 1))
    for thread_id in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread_id), all_cpus)
        except OSError:  # the thread ended meanwhile
            pass


def _mpi_world(size: int):
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError("mpirun on CPU needs mpi4py to start the MindSpore cluster: pip install mpi4py") from None
    world = MPI.COMM_WORLD
    if world.Get_size() != size:
        mpi4py_mpi = MPI.Get_library_version().split(",")[0].strip("\0 \n")
        raise UserError(f"mpirun started {size} ranks but mpi4py sees {world.Get_size()}: mpi4py is built against "
                        f"another MPI ({mpi4py_mpi}) than the mpirun that launched the job; use that MPI's "
                        "mpirun, or rebuild mpi4py with its mpicc: pip install --no-binary mpi4py --force-reinstall "
                        "mpi4py")
    return world


def in_mpi_job() -> bool:
    """True once mpi4py has started MPI with several ranks: then a rank that exits alone would wait in
    MPI_Finalize while the others wait for it in a collective, and must end the job with abort_job."""
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized() and mpi.COMM_WORLD.Get_size() > 1


def abort_job(status: int):
    """End every rank of the MPI job now with exit `status` (MPI_Abort)."""
    from mpi4py import MPI
    sys.stdout.flush()
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(status)


def _join_cluster_from_mpirun(rank: int, size: int):
    """Export the dynamic-cluster variables msrun would, with rank 0 running the scheduler."""
    world = _mpi_world(size)
    address = None
    if rank == 0:
        try:
            address = _start_scheduler(size)
        except UserError as err:
            address = err
    address = world.bcast(address, root=0)  # an error too, so that no rank waits for a cluster that won't form
    if isinstance(address, UserError):
        raise EveryRankError(str(address) if rank == 0 else f"rank 0 could not start the cluster: {address}")
    host, port, scheduler_machine = address
    _check_every_rank_reaches(world, host, port, scheduler_machine)
    os.environ.update(MS_ROLE="MS_WORKER", MS_WORKER_NUM=str(size), MS_NODE_ID=str(rank),
                      MS_SCHED_HOST=host, MS_SCHED_PORT=str(port))


def _check_every_rank_reaches(world, host: str, port: int, scheduler_machine: str):
    """EveryRankError unless every rank can open a TCP connection to the scheduler. MindSpore would retry
    an unreachable address until MS_TOPO_TIMEOUT, logging each attempt."""
    try:
        socket.create_connection((host, port), timeout=SCHEDULER_CONNECT_TIMEOUT).close()
        failure = None
    except OSError as err:
        failure = (socket.gethostname(), err.strerror or "timed out")
    failures = [(rank, report) for rank, report in enumerate(world.allgather(failure)) if report]
    if failures:
        ranks = ", ".join(f"rank {rank} on {machine} ({why})" for rank, (machine, why) in failures)
        raise EveryRankError(f"{ranks} cannot reach the MindSpore scheduler at {host}:{port} on rank 0's machine "
                             f"{scheduler_machine}; give every rank MS_SCHED_HOST=<an address of {scheduler_machine} "
                             f"that all machines reach> (mpirun -x MS_SCHED_HOST=...), and let TCP port {port} "
                             "through its firewall")


def _scheduler_host(size: int) -> str:
    """The IPv4 address rank 0 serves the scheduler on: MS_SCHED_HOST (a name is resolved here, as MindSpore
    takes only addresses), else 127.0.0.1 if every rank is on this machine, else the address of its name."""
    machine = socket.gethostname()
    if "MS_SCHED_HOST" in os.environ:
        name = os.environ["MS_SCHED_HOST"]
        fix = f"set MS_SCHED_HOST to an IP address of rank 0's machine {machine} (mpirun -x MS_SCHED_HOST=...)"
        try:
            host = socket.gethostbyname(name)
        except OSError as err:
            raise UserError(f"MS_SCHED_HOST {name!r} does not resolve on rank 0's machine {machine} "
                            f"({err.strerror}); {fix}") from None
        if not _is_address_of_this_machine(host):
            named = name if name == host else f"{name!r} ({host})"
            raise UserError(f"MS_SCHED_HOST {named} is not an address of rank 0's machine {machine}, where the "
                            f"scheduler must listen; {fix}, or unset it")
        return host
    if int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", size)) == size:
        return "127.0.0.1"  # every rank is on this machine
    fix = "give every rank MS_SCHED_HOST=<this machine's IP> (mpirun -x MS_SCHED_HOST=...)"
    try:
        host = socket.gethostbyname(machine)
    except OSError as err:
        raise UserError(f"the ranks run on several machines but rank 0's machine name {machine!r} does not "
                        f"resolve ({err.strerror}); add it to /etc/hosts there, or {fix}") from None
    if host.startswith("127."):
        raise UserError(f"the ranks run on several machines but this machine's name {machine!r} resolves to the "
                        f"loopback address {host}, which the others cannot reach; {fix}")
    return host


def _is_address_of_this_machine(host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def _free_port(host: str, wanted: int) -> int:
    """`wanted` if it can be listened on at `host` (0: any free port), else UserError."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, wanted))
        except OSError as err:
            raise UserError(f"MS_SCHED_PORT {wanted}: cannot listen on {host}:{wanted} for the MindSpore scheduler "
                            f"({err.strerror}); export MS_SCHED_PORT=<a free port>, or unset it to have one "
                            "picked") from None
        return probe.getsockname()[1]


def _start_scheduler(size: int):
    host = _scheduler_host(size)
    requested = os.environ.get("MS_SCHED_PORT", "0")
    if not requested.isdigit():
        raise UserError(f"MS_SCHED_PORT must be a port number, got {requested!r}")
    port = _free_port(host, int(requested))
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith(("OMPI_", "PMIX_"))}  # else MindSpore takes it for an MPI rank
    environ.update(MS_ROLE="MS_SCHED", MS_WORKER_NUM=str(size), MS_SCHED_HOST=host, MS_SCHED_PORT=str(port),
                   MOBILENETV3_SCHEDULER_PARENT=str(os.getpid()))
    for name, seconds in CLUSTER_TIMEOUTS.items():
        environ.setdefault(name, seconds)
    apply_log_defaults(environ)
    scheduler = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cluster_scheduler.py"))],
                                 env=environ, stdin=subprocess.DEVNULL)
    _wait_until_listening(scheduler, host, port)
    threading.Thread(target=_exit_if_scheduler_fails, args=(scheduler,), daemon=True).start()
    return host, port, socket.gethostname()


def _wait_until_listening(scheduler, host: str, port: int):
    """Workers that knock before the scheduler listens take ~8 s longer to register, so wait for it."""
    deadline = time.monotonic() + SCHEDULER_START_TIMEOUT
    while time.monotonic() < deadline:
        if scheduler.poll() is not None:
            raise UserError(f"the MindSpore scheduler process for {host}:{port} exited with status "
                            f"{scheduler.returncode} before the cluster formed; see its messages above")
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.2)
    scheduler.kill()
    raise UserError(f"the MindSpore scheduler process did not listen on {host}:{port} within "
                    f"{SCHEDULER_START_TIMEOUT:.0f} s; is the machine overloaded?")


def _exit_if_scheduler_fails(scheduler):
    """Without its scheduler the cluster cannot go on; end rank 0 so that mpirun ends the job."""
    status = scheduler.wait()
    if status != 0:
        print(f"error: the MindSpore scheduler process exited with status {status}; see its messages above",
              file=sys.stderr, flush=True)
        os._exit(1)


def _init_communication(device_target: str, launcher: str):
    from mindspore.communication import init
    backend = {"GPU": "nccl", "Ascend": "hccl"}.get(device_target) if launcher == "mpirun" else None
    try:
        init(backend)
    except RuntimeError as err:
        cause = mindspore_cause(err)
        if os.environ.get("MS_ROLE") == "MS_SCHED":
            raise UserError(f"the MindSpore scheduler ended the job: {cause} See the workers' logs") from None
        raise UserError(f"MindSpore could not set up communication on {device_target} under {launcher} "
                        f"({cause}); check {_communication_hint(device_target, launcher, cause)}") from None


def _communication_hint(device_target: str, launcher: str, cause: str) -> str:
    if launcher == "msrun":
        return "msrun's --master_addr (reachable from every machine), --master_port (free) and --worker_num (the " \
               "number of processes started on all machines)"
    if "mpi" in cause.lower():
        return "that mpirun is OpenMPI 4 (MindSpore loads libmpi.so.40) and mpi4py was built with that MPI"
    check_gpu = "; python scripts/check_gpu.py checks the GPU libraries" if device_target == "GPU" else ""
    return "that each rank sees its device (CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES: at least as many " \
           f"devices as ranks on each machine){check_gpu}"


def all_reduce_sum(array) -> np.ndarray:
    """The element-wise sum of `array` over all ranks, identical on every rank.

    Integers and booleans are summed exactly as int64, floats as float64; a single process gets its own
    array converted the same way. The arrays are gathered and summed here in rank order because
    MindSpore's CPU AllReduce takes float32 only, which miscounts above 2**24.
    """
    array = np.asarray(array)
    if array.dtype.kind in "biu":
        array = array.astype(np.int64)
    elif array.dtype.kind == "f":
        array = array.astype(np.float64)
    else:
        raise ValueError(f"all_reduce_sum takes integer, boolean or float arrays, got dtype {array.dtype}")
    return _all_gather(array).sum(axis=0, dtype=array.dtype)


def _all_gather(array: np.ndarray) -> np.ndarray:
    """Every rank's `array` (the same shape on all ranks) stacked in rank order along a new first axis.

    The bytes travel as int32 words: MindSpore's CPU AllGather silently cuts int64 and float64 values
    to 32 bits (2**60 + 1 arrives as 1), but copies int32 exactly.
    """
    info = _state["info"]
    if not info.is_distributed:
        return array[np.newaxis].copy()
    import mindspore as ms
    if _state["all_gather"] is None:
        _state["all_gather"] = _all_gather_cell()
    words = np.ascontiguousarray(array).reshape(1, -1).view(np.int32)
    gathered = _state["all_gather"](ms.Tensor(words)).asnumpy()
    return gathered.view(array.dtype).reshape((info.size,) + array.shape)


def _all_gather_cell():
    from mindspore import nn, ops

    class AllGather(nn.Cell):
        def __init__(self):
            super().__init__()
            self.all_gather = ops.AllGather()

        def construct(self, x):
            return self.all_gather(x)

    return AllGather()


def check_same_config(config: dict):
    """Raise UserError on every rank unless all ranks were given the same configuration."""
    names = sorted(config)
    digests = np.array([_digest(names)] + [_digest(config[name]) for name in names], dtype=np.int64)
    gathered = _all_gather(digests)
    differing = [rank for rank in range(len(gathered)) if not np.array_equal(gathered[rank], gathered[0])]
    if not differing:
        return
    if (gathered[differing, 0] != gathered[0, 0]).any():
        detail = "a different set of keys (another version of the code?)"
    else:
        keys = [name for i, name in enumerate(names) if (gathered[differing, i + 1] != gathered[0, i + 1]).any()]
        detail = f"different values of {', '.join(keys)}"
    raise EveryRankError(f"rank {', '.join(map(str, differing))} got {detail} than rank 0; give every rank the "
                         "same --config file and flags")


def _digest(value) -> int:
    text = json.dumps(value, sort_keys=True, default=_json_value).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:7], "little")  # 56 bits: an int64 holds it exactly


def _json_value(value):
    """Sets sorted: their order changes with each process's hash seed."""
    return sorted(value, key=repr) if isinstance(value, (set, frozenset)) else str(value)
