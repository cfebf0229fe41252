"""Stopping training cleanly on SIGINT/SIGTERM: the signal is recorded, the loop stops after the current
step and writes a checkpoint, and the process exits 128 + the signal's number."""
import logging
import signal

from ..errors import UserError

logger = logging.getLogger(__name__)


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM stopped training after a checkpoint was written; exits 128 + signal number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """While active, SIGINT and SIGTERM only record that a stop was asked for; the train loop then
    stops after the current step and writes a checkpoint. A second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = None

    def _handle(self, signum, _frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        logger.warning(f"{signal.Signals(signum).name} received: stopping after this step (again to stop at once)")

    def __enter__(self):
        self.previous = [signal.signal(s, self._handle) for s in self.SIGNALS]
        return self

    def __exit__(self, *exc):
        for s, handler in zip(self.SIGNALS, self.previous):
            signal.signal(s, handler)
