"""What this machine's CPUs are and which of them this process may use: read here and nowhere else."""
import os
import platform
from pathlib import Path
from typing import Dict


def _cpuinfo_first_entry() -> Dict[str, str]:
    """The first processor's "key: value" lines of /proc/cpuinfo ({} where it is missing)."""
    entry = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                if entry:
                    break
                continue
            key, _, value = line.partition(":")
            entry[key.strip()] = value.strip()
    except OSError:
        pass
    return entry


def cpu_flags() -> set:
    """The instruction-set flags of /proc/cpuinfo (avx2, fma, avx512f, ...); empty where it is missing."""
    return set(_cpuinfo_first_entry().get("flags", "").split())


def cpu_model() -> str:
    return _cpuinfo_first_entry().get("model name") or platform.processor() or "unknown"


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which taskset, mpirun bindings and containers set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
