"""Data-parallel start-up on CPU under mpirun and msrun (tests/distributed_job.py is the job they run).

Each launch costs 10-30 s on 2 cores, mostly MindSpore's import and cluster set-up.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mobilenetv3.cluster import distributed, launchers
from mobilenetv3.cluster.distributed import DistInfo, all_reduce_sum, check_same_config, init_distributed
from conftest import ACTIVATED_PATH, MSRUN, ONE_JOB_AT_A_TIME

pytestmark = ONE_JOB_AT_A_TIME

REPO = Path(__file__).resolve().parents[1]
JOB = Path(__file__).with_name("distributed_job.py")
MPIRUN = shutil.which("mpirun")
needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="mpirun (OpenMPI) is not installed")
needs_msrun = pytest.mark.skipif(MSRUN is None, reason="msrun (installed with mindspore) is not on PATH")
LAUNCHER_VARIABLES = ("OMPI_", "PMIX_", "PMI_", "SLURM_", "MS_ROLE", "MS_WORKER_NUM", "MS_NODE_ID", "MS_SCHED_",
                      "RANK_ID")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(launcher, ranks, out_dir, *job_args, env=None, launcher_args=None, timeout=300):
    """Run the job under `launcher` ('mpirun', 'msrun' or 'single'); returns (exit status, output, seconds).

    `launcher_args` come after the usual ones (the last of a repeated msrun flag wins); by default
    mpirun is told --bind-to none, as the README's CPU command does."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job = [str(JOB), str(out_dir), *job_args]
    if launcher_args is None:
        launcher_args = ("--bind-to", "none") if launcher == "mpirun" else ()
    command = {
        "mpirun": [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-n", str(ranks), *launcher_args,
                   sys.executable, *job],
        "msrun": [MSRUN, f"--worker_num={ranks}", f"--local_worker_num={ranks}", f"--master_port={free_port()}",
                  f"--log_dir={out_dir / 'msrun_logs'}", "--join=True", *launcher_args, *job],
        "single": [sys.executable, *job],
    }[launcher]
    full_env = {name: value for name, value in os.environ.items() if not name.startswith(LAUNCHER_VARIABLES)}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    full_env["PATH"] = ACTIVATED_PATH  # msrun starts "python"
    full_env.update(env or {})
    start = time.monotonic()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                          timeout=timeout)
    output = done.stdout
    if launcher == "msrun":  # msrun keeps each process's output in its log directory
        output += "".join(log.read_text() for log in sorted((out_dir / "msrun_logs").glob("*.log")))
    return done.returncode, output, time.monotonic() - start


def rank_reports(out_dir, ranks):
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(ranks)]


def load_params(path):
    with np.load(path) as params:
        return {name: params[name] for name in params.files}


def assert_scheduler_gone(pid):
    """The scheduler rank 0 started must not outlive the job (a zombie has an empty command line)."""
    assert pid is not None
    cmdline = Path(f"/proc/{pid}/cmdline")
    assert not cmdline.exists() or b"cluster/scheduler.py" not in cmdline.read_bytes()


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    """The job's dense training as one process at the full batch: what every launcher must reproduce."""
    out_dir = tmp_path_factory.mktemp("single")
    status, output, _ = launch("single", 1, out_dir, "--checks", "collectives,dense")
    assert status == 0, output
    assert distributed.SINGLE_PROCESS_WARNING not in output  # run_distribute true (the default) without a launcher
    return out_dir


def check_data_parallel_run(out_dir, ranks, single_dir, output):
    """Exact collectives, and N ranks at batch B end where one process at batch N*B ends."""
    reports = rank_reports(out_dir, ranks)
    assert [(r["rank"], r["size"], r["is_distributed"], r["is_main_process"], r["init_again"]) for r in reports] == \
        [(rank, ranks, True, rank == 0, True) for rank in range(ranks)]
    weights = sum(range(1, ranks + 1))
    for report in reports:
        assert report["int_sum"] == [[weights, weights * 2**40], [3 * weights, -4 * weights]]
        assert report["float_sum"] == [float(np.array([[0.1 * r] for r in range(1, ranks + 1)]).sum(axis=0)[0]),
                                       ranks * 2.0**-30]
        assert report["bool_sum"] == [ranks, 1]
    single = load_params(single_dir / "dense_rank0.npz")
    for rank in range(ranks):
        params = load_params(out_dir / f"dense_rank{rank}.npz")
        assert params.keys() == single.keys()
        for name in single:
            np.testing.assert_array_equal(params[name], single[name], err_msg=f"rank {rank} {name}")
    # Each rank's loss is the mean over its share of the batch, so their mean is the full-batch loss; only
    # up to float32 rounding, as squaring doubles the significant bits (the parameters above stay exact).
    single_losses = rank_reports(single_dir, 1)[0]["dense_losses"]
    np.testing.assert_allclose(np.mean([r["dense_losses"] for r in reports], axis=0), single_losses, rtol=1e-6)
    assert distributed.SINGLE_PROCESS_WARNING not in output
    assert "[WARNING] DISTRIBUTED" not in output  # the cluster's connection chatter is quieted
    assert "Create collective communication group" not in output  # nor rank 0's known harmless warning
    assert "Event base dispatch success" not in output  # nor every rank's at exit


def test_single_process_needs_no_launcher(monkeypatch, capsys):
    for name in list(os.environ):
        if name.startswith(LAUNCHER_VARIABLES):
            monkeypatch.delenv(name)
    monkeypatch.setitem(distributed._state, "warned_single", False)
    assert init_distributed("CPU", run_distribute=False) == DistInfo(0, 1, False)
    assert init_distributed("CPU", run_distribute=True) == DistInfo(0, 1, False)
    assert capsys.readouterr().err == ""
    # `mpirun -n 1`: a launcher, so more processes were probably meant.
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert init_distributed("CPU", run_distribute=True) == DistInfo(0, 1, False)
    assert init_distributed("CPU", run_distribute=True) == DistInfo(0, 1, False)
    assert capsys.readouterr().err == f"warning: {distributed.SINGLE_PROCESS_WARNING}\n"
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    assert distributed.is_main_process()
    summed = all_reduce_sum(np.array([[1, 2], [3, 4]], dtype=np.int32))
    assert summed.dtype == np.int64 and summed.tolist() == [[1, 2], [3, 4]]
    summed = all_reduce_sum(np.array([0.5], dtype=np.float32))
    assert summed.dtype == np.float64 and summed.tolist() == [0.5]
    with pytest.raises(ValueError, match="complex128"):
        all_reduce_sum(np.array([1j]))
    check_same_config({"batch_size": 4})


def test_config_digests_agree_across_processes():
    # A Config carries the set of keys given as flags; its order depends on each process's hash seed, so
    # before, every rank of a job launched with flags found another rank's config different.
    code = "from mobilenetv3.cluster.distributed import _digest; print(_digest({'flags': frozenset(map(str, range(20)))}))"
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=dict(os.environ, PYTHONHASHSEED=str(seed), PYTHONPATH=str(REPO))).stdout
               for seed in range(4)}
    assert len(digests) == 1 and digests != {""}


@pytest.mark.parametrize("environ, expected", [
    ({}, {}),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"},
     {"MS_SUBMODULE_LOG_v": "{DISTRIBUTED:3,DEVICE:3}"}),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"},
     {"GLOG_v": "3", "MS_SUBMODULE_LOG_v": "{DISTRIBUTED:3,DEVICE:3}"}),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "GLOG_v": "1"},
     {"GLOG_v": "1", "MS_SUBMODULE_LOG_v": "{DISTRIBUTED:3,DEVICE:3}"}),
    ({"MS_ROLE": "MS_WORKER", "MS_NODE_ID": "0"}, {"MS_SUBMODULE_LOG_v": "{DISTRIBUTED:3,DEVICE:3}"}),
    ({"MS_ROLE": "MS_SCHED"}, {"GLOG_v": "3", "MS_SUBMODULE_LOG_v": "{DISTRIBUTED:3,DEVICE:3}"}),
])
def test_only_rank_0_keeps_mindspore_warnings(environ, expected):
    before = dict(environ)
    launchers.apply_log_defaults(environ)
    assert environ == {**before, **expected}


@needs_mpirun
def test_mpirun_two_ranks_sum_exactly_and_train_like_one_process(tmp_path, single_process_run):
    # mpirun's default binding (one core per rank, as in `mpirun -n 8` on GPUs), which must be undone.
    status, output, _ = launch("mpirun", 2, tmp_path, "--checks", "collectives,dense", launcher_args=())
    assert status == 0, output
    check_data_parallel_run(tmp_path, 2, single_process_run, output)
    reports = rank_reports(tmp_path, 2)
    assert [report["cpus"] for report in reports] == [sorted(os.sched_getaffinity(0))] * 2
    assert reports[1]["scheduler_pid"] is None
    assert_scheduler_gone(reports[0]["scheduler_pid"])


@needs_msrun
def test_msrun_two_ranks_sum_exactly_and_train_like_one_process(tmp_path, single_process_run):
    status, output, _ = launch("msrun", 2, tmp_path / "job", "--checks", "collectives,dense")
    assert status == 0, output
    check_data_parallel_run(tmp_path / "job", 2, single_process_run, output)


@needs_mpirun
@pytest.mark.slow
def test_mpirun_four_ranks_on_two_cores(tmp_path, single_process_run):
    status, output, _ = launch("mpirun", 4, tmp_path, "--checks", "collectives,dense")
    assert status == 0, output
    check_data_parallel_run(tmp_path, 4, single_process_run, output)


@needs_mpirun
@pytest.mark.slow
def test_mobilenet_ranks_end_with_identical_parameters(tmp_path):
    status, output, _ = launch("mpirun", 2, tmp_path, "--checks", "mobilenet")
    assert status == 0, output
    losses = [report["mobilenet_losses"] for report in rank_reports(tmp_path, 2)]
    assert np.isfinite(losses).all() and len(losses[0]) == 3
    assert losses[0] != losses[1]  # the ranks saw different images...
    ranks = [load_params(tmp_path / f"mobilenet_rank{rank}.npz") for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 100  # ...yet applied the same averaged gradients
    for name in ranks[0]:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)


@pytest.mark.parametrize("launcher, dying_rank", [
    pytest.param("mpirun", 0, marks=needs_mpirun),  # takes the scheduler with it
    pytest.param("mpirun", 1, marks=needs_mpirun),
    pytest.param("msrun", 1, marks=[needs_msrun, pytest.mark.slow]),  # ends after MS_NODE_TIMEOUT (20 s) without heartbeat
])
def test_a_dead_rank_ends_the_job_within_60_s(tmp_path, launcher, dying_rank):
    status, output, _ = launch(launcher, 2, tmp_path / "job", "--die", str(dying_rank))
    ended = time.time()
    assert status != 0, output
    seconds = ended - float((tmp_path / "job" / "died_at").read_text())
    assert 0 < seconds < 60, output
    if launcher == "mpirun":
        assert_scheduler_gone(rank_reports(tmp_path / "job", 1)[0]["scheduler_pid"])


@needs_mpirun
@pytest.mark.parametrize("flag, message", [
    ("--fail", "error: rank 1 alone found a mistake"),  # a UserError: its one line
    ("--crash", "RuntimeError: rank 1 alone hit a bug"),  # any other exception: its traceback
])
def test_an_error_on_one_rank_ends_the_job_within_15_s(tmp_path, flag, message):
    # Before, the rank that raised waited in MPI_Finalize for the others, which waited for it in a collective.
    status, output, _ = launch("mpirun", 2, tmp_path, flag, "1", timeout=120)
    ended = time.time()
    assert status != 0, output
    assert 0 < ended - float((tmp_path / "died_at").read_text()) < 15, output
    assert output.count(message) == 1, output
    # OpenMPI reports the abort in its help text, or, when it fails to print that (seen from a venv's Python),
    # in an error-log line of show_help: either way the abort, not a normal exit, ended the job.
    assert "MPI_ABORT was invoked on rank 1" in output or "show_help.c" in output, output
    assert_scheduler_gone(rank_reports(tmp_path, 1)[0]["scheduler_pid"])


@needs_msrun
def test_a_cluster_that_cannot_form_is_explained(tmp_path):
    # msrun told to expect 2 workers but starting 1: the cluster never forms.
    status, output, _ = launch("msrun", 2, tmp_path, launcher_args=("--local_worker_num=1", "--cluster_time_out=10"))
    assert status != 0
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    worker = next(line for line in errors if "under msrun" in line)
    assert worker.startswith("error: MindSpore could not set up communication on CPU under msrun (Failed to "
                             "initialize distributed job cluster"), output
    assert worker.endswith("); check msrun's --master_addr (reachable from every machine), --master_port (free) "
                           "and --worker_num (the number of processes started on all machines)")
    assert "following reasons" not in worker  # the heading of MindSpore's list, cut with the list
    scheduler = next(line for line in errors if "scheduler" in line)
    assert scheduler.startswith("error: the MindSpore scheduler ended the job: Failed to initialize")
    assert scheduler.endswith(". See the workers' logs")


@needs_mpirun
def test_ranks_with_different_configs_are_refused(tmp_path):
    status, output, _ = launch("mpirun", 2, tmp_path, "--config_rank", "1")
    assert status != 0
    assert output.count("error: rank 1 got different values of batch_size than rank 0; give every rank the same "
                        "--config file and flags") == 2, output


@needs_mpirun
def test_a_busy_scheduler_port_is_named(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, output, _ = launch("mpirun", 2, tmp_path, env={"MS_SCHED_PORT": str(port)})
    assert status != 0
    message = f"MS_SCHED_PORT {port}: cannot listen on 127.0.0.1:{port} for the MindSpore scheduler"
    assert f"error: {message}" in output  # rank 0
    assert f"error: rank 0 could not start the cluster: {message}" in output, output  # rank 1


@needs_mpirun
def test_a_scheduler_host_given_by_name_is_resolved(tmp_path):
    # Before, MindSpore got the name and said only "Parse ip failed".
    status, output, _ = launch("mpirun", 2, tmp_path, env={"MS_SCHED_HOST": "localhost"})
    assert status == 0, output
    assert [report["size"] for report in rank_reports(tmp_path, 2)] == [2, 2]


@needs_mpirun
def test_a_scheduler_host_of_another_machine_is_named(tmp_path):
    # 192.0.2.1 (TEST-NET-1) is no address of this machine; only bound to, never sent to. Before, the message
    # blamed MS_SCHED_PORT.
    status, output, seconds = launch("mpirun", 2, tmp_path, env={"MS_SCHED_HOST": "192.0.2.1"})
    assert status != 0
    message = f"MS_SCHED_HOST 192.0.2.1 is not an address of rank 0's machine {socket.gethostname()}, where the " \
              f"scheduler must listen; set MS_SCHED_HOST to an IP address of rank 0's machine " \
              f"{socket.gethostname()} (mpirun -x MS_SCHED_HOST=...), or unset it"
    # Each rank's line (the two ranks' output may interleave, so no line ends are assumed).
    assert f"error: {message}" in output, output  # rank 0
    assert f"error: rank 0 could not start the cluster: {message}" in output, output  # rank 1
    assert seconds < 60


@needs_mpirun
def test_mpirun_without_run_distribute_is_refused(tmp_path):
    status, output, _ = launch("mpirun", 2, tmp_path, "--run_distribute", "false")
    assert status != 0
    assert "error: mpirun launched 2 processes but run_distribute is false" in output, output


def test_mpi4py_that_cannot_see_the_ranks_is_named(tmp_path):
    # What a rank sees when mpi4py is built for another MPI: the OpenMPI variables, but a world of 1.
    status, output, _ = launch("single", 1, tmp_path, env={"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"})
    assert status == 2
    expected = "error: mpirun started 2 ranks but mpi4py sees 1: mpi4py is built against another MPI ("
    assert output.startswith(expected), output


def test_missing_mpi4py_is_named(tmp_path):
    blocker = tmp_path / "no_mpi4py" / "mpi4py"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('mpi4py is not installed')\n")
    status, output, _ = launch("single", 1, tmp_path / "job", env={
        "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0",
        "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(REPO)])})
    assert status == 2
    assert output.strip() == "error: mpirun on CPU needs mpi4py to start the MindSpore cluster: pip install mpi4py"


@pytest.mark.parametrize("environ, launcher", [
    ({"OMPI_COMM_WORLD_SIZE": "4", "PMI_RANK": "0", "PMI_SIZE": "4"}, "mpirun"),  # as some OpenMPI builds export
    ({"PMI_RANK": "1", "PMI_SIZE": "4"}, "MPICH or Intel MPI mpiexec"),
    ({"PMI_RANK": "0", "PMI_SIZE": "1"}, "single"),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2"}, "Slurm srun"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, "single"),  # an sbatch script that runs one process
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}, "single"),
    ({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "2", "OMPI_COMM_WORLD_SIZE": "8"}, "mpirun"),  # inside Slurm
])
def test_launcher_detection(environ, launcher):
    assert launchers.detect_launcher(environ) == launcher


MSRUN_WORKER = {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "8", "MS_NODE_ID": "3", "RANK_ID": "3", "RANK_SIZE": "8",
                "DEVICE_ID": "3", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8118"}  # what msrun exports


@pytest.mark.parametrize("environ, expected", [
    ({}, 1),
    ({"OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, 8),
    # ... and the MindSpore variables mpi_bridge exports to join the cluster do not count
    ({"OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_SIZE": "8", "MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "16"},
     8),
    ({"PMI_SIZE": "16", "MPI_LOCALNRANKS": "4", "MPI_LOCALRANKID": "0"}, 4),  # MPICH, Intel MPI
    ({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "LOCAL_RANK": "2"}, 8),  # torchrun
    (MSRUN_WORKER, 8),  # msrun on one machine: all its workers are here
    ({**MSRUN_WORKER, "MS_WORKER_NUM": "16", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2",
      "SLURM_NTASKS_PER_NODE": "1", "SLURM_LOCALID": "0"}, 8),  # srun starting one msrun on each of 2 machines
    ({**MSRUN_WORKER, "MS_WORKER_NUM": "16", "LOCAL_WORLD_SIZE": "8"}, 8),  # msrun on 2 machines, the count exported
    ({"MS_ROLE": "MS_SCHED", "MS_WORKER_NUM": "8"}, 8),
    # an sbatch script running one process in an allocation of 8 tasks per machine
    ({"SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8", "SLURM_TASKS_PER_NODE": "8(x2)", "SLURM_PROCID": "0"}, 1),
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "0"}, 1),
])
def test_processes_on_this_machine_as_each_launcher_says(environ, expected):
    assert launchers.local_ranks(environ) == expected


def test_harmless_exit_lines_are_dropped_while_mindspores_exit_handler_runs():
    """As a launched rank exits: apply_log_defaults (before MindSpore) registers the filter's stop, MindSpore
    registers its exit handler on import (here one that prints as MindSpore 2.10's does), the filter starts
    once the cluster is joined; a line after the handlers (a crash at exit) still comes through."""
    code = """if 1:
        import atexit, os
        from mobilenetv3.cluster import launchers
        launchers.apply_log_defaults()
        atexit.register(os.write, 2, b"after every exit handler\\n")  # registered before the filter's stop: runs after
        def mindspore_exit_handler():
            os.write(2, b"[INFO] DISTRIBUTED(1) [tcp_client.cc:367] Start] Event base dispatch success!\\n")
            os.write(2, b"[ERROR] DISTRIBUTED(1) [tcp_client.cc:99] Stop] something that matters\\n")
        atexit.register(mindspore_exit_handler)
        launchers.drop_harmless_exit_lines()
        os.write(2, b"the run's last line\\n")
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith(LAUNCHER_VARIABLES)}
    env.update(OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout == ""
    assert done.stderr == ("the run's last line\n[ERROR] DISTRIBUTED(1) [tcp_client.cc:99] Stop] something that "
                           "matters\nafter every exit handler\n")


def test_known_harmless_lines_are_dropped_and_every_other_line_passes():
    code = """if 1:
        import os, sys
        from mobilenetv3.cluster import launchers
        print("before", file=sys.stderr)
        with launchers.without_harmless_lines():
            os.write(2, b"[WARNING] ME(1) [x.cc:1] Other] a warning that matters\\n")
            os.write(2, b"[WARNING] ME(8529,7f808d06db80,python):2026-12-07-05:06:52.228.668 [mindspore/ccsrc/runtime/"
                        b"hardware_abstract/collective/collective_manager.cc:368] CreateCommunicationGroup] Create "
                        b"collective communication group: mccl_world_group [const vector]{0, 1}, async: 0\\n")
            print("from Python", file=sys.stderr, flush=True)
            os.write(2, b"no newline at the end")
        print("after", file=sys.stderr)
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0
    assert done.stderr == "before\n[WARNING] ME(1) [x.cc:1] Other] a warning that matters\nfrom Python\nno newline at " \
                          "the endafter\n"


@pytest.mark.parametrize("environ, expected", [
    ({"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1"},
     "MPICH or Intel MPI mpiexec started 4 processes (PMI_SIZE)"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2"},
     "Slurm srun started 2 processes (SLURM_STEP_NUM_TASKS)"),
])
def test_other_launchers_are_refused_in_one_line(tmp_path, environ, expected):
    """What each process of such a launch sees; before, each trained alone as rank 0 on device 0."""
    status, output, _ = launch("single", 1, tmp_path, env=environ)
    assert status == 2
    assert output.strip() == f"error: {expected}, which cannot join one job here: each would train alone as rank " \
                             "0 on the same device. Launch with OpenMPI's mpirun (mpirun -n N python " \
                             "scripts/train.py ...) or MindSpore's msrun"
    assert not (tmp_path / "rank0.json").exists()


def test_one_process_in_an_sbatch_script_runs(tmp_path):
    status, output, _ = launch("single", 1, tmp_path, "--run_distribute", "false",
                               env={"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "7"})
    assert status == 0, output
    report = rank_reports(tmp_path, 1)[0]
    assert (report["rank"], report["size"], report["is_distributed"]) == (0, 1, False)
