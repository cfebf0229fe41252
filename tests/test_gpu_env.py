"""GPU readiness checked without a GPU: scripts/check_gpu.py, the cause named when GPU start-up fails,
MindSpore's error text kept whole. The CUDA toolkit is stood in for by a script that answers like
nvcc --version (all MindSpore reads of it)."""
import ctypes
import os
import shutil
import subprocess
import sys

import pytest

from mobilenetv3.cluster import gpu_env
from mobilenetv3.errors import mindspore_cause
from conftest import ONE_JOB_AT_A_TIME, REPO, run_script


def _has_driver():
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


no_gpu_here = pytest.mark.skipif(_has_driver(), reason="this machine has an NVIDIA driver")
NO_DRIVER = "NVIDIA driver: libcuda.so.1 not found: no NVIDIA driver is installed (no GPU here?)"


def fake_cuda(tmp_path, release):
    nvcc = tmp_path / f"cuda-{release}" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text(f'#!/bin/sh\necho "Cuda compilation tools, release {release}, V{release}.100"\n')
    nvcc.chmod(0o755)
    return str(nvcc.parent.parent)


@pytest.mark.parametrize("cuda, plugin", [((11, 1), (11, 1)), ((11, 4), (11, 1)), ((11, 6), (11, 6)),
                                          ((11, 8), (11, 6)), ((11, 0), None), ((12, 2), None), ((10, 1), None)])
def test_plugin_choice_follows_mindspore(cuda, plugin):
    """As MindSpore 2.10's loader chose, asked with each of these nvcc releases (its INFO log)."""
    assert gpu_env.plugin_for(cuda, {(11, 1): "a", (11, 6): "b"}) == plugin


def test_the_wheel_ships_cuda_11_plugins_and_nccl():
    assert sorted(gpu_env.gpu_plugins(gpu_env.mindspore_dir())) == [(11, 1), (11, 6)]
    assert gpu_env.nccl(gpu_env.mindspore_dir()) == gpu_env.Check("NCCL", True, "2.16.5, bundled with MindSpore")


@no_gpu_here
def test_check_gpu_without_a_gpu_says_why_and_fails(tmp_path):
    env = {"CUDA_HOME": ""}
    result = run_script("check_gpu", env=env)
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stderr
    assert lines[0] == "MindSpore 2.10.0: GPU plugins for CUDA 11.1, 11.6"
    assert lines[1] == f"[FAIL] {NO_DRIVER}"
    assert lines[2].startswith("[FAIL] CUDA_HOME: not set: MindSpore picks its GPU plugin by $CUDA_HOME/bin/nvcc "
                               "--version and needs CUDA 11.1 or a later 11.x")
    assert lines[3] == "[  ok] NCCL: 2.16.5, bundled with MindSpore"
    assert lines[4].startswith("[  ok] OpenMPI (mpirun only): libmpi.so.40 at ") or \
        lines[4].startswith("[FAIL] OpenMPI (mpirun only): libmpi.so.40 not found")
    assert lines[5:] == [f"GPU training cannot start here: {NO_DRIVER}"]

    result = run_script("check_gpu", env={"CUDA_HOME": fake_cuda(tmp_path, "12.2")})
    assert f"[FAIL] CUDA_HOME: CUDA 12.2 (from {tmp_path}/cuda-12.2/bin/nvcc), but this MindSpore needs CUDA 11.1 " \
           "or a later 11.x (it has GPU plugins for 11.1, 11.6); point CUDA_HOME at such a toolkit" in result.stdout


def test_missing_cuda_libraries_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_env, "driver", lambda: gpu_env.Check("NVIDIA driver", True, "stand-in"))
    problem = gpu_env.start_up_problem({"CUDA_HOME": fake_cuda(tmp_path, "11.8")})
    assert problem.startswith("CUDA libraries: libmindspore_gpu.so.11.6 cannot find libcublas.so.11, ")
    for library in ("libcudart.so.11.0", "libcudnn.so.8", "libnvrtc.so.11.2"):
        assert library in problem
    assert problem.endswith(": install CUDA 11's libraries and cuDNN 8 and add their lib directories to "
                            "LD_LIBRARY_PATH")
    assert "libcuda.so.1" not in problem  # the driver has its own line


def test_check_gpu_does_not_import_mindspore():
    code = "import sys; from mobilenetv3.cluster import gpu_env; gpu_env.checks(); print('mindspore' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "False", result.stderr


@no_gpu_here
def test_the_default_gpu_of_one_process_without_one_trains_on_the_cpu_and_says_so_first(tmp_path, image_folder):
    """Before: MindSpore's libcuda/libcudnn errors and a traceback, ~40 lines, for a job the CPU can do."""
    run = tmp_path / "run"
    result = run_script("train", "--data_url", image_folder, "--num_classes", "3", "--resize", "32", "--batch_size",
                        "8", "--epoch_size", "1", "--ckpt_save_dir", run, env={"CUDA_HOME": ""})
    assert result.returncode == 0, result.stderr
    problem = gpu_env.start_up_problem(dict(os.environ, CUDA_HOME=""))
    note = f"note: no usable GPU here ({problem}): running on the CPU; --device_target CPU skips this check"
    assert result.stderr.splitlines()[0] == note
    assert [line for line in result.stderr.splitlines() if "GPU" in line or "cuda" in line.lower()] == [note]
    assert (run / "train.log").read_text().splitlines()[0] == note
    assert "# device: CPU" in (run / "run.yaml").read_text()


def gpu_recipe(tmp_path):
    recipe = tmp_path / "gpu.yaml"
    recipe.write_text("device_target: GPU\nnum_classes: 3\n")
    return recipe


@no_gpu_here
@pytest.mark.parametrize("named", ["config file", "launcher"])
def test_a_gpu_a_config_file_names_or_a_launched_job_defaults_to_stops_when_there_is_none(monkeypatch, tmp_path,
                                                                                          named):
    from mobilenetv3.cli import TRAIN_KEYS, parse_args
    from mobilenetv3.errors import MachineError
    monkeypatch.setenv("CUDA_HOME", "")
    if named == "config file":
        argv, source, where = ["--config", str(gpu_recipe(tmp_path))], f"{tmp_path}/gpu.yaml sets device_target GPU", "here"
    else:
        monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
        argv, source, where = [], "device_target GPU (the default) under mpirun", f"on {os.uname().nodename}"
    with pytest.raises(MachineError) as raised:
        parse_args(argv, keys=TRAIN_KEYS)
    assert str(raised.value) == (f"{source}: MindSpore cannot start on a GPU {where}: {NO_DRIVER}. python "
                                 "scripts/check_gpu.py lists what it needs; --device_target CPU runs on the CPU")


@no_gpu_here
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun (OpenMPI) is not installed")
@ONE_JOB_AT_A_TIME
def test_a_gpu_recipe_under_mpirun_without_a_gpu_stops_every_rank_in_one_line(tmp_path, image_folder):
    """Before: eight ranks trained on the CPU with exit status 0, and only rank 0 said why."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OMPI_", "PMIX_"))}
    command = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", "-x", "CUDA_HOME=", sys.executable,
               str(REPO / "scripts" / "train.py"), "--config", str(gpu_recipe(tmp_path)), "--data_url",
               str(image_folder), "--ckpt_save_dir", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=dict(env, CUDA_HOME=""))
    assert result.returncode != 0, result.stderr
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path}/gpu.yaml sets device_target GPU: MindSpore cannot start on a GPU on "
                      f"{os.uname().nodename}: {NO_DRIVER}. python scripts/check_gpu.py lists what it needs; "
                      "--device_target CPU runs on the CPU"], result.stdout + result.stderr
    assert not (tmp_path / "run").exists()  # stopped before any work


@no_gpu_here
def test_an_explicit_gpu_without_one_is_one_line_naming_the_cause_and_the_fix(tmp_path):
    result = run_script("train", "--device_target", "GPU", "--data_url", tmp_path / "no_data", env={"CUDA_HOME": ""})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --device_target GPU: MindSpore cannot start on a GPU here: {NO_DRIVER}. python scripts/check_gpu.py "
        "lists what it needs; --device_target CPU runs on the CPU")


@pytest.mark.parametrize("argv, problem, device", [([], "NVIDIA driver: missing", "CPU"), ([], None, "GPU"),
                                                   (["--device_target", "GPU"], None, "GPU"),
                                                   (["--device_target", "CPU"], "NVIDIA driver: missing", "CPU")])
def test_the_device_is_chosen_from_the_flag_and_what_the_machine_has(monkeypatch, capsys, argv, problem, device):
    from mobilenetv3.cli import parse_args
    from mobilenetv3.cli import TRAIN_KEYS
    monkeypatch.setattr(gpu_env, "start_up_problem", lambda environ=None: problem)
    assert parse_args(argv, keys=TRAIN_KEYS).device_target == device
    said = capsys.readouterr().err.splitlines()
    assert said == (["note: no usable GPU here (NVIDIA driver: missing): running on the CPU; --device_target CPU "
                     "skips this check"] if device == "CPU" and not argv else [])
    if problem:
        from mobilenetv3.errors import UserError
        with pytest.raises(UserError, match=r"^--device_target GPU: MindSpore cannot start on a GPU here: NVIDIA "
                                            r"driver: missing\. python scripts/check_gpu.py"):
            parse_args(["--device_target", "GPU"], keys=TRAIN_KEYS)


DEVICE_LOAD_ERROR = """Unsupported device target GPU. This process only supports one of the ['CPU']. Please check \
whether the GPU environment is installed and configured correctly. For details, please refer to "Device load error \
message".

----------------------------------------------------
- Device load error message:
----------------------------------------------------
Load dynamic library: libmindspore_gpu.so.11.6 failed. libcublas.so.11: cannot open shared object file: No such \
file or directory

----------------------------------------------------
- C++ Call Stack: (For framework developers)
----------------------------------------------------
mindspore/core/utils/ms_context.cc:291 SetDeviceTargetFromInner
"""


def test_mindspore_cause_keeps_the_detail_lines_not_the_call_stack():
    """MindSpore 2.10's message for CUDA_HOME at an 11.6 toolkit without its libraries (abridged)."""
    assert mindspore_cause(RuntimeError(DEVICE_LOAD_ERROR)) == (
        "Unsupported device target GPU. This process only supports one of the ['CPU']. Please check whether the GPU "
        "environment is installed and configured correctly. For details, please refer to \"Device load error "
        "message\". Load dynamic library: libmindspore_gpu.so.11.6 failed. libcublas.so.11: cannot open shared "
        "object file: No such file or directory")
    listing = "Failed to initialize the cluster. Possible causes are as follows:\n1. a\n2. b"
    assert mindspore_cause(RuntimeError(listing)) == "Failed to initialize the cluster."
    assert mindspore_cause(RuntimeError("")) == "RuntimeError"


def test_device_id_flag_is_parsed_and_checked():
    from mobilenetv3.cli import parse_args
    from mobilenetv3.cli import EVAL_KEYS, INFER_KEYS, TRAIN_KEYS
    from mobilenetv3.config import ConfigError
    assert parse_args(["--device_id", "3"], keys=TRAIN_KEYS).device_id == 3
    assert parse_args([], keys=TRAIN_KEYS).device_id == 0
    assert "device_id" in EVAL_KEYS and "device_id" in INFER_KEYS
    with pytest.raises(ConfigError, match=r"^device_id \(from --device_id\): must be >= 0, got '-1'$"):
        parse_args(["--device_id", "-1"], keys=TRAIN_KEYS)
    with pytest.raises(ConfigError, match=r"^device_id \(from --device_id\): expected an integer, got 'gpu1'$"):
        parse_args(["--device_id", "gpu1"], keys=TRAIN_KEYS)


def test_device_id_is_checked_against_the_device(monkeypatch):
    from mobilenetv3.cluster import device
    from mobilenetv3.errors import UserError
    monkeypatch.setattr(device, "_selected_device", {})
    with pytest.raises(UserError, match=r"^device_id 1 chooses a GPU or Ascend device; leave it at 0 with "
                                        r"device_target CPU$"):
        device.select_device("CPU", 1)
    monkeypatch.setattr(gpu_env, "visible_gpus", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(UserError, match=r"^device_id 2: this process sees 2 GPU\(s\) \(CUDA_VISIBLE_DEVICES=4,5\), "
                                        r"numbered from 0$"):
        device.select_device("GPU", 2)
    assert device._selected_device == {}  # nothing was selected


@pytest.mark.parametrize("environ, launcher", [({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}, "mpirun"),
                                               ({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "2"}, "msrun")])
def test_device_id_is_refused_under_a_launcher(monkeypatch, environ, launcher):
    from mobilenetv3.cluster.distributed import init_distributed
    from mobilenetv3.errors import UserError
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=rf"^device_id 1 is for a single process: under {launcher} rank r of each "
                                        r"machine takes its r-th visible device; choose the GPUs with "
                                        r"CUDA_VISIBLE_DEVICES"):
        init_distributed("GPU", True, device_id=1)


def test_a_script_rejects_a_bad_device_id_in_one_line():
    result = run_script("infer", "--device_id", "-2", "--data_url", ".")
    assert result.returncode == 2 and result.stderr.strip() == \
        "error: device_id (from --device_id): must be >= 0, got '-2'"


@pytest.mark.parametrize("device, launcher, cause, hint", [
    ("GPU", "mpirun", "Load dynamic library libmpi_collective.so failed. libmpi.so.40: cannot open shared object file",
     "that mpirun is OpenMPI 4 (MindSpore loads libmpi.so.40) and mpi4py was built with that MPI"),
    ("GPU", "mpirun", "NCCL init failed: ncclInvalidUsage (device 3 of 2)",
     "that each rank sees its device (CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES: at least as many devices as "
     "ranks on each machine); python scripts/check_gpu.py checks the GPU libraries"),
    ("CPU", "msrun", "Failed to initialize distributed job cluster.",
     "msrun's --master_addr (reachable from every machine), --master_port (free) and --worker_num (the number of "
     "processes started on all machines)"),
])
def test_communication_hint_follows_the_cause(device, launcher, cause, hint):
    """Before, mpirun got the OpenMPI-and-devices hint whatever the cause."""
    from mobilenetv3.cluster.distributed import _communication_hint
    assert _communication_hint(device, launcher, cause) == hint
