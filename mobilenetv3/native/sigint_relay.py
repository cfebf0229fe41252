"""A Ctrl-C kept a Ctrl-C while MindSpore runs a graph (csrc/sigint_relay.cc).

MindSpore 2.10's runtime answers a SIGINT during a graph run by sending its own process SIGTERM, so a
Ctrl-C would end training as a `kill` does (exit 143) and end eval or infer with no word. install() puts a
SIGTERM handler in front that hands a SIGTERM the process sent itself to Python as SIGINT, and passes any
other on. Python's `signal.signal(SIGTERM, ...)` replaces it: install again after each such call. Without a
C++ compiler install() says why once and returns False; Ctrl-C then reads as SIGTERM, as before.
"""
import logging

from . import build

SOURCE = build.CSRC / "sigint_relay.cc"
LIBRARY_NAME = "libmobilenetv3_sigint_relay.so"
FLAGS = ["-Wall", "-O2", "-std=c++17", "-shared", "-fPIC", "-Wl,--no-undefined"]

logger = logging.getLogger(__name__)
_state = {}  # "library": the loaded library or None once decided in this process


def install() -> bool:
    """Put the relay in front of the current SIGTERM handler; True when it is there. Call it from the
    main thread, with SIGINT handled by Python (its default)."""
    if "library" not in _state:
        try:
            _state["library"] = build.load(SOURCE, FLAGS, LIBRARY_NAME)
        except build.Unavailable as why:
            _state["library"] = None
            logger.warning(f"Ctrl-C during a MindSpore graph run will read as SIGTERM: {why}")
    return _state["library"] is not None and _state["library"].InstallSigintRelay() == 0
