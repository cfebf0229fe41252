"""The process's MindSpore device: which one, selected once, its execution mode and seed, and its CPU threads."""
import os
import socket
from typing import Optional, Tuple

from . import gpu_env
from ..errors import MachineError, UserError, mindspore_cause
from ..native.cpu_info import physical_cores


def usable_device_target(requested: str, named_by: Optional[str], launcher: str = "single") -> Tuple[str, Optional[str]]:
    """(device, why it is not `requested`): `requested`, unless it is GPU and MindSpore's GPU backend cannot
    start here (gpu_env, checked without starting it, so MindSpore's own start-up errors never print).

    Then only the built-in default of a single process becomes the CPU. A GPU that a flag or a config file
    names (`named_by`: "--device_target" or the file), or that any launcher's job (mpirun, msrun) defaults to,
    is a MachineError naming the cause: ranks quietly training on CPUs instead of GPUs cost days."""
    if requested != "GPU":
        return requested, None
    problem = gpu_env.start_up_problem()
    if problem is None:
        return requested, None
    if named_by is None and launcher == "single":
        return "CPU", problem
    if named_by is None:
        source, where = f"device_target GPU (the default) under {launcher}", f"on {socket.gethostname()}"
    else:
        source = "--device_target GPU" if named_by == "--device_target" else f"{named_by} sets device_target GPU"
        where = "here" if launcher == "single" else f"on {socket.gethostname()}"
    raise MachineError(f"{source}: MindSpore cannot start on a GPU {where}: {problem}. python scripts/check_gpu.py "
                       "lists what it needs; --device_target CPU runs on the CPU")


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
        from ..native import cpu_kernels
        cpu_kernels.set_threads(threads)  # the kernel library's own pool follows MindSpore's setting
    elif _cpu_threads["threads"] != threads:
        raise ValueError(f"MindSpore's CPU threads are already set to {_cpu_threads['threads']} in this process; "
                         f"cannot change them to {threads}")
    return threads
