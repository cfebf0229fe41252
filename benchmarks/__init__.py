"""Tools beside the library, not installed with it: the speed benchmark (benchmark.py, harness.py) and the
PyTorch twin of our network (torch_reference.py) that the benchmark and the conversion tests use."""
