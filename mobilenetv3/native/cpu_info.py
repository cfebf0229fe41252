"""What this machine's CPUs are and which of them this process may use: read here and nowhere else."""
import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List


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


def allowed_cpus() -> List[int]:
    """The CPUs this process may run on, by number (its affinity mask, which taskset, mpirun bindings and
    containers set)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def available_cpus() -> int:
    """How many CPUs this process may run on (allowed_cpus)."""
    return len(allowed_cpus())


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (os.cpu_count() also counts SMT siblings,
    which share one core's vector units, so dense kernels gain little from them). Read from
    /sys/devices/system/cpu/cpu<N>/topology; the CPU count where that is missing."""
    cpus = allowed_cpus()
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return len(cpus)
    return len(cores)


ONEDNN_ISA_CAP = "ONEDNN_MAX_CPU_ISA"


def cap_onednn_isa(environ=None):
    """Cap oneDNN (inside MindSpore) at AVX2 on AVX-512 CPUs, where it picks slow reference kernels for
    depthwise convolutions. It reads the cap at MindSpore's first op, so call this before; a value the user
    exported wins."""
    environ = os.environ if environ is None else environ
    if ONEDNN_ISA_CAP not in environ and "avx512f" in cpu_flags():
        environ[ONEDNN_ISA_CAP] = "AVX2"


@contextmanager
def onednn_uncapped(environ=None):
    """Without the cap while OpenVINO's CPU plugin, which carries its own oneDNN, starts and compiles: the cap
    would keep it off AVX-512 (its VNNI int8 kernels included) and leave its bf16 convolutions with no kernel at
    all. Each oneDNN reads the cap once, at its first ISA check, so restoring it afterwards leaves the compiled
    model uncapped and MindSpore's oneDNN capped."""
    environ = os.environ if environ is None else environ
    cap = environ.pop(ONEDNN_ISA_CAP, None)
    try:
        yield
    finally:
        if cap is not None:
            environ[ONEDNN_ISA_CAP] = cap
