"""Stopping training cleanly on SIGINT, SIGTERM or SIGUSR1: the signal is recorded, the ranks agree at the
next step (or sink) boundary to stop there, rank 0 writes a checkpoint, and every rank exits 128 + the
signal's number.

What sends them: Ctrl-C (SIGINT); SLURM, Kubernetes and spot-instance reclaims (SIGTERM, then SIGKILL after
a grace period); OpenMPI's mpirun passes SIGTERM and SIGINT on to every rank (then SIGKILL after
odls_base_sigkill_timeout seconds) and forwards SIGUSR1 alone, which SLURM's --signal sends ahead of time.
MindSpore turns a Ctrl-C during a graph run into a SIGTERM to its own process; native/sigint_relay.py turns
it back.
"""
import logging
import signal

from ..errors import EveryRankError, UserError
from ..native import sigint_relay

logger = logging.getLogger(__name__)


class TrainingInterrupted(UserError):
    """A stop signal ended training after a checkpoint was written; exits 128 + signal number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


class EveryRankInterrupted(TrainingInterrupted, EveryRankError):
    """TrainingInterrupted on every rank of a job at the same step: each exits, none waits for another;
    the resume hint is said once."""
    every_rank_says_it = False


class StopSignals:
    """While active, SIGINT, SIGTERM and SIGUSR1 only record that a stop was asked for (`received`: the first
    signal's number); the training loop stops at the next step or sink boundary the ranks agree on and writes
    a checkpoint. A second signal stops at once. `announce`: say so when one arrives (rank 0)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, announce: bool = True):
        self.received, self.announce = None, announce

    def _handle(self, signum, _frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        if self.announce:
            logger.warning(f"{signal.Signals(signum).name} received: stopping after this step (again to stop at once)")

    def __enter__(self):
        self.previous = [signal.signal(s, self._handle) for s in self.SIGNALS]
        sigint_relay.install()  # signal.signal(SIGTERM) replaced it
        return self

    def __exit__(self, *exc):
        for s, handler in zip(self.SIGNALS, self.previous):
            signal.signal(s, handler)
        sigint_relay.install()
