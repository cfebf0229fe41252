"""Process-wide MindSpore settings: device, execution mode, seed, CPU threads, and the CPU speed defaults.

oneDNN picks slow reference kernels for depthwise convolutions on AVX-512 CPUs; capping it at AVX2
is 10x faster for them. The cap only works if set before the first MindSpore op, so the package sets
it on import (a value the user already exported wins).
"""
import os
from pathlib import Path

from . import gpu_env
from .errors import UserError, mindspore_cause


def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and "avx512f" in line for line in cpuinfo)
    except OSError:
        return False


def apply_cpu_defaults():
    if "ONEDNN_MAX_CPU_ISA" not in os.environ and _cpu_has_avx512():
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"


_selected_device = {}


def select_device(device_target: str, device_id: int = 0):
    """`ms.set_device(device_target, device_id)` once per process. Communication init gives rank r device r,
    after which a second plain set_device asks for device 0 and fails on every rank but 0.

    A device MindSpore cannot start raises UserError naming the cause: for a GPU the first problem
    gpu_env finds (MindSpore's own message then often lists only the Ascend libraries it tried), else
    MindSpore's message with its detail lines.
    """
    import mindspore as ms
    if device_id and device_target == "CPU":
        raise UserError(f"device_id {device_id} chooses a GPU or Ascend device; leave it at 0 with device_target CPU")
    if "target" not in _selected_device:
        visible = gpu_env.visible_gpus() if device_target == "GPU" else None
        if visible is not None and device_id >= visible:
            raise UserError(f"device_id {device_id}: this process sees {visible} GPU(s) (CUDA_VISIBLE_DEVICES="
                            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}), numbered from 0")
        try:
            ms.set_device(device_target, device_id)
        except RuntimeError as err:
            cause = (gpu_env.start_up_problem() if device_target == "GPU" else None) or mindspore_cause(err)
            check = "python scripts/check_gpu.py lists what it needs; " if device_target == "GPU" else ""
            raise UserError(f"device_target {device_target}: MindSpore cannot start on it here: {cause}. {check}"
                            "--device_target CPU trains on the CPU") from None
        _selected_device.update(target=device_target, device_id=device_id)
    elif (_selected_device["target"], _selected_device["device_id"]) != (device_target, device_id):
        raise ValueError(f"device {_selected_device['target']} {_selected_device['device_id']} is already selected; "
                         f"cannot switch to {device_target} {device_id}")


def setup(device_target: str, seed: int = 1, graph_mode: bool = True, device_id: int = 0):
    """Select the device and execution mode and seed every random generator MindSpore uses."""
    import mindspore as ms
    select_device(device_target, device_id)
    ms.set_context(mode=ms.GRAPH_MODE if graph_mode else ms.PYNATIVE_MODE)
    ms.set_seed(seed)


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (os.cpu_count() also counts SMT siblings,
    which share one core's vector units, so dense kernels gain little from them). Read from
    /sys/devices/system/cpu/cpu<N>/topology; the CPU count where that is missing."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return len(cpus)
    return len(cores)


def cpu_threads(requested: int) -> int:
    """The thread count for `--threads requested`: itself, or one per physical core for 0."""
    if requested < 0:
        raise ValueError(f"threads must be >= 0 (0: one per physical core), got {requested}")
    return requested or physical_cores()


_cpu_threads = {}


def set_cpu_threads(requested: int) -> int:
    """Size MindSpore's CPU kernel thread pool (cpu_threads(requested)); returns the number set.

    MindSpore takes this setting once per process, so a later call must ask for the same number.
    """
    import mindspore as ms
    threads = cpu_threads(requested)
    if "threads" not in _cpu_threads:
        ms.device_context.cpu.op_tuning.threads_num(threads)
        _cpu_threads["threads"] = threads
        from . import cpu_kernels
        cpu_kernels.set_threads(threads)  # the kernel library's own pool follows MindSpore's setting
    elif _cpu_threads["threads"] != threads:
        raise ValueError(f"MindSpore's CPU threads are already set to {_cpu_threads['threads']} in this process; "
                         f"cannot change them to {threads}")
    return threads
