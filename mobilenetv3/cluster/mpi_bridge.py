"""mpirun on CPU: OpenMPI's ranks joined into MindSpore's dynamic cluster, and ending an MPI job.

On GPU and Ascend `init("nccl"/"hccl")` uses OpenMPI directly. On CPU that path fails ("Failed to
initialize communication library"), so the ranks join MindSpore's dynamic cluster the way msrun would
set it up: rank 0 starts the scheduler process (scheduler.py) on a free port, waits until it listens and
broadcasts its address over mpi4py; every rank checks that it reaches the scheduler, then becomes
MS_WORKER r (MS_ROLE, MS_WORKER_NUM, MS_NODE_ID, MS_SCHED_HOST and MS_SCHED_PORT exported). An exported
MS_SCHED_HOST (an address or name of rank 0's machine, needed across machines if its name resolves to
127.x) or MS_SCHED_PORT is what rank 0 uses.

A rank that raises once MPI is up would wait in MPI_Finalize for ranks that wait for it in a collective,
so the CLI runner ends the job with abort_job on any exception but an EveryRankError, which every rank
raises alike. The scheduler dies with rank 0, and rank 0 with a failed scheduler.
"""
import errno
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import EveryRankError, UserError
from .launchers import CLUSTER_TIMEOUTS, apply_log_defaults

logger = logging.getLogger(__name__)

SCHEDULER_START_TIMEOUT = 120.0

SCHEDULER_CONNECT_TIMEOUT = 5.0  # seconds for each rank's test connection to the scheduler


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


def join_cluster_from_mpirun(rank: int, size: int):
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
    scheduler = subprocess.Popen([sys.executable, str(Path(__file__).with_name("scheduler.py"))],
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
        logger.error(f"the MindSpore scheduler process exited with status {status}; see its messages above")
        os._exit(1)
