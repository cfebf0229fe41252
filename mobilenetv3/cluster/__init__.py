"""Processes and devices: which launcher started this process (launchers.py), joining the ranks into one
data-parallel job and the collectives the package needs (distributed.py), mpirun on CPU through MindSpore's
dynamic cluster (mpi_bridge.py, scheduler.py), the device (device.py) and what a GPU needs (gpu_env.py).

Knows no model and no data; imports MindSpore, mpi4py (under mpirun on CPU) and native/ (CPU facts, the
kernels' threads).
"""
