"""What runs outside Python: facts about this machine's CPUs (cpu_info.py), the C++ sources in csrc/ built on
first use (build.py), the AVX2 kernels as MindSpore custom ops (cpu_kernels.py) and the JPEG crop decoder
(jpeg_crop.py).

Imports nothing else of the package: knows no model, no data set and no cluster.
"""
