"""What MindSpore's GPU backend needs from the machine, checked without starting it: the lines of
scripts/check_gpu.py, and the cause named when GPU start-up fails.

How MindSpore 2.10 starts on a GPU (read from its loader and measured with a stand-in nvcc): it runs
`$CUDA_HOME/bin/nvcc --version` and loads the plugin lib/plugin/libmindspore_gpu.so.<M.m> with the
highest version of the same major at or below that CUDA version (the 2.10.0 wheel ships 11.1 and 11.6:
CUDA 11.1-11.5 gets 11.1, 11.6 and later 11.x get 11.6, CUDA 12 or 10 none). Without CUDA_HOME it does
not try at all. The plugin links CUDA 11's libraries (libcudart.so.11.0, libcublas.so.11, ...,
libnvrtc.so.11.x), cuDNN 8 (libcudnn.so.8) and the driver's libcuda.so.1, found through
LD_LIBRARY_PATH, the ld.so cache or /usr/local/cuda/lib64 (its RPATH); NCCL comes with the plugin.
Launching with mpirun loads OpenMPI's libmpi.so.40 through lib/libmpi_collective.so.
"""
import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import List, NamedTuple, Optional


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str


OPENMPI = "OpenMPI (mpirun only)"  # the one check a single process or msrun can do without


def mindspore_dir() -> Path:
    """The installed mindspore package, found without importing it (the import is slow and logs)."""
    spec = importlib.util.find_spec("mindspore")
    return Path(list(spec.submodule_search_locations)[0])


def _version(text: str):
    return tuple(int(part) for part in text.split("."))


def gpu_plugins(ms_dir: Path) -> dict:
    """{(major, minor): path} of the GPU plugins the wheel ships."""
    plugins = {}
    for path in (ms_dir / "lib" / "plugin").glob("libmindspore_gpu.so.*"):
        suffix = path.name[len("libmindspore_gpu.so."):]
        if re.fullmatch(r"\d+\.\d+", suffix):
            plugins[_version(suffix)] = path
    return plugins


def plugin_for(cuda, plugins) -> Optional[tuple]:
    """MindSpore's choice: the highest plugin version of `cuda`'s major version at or below it."""
    fitting = [v for v in plugins if v[0] == cuda[0] and v <= tuple(cuda)]
    return max(fitting) if fitting else None


def nvcc_version(cuda_home: str):
    """(major, minor) from `$cuda_home/bin/nvcc --version`, or a string saying what went wrong."""
    nvcc = Path(cuda_home) / "bin" / "nvcc"
    if not nvcc.is_file():
        return f"CUDA_HOME={cuda_home} has no bin/nvcc"
    try:
        output = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{nvcc} --version failed ({err})"
    match = re.search(r"release (\d+)\.(\d+)", output)
    return (int(match[1]), int(match[2])) if match else f"{nvcc} --version does not say its release"


def linked_libraries(path: Path) -> dict:
    """{soname: resolved path or None} of the libraries `path` needs, as ldd resolves them."""
    try:
        output = subprocess.run(["ldd", str(path)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    libraries = {}
    for line in output.splitlines():
        name, arrow, target = line.strip().partition(" => ")
        if arrow:
            libraries[name] = None if target.startswith("not found") else target.split(" (")[0]
    return libraries


def visible_gpus() -> Optional[int]:
    """How many GPUs the driver shows this process (after CUDA_VISIBLE_DEVICES); None without a driver."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def driver() -> Check:
    """The NVIDIA driver's libcuda.so.1: the CUDA version it supports and the GPUs it shows."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return Check("NVIDIA driver", False, "libcuda.so.1 not found: no NVIDIA driver is installed (no GPU here?)")
    version = ctypes.c_int(0)
    cuda.cuDriverGetVersion(ctypes.byref(version))
    supports = f"supports CUDA up to {version.value // 1000}.{version.value % 1000 // 10}"
    count = visible_gpus()
    if not count:
        return Check("NVIDIA driver", False, f"{supports} but shows no GPU (CUDA_VISIBLE_DEVICES="
                                             f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")
    return Check("NVIDIA driver", True, f"{supports}, {count} GPU(s) visible")


def _cudnn_version(path: str) -> str:
    try:
        number = ctypes.CDLL(path).cudnnGetVersion()
    except (OSError, AttributeError):
        return "version unknown"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"


def cuda_libraries(ms_dir: Path, environ=None) -> List[Check]:
    """CUDA_HOME, the plugin MindSpore would load, and the CUDA and cuDNN libraries it links."""
    environ = os.environ if environ is None else environ
    plugins = gpu_plugins(ms_dir)
    shipped = ", ".join(".".join(map(str, v)) for v in sorted(plugins))
    needed = " or ".join(f"CUDA {major}.{min(v[1] for v in plugins if v[0] == major)} or a later {major}.x"
                         for major in sorted({v[0] for v in plugins}))
    if not plugins:
        return [Check("GPU plugin", False, f"this MindSpore has no GPU plugin in {ms_dir / 'lib' / 'plugin'}")]
    cuda_home = environ.get("CUDA_HOME")
    if not cuda_home:
        return [Check("CUDA_HOME", False, "not set: MindSpore picks its GPU plugin by $CUDA_HOME/bin/nvcc --version "
                                          f"and needs {needed}; e.g. export CUDA_HOME=/usr/local/cuda-11.6")]
    cuda = nvcc_version(cuda_home)
    if isinstance(cuda, str):
        return [Check("CUDA_HOME", False, cuda)]
    chosen = plugin_for(cuda, plugins)
    found = f"CUDA {cuda[0]}.{cuda[1]} (from {cuda_home}/bin/nvcc)"
    if chosen is None:
        return [Check("CUDA_HOME", False, f"{found}, but this MindSpore needs {needed} (it has GPU plugins for "
                                          f"{shipped}); point CUDA_HOME at such a toolkit")]
    plugin = plugins[chosen]
    checks = [Check("CUDA_HOME", True, f"{found}: plugin {plugin.name}")]
    libraries = linked_libraries(plugin)
    missing = [name for name, target in libraries.items() if target is None and name != "libcuda.so.1"]
    cudnn = libraries.get("libcudnn.so.8")
    if missing:
        checks.append(Check("CUDA libraries", False, f"{plugin.name} cannot find {', '.join(missing)}: install "
                                                      "CUDA 11's libraries and cuDNN 8 and add their lib directories "
                                                      "to LD_LIBRARY_PATH"))
    else:
        checks.append(Check("CUDA libraries", True, f"all found; cuDNN {_cudnn_version(cudnn)} at {cudnn}"))
    return checks


def nccl(ms_dir: Path) -> Check:
    libraries = sorted((ms_dir / "lib" / "plugin").glob("gpu*/libnccl.so.2"))
    if not libraries:
        return Check("NCCL", False, "libnccl.so.2 is missing from MindSpore's lib/plugin/gpu* folders")
    match = re.search(rb"NCCL version (\d+\.\d+\.\d+)", libraries[-1].read_bytes())
    return Check("NCCL", True, f"{match[1].decode() if match else 'version unknown'}, bundled with MindSpore")


def openmpi(ms_dir: Path) -> Check:
    """OpenMPI for `mpirun` launches (not needed by a single process or msrun)."""
    target = linked_libraries(ms_dir / "lib" / "libmpi_collective.so").get("libmpi.so.40")
    if target is None:
        return Check(OPENMPI, False, "libmpi.so.40 not found: install OpenMPI 4 (e.g. apt-get install "
                                     "libopenmpi-dev openmpi-bin) or launch with msrun")
    mpirun = shutil.which("mpirun")
    version = "no mpirun on PATH"
    if mpirun:
        try:
            version = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                                     timeout=30).stdout.splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            version = f"{mpirun} --version failed"
    return Check(OPENMPI, True, f"libmpi.so.40 at {target}; {version}")


def checks(environ=None) -> List[Check]:
    """Everything a GPU run needs, in the order to fix it."""
    ms_dir = mindspore_dir()
    return [driver(), *cuda_libraries(ms_dir, environ), nccl(ms_dir), openmpi(ms_dir)]


def first_problem(results: List[Check]) -> Optional[str]:
    """The first failed check that keeps a single-process GPU run from starting, or None."""
    bad = next((c for c in results if not c.ok and c.name != OPENMPI), None)
    return f"{bad.name}: {bad.detail}" if bad else None


def start_up_problem(environ=None) -> Optional[str]:
    return first_problem(checks(environ))
