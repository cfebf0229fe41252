"""How the package's log records read, where the scripts send them, and train.log's copy of them.

Every module logs to its own logger (logging.getLogger(__name__)) under "mobilenetv3" and prints nothing.
A script (cli.run_cli) calls configure(): INFO records of the training run (loggers under
mobilenetv3.training: the seed's step line, the epoch lines) go to stdout, every other record to
stderr, warnings and errors prefixed "warning: " and "error: " (LineFormatter). The streams are looked up
at each record, so a redirected or captured sys.stdout gets them. A library user who calls nothing gets
Python's default: warnings on stderr, nothing else.
"""
import logging
import sys

PACKAGE = __name__.split(".")[0]
RUN_OUTPUT = f"{PACKAGE}.training"  # whose INFO records are the run's output, on stdout


class LineFormatter(logging.Formatter):
    """The message alone; a warning or error prefixed with its level, as the scripts print their own."""

    def format(self, record):
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


class ConsoleHandler(logging.Handler):
    """The run's output (INFO records of RUN_OUTPUT's loggers) on sys.stdout, all else on sys.stderr."""

    def emit(self, record):
        try:
            is_output = record.levelno == logging.INFO and record.name.startswith(RUN_OUTPUT)
            stream = sys.stdout if is_output else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure(level=logging.INFO):
    """Send the package's records at `level` and above to the console as the scripts print them; once."""
    logger = logging.getLogger(PACKAGE)
    logger.setLevel(level)
    if not any(isinstance(handler, ConsoleHandler) for handler in logger.handlers):
        handler = ConsoleHandler()
        handler.setFormatter(LineFormatter())
        logger.addHandler(handler)
    logger.propagate = False


def to_file(path) -> logging.Handler:
    """A handler appending the package's INFO and above records to `path`, formatted as on the console; add
    it with logging.getLogger(PACKAGE).addHandler, and remove and close it when done."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(LineFormatter())
    handler.setLevel(logging.INFO)
    return handler
