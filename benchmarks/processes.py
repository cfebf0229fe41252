"""The benchmark's fresh processes and the timing every measuring process shares.

start_up is what each process the benchmark spawns does first, as a script does under cli.run_cli: the
process defaults (cli.apply_process_defaults; importing the package sets nothing), before MindSpore is
imported, and the package's logging (log.configure), so that its notes and warnings read as in the
benchmark's own process. in_helper_process runs a function in a fresh Pool process (the ONNX exports),
in_child_process in a fresh process that may start processes of its own (a data pipeline and its
workers); the model workers are harness.Worker. timed_steps times back-to-back calls.
"""
import multiprocessing
import time
import traceback
from typing import List

from mobilenetv3 import log
from mobilenetv3.cli import apply_process_defaults


def start_up():
    """What a spawned process does before anything else: the scripts' process defaults and logging."""
    apply_process_defaults()
    log.configure()


def timed_steps(step, count) -> List[float]:
    """Durations of `count` back-to-back calls of `step` (which must wait for its result)."""
    durations = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
    return durations


def _started(function, args):
    """function(*args) in a process just spawned, after start_up."""
    start_up()
    return function(*args)


def in_helper_process(function, *args):
    """function(*args) in a fresh spawned process: its imports and memory stay out of this one."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_started, (function, args))


def _send_result(conn, function, args):
    try:
        conn.send(("ok", _started(function, args)))
    except ImportError as err:
        conn.send(("unavailable", str(err)))
    except Exception:
        conn.send(("error", traceback.format_exc()))


def in_child_process(function, *args):
    """function(*args) in a fresh spawned process that may start processes of its own (a Pool's may not);
    raises ImportError when it could not import what it needed."""
    context = multiprocessing.get_context("spawn")
    conn, child = context.Pipe()
    process = context.Process(target=_send_result, args=(child, function, args))
    process.start()
    child.close()
    try:
        status, payload = conn.recv()
    except EOFError:
        raise RuntimeError(f"the data pipeline benchmark process died (exit code {process.exitcode})") from None
    finally:
        process.join()
    if status == "unavailable":
        raise ImportError(payload)
    if status == "error":
        raise RuntimeError(f"the data pipeline benchmark process failed:\n{payload}")
    return payload
