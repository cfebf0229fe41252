"""Tools beside the library, not installed with it: the speed benchmark (benchmark.py, the CLI; harness.py,
the settings, worker processes and run; runners.py, the comparisons' sides and exports; pipelines.py, the
data-pipeline comparison; report.py, the report's rows, table and JSON; processes.py, the fresh processes)
and the PyTorch twin of our network (torch_reference.py) that the benchmark and the conversion tests use."""
