"""Which launcher started this process, and the process settings each launcher needs.

Launchers, told apart by the variables they export:
- mpirun (OMPI_COMM_WORLD_SIZE): OpenMPI; on CPU the ranks join MindSpore's cluster through mpi_bridge.py.
- msrun (MS_ROLE): msrun has exported everything MindSpore's `init()` needs. msrun also runs the script as
  the scheduler (MS_ROLE=MS_SCHED), whose `init()` serves the cluster and exits without returning.
- MPICH's or Intel MPI's mpiexec (PMI_SIZE) and Slurm's srun (SLURM_STEP_NUM_TASKS, which srun sets
  and an sbatch script does not): refused when they start several processes, as MindSpore's mpirun
  path needs OpenMPI and nothing here can gather the ranks otherwise.
- none of these: one process, no collectives.

Environment set here (a value the user exported wins): GLOG_v=3 on every rank but 0 and on the scheduler,
MS_SUBMODULE_LOG_v=CLUSTER_CHATTER, and MS_TOPO_TIMEOUT and MS_NODE_TIMEOUT (CLUSTER_TIMEOUTS). MindSpore's lines
that no level singles out (HARMLESS_LINES) are dropped from stderr while the cluster forms and at exit.
"""
import atexit
import contextlib
import os
import sys
import threading
from typing import Optional


# MindSpore's dynamic-cluster timeouts in seconds, set unless the user exported them. Its defaults
# (30 min to form the cluster, 30 s without heartbeat) leave a broken job hanging long after the cause.
CLUSTER_TIMEOUTS = {
    "MS_TOPO_TIMEOUT": "300",  # every rank must register with the scheduler within this window
    "MS_NODE_TIMEOUT": "20",  # a rank silent this long is declared dead and the job stops
}

# Errors only from the submodules that narrate cluster start-up ("The worker node start sync start!",
# "The group mccl_world_group has already existed", ...), on rank 0 too.
CLUSTER_CHATTER = "{DISTRIBUTED:3,DEVICE:3}"

# MindSpore 2.10's lines known to be harmless that no log level singles out, dropped while the cluster forms and
# while MindSpore's exit handler takes it down (without_harmless_lines, drop_harmless_exit_lines):
HARMLESS_LINES = (
    # rank 0 of every CPU job, joining: "[WARNING] ME(...) [collective_manager.cc:368] CreateCommunicationGroup]
    # Create collective communication group: mccl_world_group [const vector]{0, 1}, async: 0", a WARNING of
    # submodule ME, whose other warnings matter
    b"CreateCommunicationGroup] Create collective communication group: ",
    # every rank, at exit: "[INFO] DISTRIBUTED(...) [tcp_client.cc:367] Start] Event base dispatch success!" (and
    # tcp_server.cc's), the cluster's threads ending, printed whatever GLOG_v and MS_SUBMODULE_LOG_v say
    b"Start] Event base dispatch success!",
)

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


def launcher_local_rank(environ=None) -> Optional[str]:
    """This process's rank among the launcher's processes on its machine, or None outside mpirun/msrun
    (msrun numbers its workers on each machine through DEVICE_ID)."""
    environ = os.environ if environ is None else environ
    launcher = detect_launcher(environ)
    variable = {"mpirun": "OMPI_COMM_WORLD_LOCAL_RANK", "msrun": "DEVICE_ID"}.get(launcher)
    return environ.get(variable) if variable else None


def apply_log_defaults(environ=None):
    """Keep MindSpore's log to what rank 0 has to say; must run before MindSpore is imported.

    Every other rank and the scheduler log errors only (GLOG_v=3); rank 0 keeps its warnings but not the
    cluster's connection chatter. A value the user exported wins. For this process (`environ` left out), also
    registers the stop of drop_harmless_exit_lines's filter: before MindSpore is imported, so that it runs after
    MindSpore's exit handler (Python runs them last registered first).
    """
    environ = os.environ if environ is None else environ
    launcher = detect_launcher(environ)
    if launcher not in ("mpirun", "msrun"):
        return
    if environ.get("MS_ROLE") == "MS_SCHED" or launcher_rank(environ) not in (None, "0"):
        environ.setdefault("GLOG_v", "3")
    environ.setdefault("MS_SUBMODULE_LOG_v", CLUSTER_CHATTER)
    if environ is os.environ and not _exit_filter:  # this process: see drop_harmless_exit_lines
        _exit_filter["filter"] = None
        atexit.register(_stop_exit_filter)


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


# How launchers tell a process how many processes of its job run on its machine: OpenMPI's mpirun, MPICH's and
# Intel MPI's mpiexec, torchrun. LOCAL_WORLD_SIZE is also how a user says it where the launcher does not.
LOCAL_RANKS_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "LOCAL_WORLD_SIZE")


def local_ranks(environ=None) -> int:
    """Processes of this job on this machine (1 without a launcher that says).

    msrun exports the job's worker count (MS_WORKER_NUM, its --worker_num), not this machine's, and starts
    the same number on every machine (--local_worker_num). Under srun starting one msrun per machine,
    SLURM_STEP_NUM_NODES counts the machines; msrun on several machines without srun
    needs LOCAL_WORLD_SIZE exported, else every machine counts the whole job as its own. Slurm's other
    counts are not read: they count srun's tasks (there msrun processes), an sbatch script's allocation
    holds them while one process runs, and srun starting the ranks itself is refused (UNSUPPORTED_LAUNCHERS)."""
    environ = os.environ if environ is None else environ
    given = next((variable for variable in LOCAL_RANKS_VARIABLES if variable in environ), None)
    if given:
        return max(1, _process_count(environ, given))
    if detect_launcher(environ) == "msrun":
        machines = max(1, _process_count(environ, "SLURM_STEP_NUM_NODES"))
        return max(1, _process_count(environ, "MS_WORKER_NUM") // machines)
    return 1


class HarmlessLineFilter:
    """This process's standard error (file descriptor 2, where MindSpore's C++ log writes) passed on line by
    line as it comes, except lines holding one of `markers`, from start() to stop(). Its reader thread starts
    here: Python 3.12 starts no thread in an exit handler."""

    def __init__(self, markers=HARMLESS_LINES):
        self.markers, self.saved = markers, None
        self.read_end, self.write_end = os.pipe()
        self.reader = threading.Thread(target=self._pass_on, daemon=True)
        self.reader.start()

    def _pass_on(self):
        with os.fdopen(self.read_end, "rb") as lines:
            for line in lines:  # none before start() has set self.saved
                if not any(marker in line for marker in self.markers):
                    os.write(self.saved, line)

    def start(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        os.dup2(self.write_end, 2)
        os.close(self.write_end)

    def stop(self):
        """Back to the real stderr; the reader passes on what is left and ends. A process this one forked
        meanwhile (a data worker still alive) holds the pipe open: then the reader is left to end with the
        process after a second."""
        os.dup2(self.saved, 2)
        self.reader.join(timeout=1)
        if not self.reader.is_alive():
            os.close(self.saved)


@contextlib.contextmanager
def without_harmless_lines(markers=HARMLESS_LINES):
    """Run the body with HarmlessLineFilter(markers) on."""
    line_filter = HarmlessLineFilter(markers)
    line_filter.start()
    try:
        yield
    finally:
        line_filter.stop()


_exit_filter = {}  # "filter": the HarmlessLineFilter of the exit, once apply_log_defaults registered its stop


def drop_harmless_exit_lines():
    """Pass stderr through a HarmlessLineFilter while MindSpore's exit handler takes the cluster down: call once
    the cluster is joined. Only where apply_log_defaults registered the filter's stop beforehand (to run after
    MindSpore's handler), so no later line, such as a crash at exit, can go unread."""
    if "filter" in _exit_filter and _exit_filter["filter"] is None:
        _exit_filter["filter"] = HarmlessLineFilter()
        atexit.register(_exit_filter["filter"].start)


def _stop_exit_filter():
    if _exit_filter.get("filter") is not None:
        _exit_filter["filter"].stop()
