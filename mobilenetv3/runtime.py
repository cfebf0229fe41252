"""Process-wide MindSpore settings: device, execution mode, seed, and the CPU speed defaults.

oneDNN picks slow reference kernels for depthwise convolutions on AVX-512 CPUs; capping it at AVX2
is 10x faster for them. The cap only works if set before the first MindSpore op, so the package sets
it on import (a value the user already exported wins).
"""
import os


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


def select_device(device_target: str):
    """`ms.set_device(device_target)` once per process. Communication init gives rank r device r, after
    which a second plain set_device asks for device 0 and fails on every rank but 0."""
    import mindspore as ms
    if "target" not in _selected_device:
        ms.set_device(device_target)
        _selected_device["target"] = device_target
    elif _selected_device["target"] != device_target:
        raise ValueError(f"device {_selected_device['target']} is already selected; cannot switch to {device_target}")


def setup(device_target: str, seed: int = 1, graph_mode: bool = True):
    """Select the device and execution mode and seed every random generator MindSpore uses."""
    import mindspore as ms
    select_device(device_target)
    ms.set_context(mode=ms.GRAPH_MODE if graph_mode else ms.PYNATIVE_MODE)
    ms.set_seed(seed)
