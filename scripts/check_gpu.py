"""Check that this machine can train on GPUs with the installed MindSpore, before any data is read.

  python scripts/check_gpu.py

One line per requirement (NVIDIA driver and GPUs, CUDA_HOME and the CUDA version it selects, the CUDA
and cuDNN libraries MindSpore's GPU plugin links, NCCL, OpenMPI for mpirun), then a verdict. Exits 0
when a GPU run can start, 1 (with the first reason) when it cannot. MindSpore is not imported.
"""
import argparse
import importlib.metadata
import sys

from mobilenetv3.cluster import gpu_env


def main(argv=None):
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    plugins = gpu_env.gpu_plugins(gpu_env.mindspore_dir())
    print(f"MindSpore {importlib.metadata.version('mindspore')}: GPU plugins for CUDA "
          f"{', '.join('.'.join(map(str, v)) for v in sorted(plugins)) or 'none'}")
    results = gpu_env.checks()
    for check in results:
        print(f"[{'ok' if check.ok else 'FAIL':>4}] {check.name}: {check.detail}")
    problem = gpu_env.first_problem(results)
    if problem:
        print(f"GPU training cannot start here: {problem}")
        return 1
    mpirun_ok = all(check.ok for check in results if check.name == gpu_env.OPENMPI)
    print("GPU training can start here" + ("" if mpirun_ok else " (as one process or under msrun; not mpirun)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
