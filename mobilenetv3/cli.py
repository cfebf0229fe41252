"""The scripts' runner: what every script does around its own work.

    if __name__ == "__main__":
        run_cli(main)          # process defaults, logging, then main(argv) with its errors as one line

    def main(argv=None):
        config = parse_args(argv, description=__doc__, keys=TRAIN_KEYS)   # flags, config file, device
        ...

Process defaults (apply_process_defaults) are the settings MindSpore must see before it starts: the
oneDNN cap on AVX-512 CPUs, quieter logs on every rank but 0, and threads freed from mpirun's core binding.
The library sets none of them on import; a library user who wants them calls apply_process_defaults()
before importing MindSpore. Scripts import the library inside main, after run_cli has applied them.
"""
import codecs
import logging
import signal
import sys

from . import log
from .cluster.device import usable_device_target
from .cluster.launchers import apply_log_defaults, launcher_rank, release_core_binding
from .cluster.mpi_bridge import abort_job, in_mpi_job
from .config import FIELDS, Config, from_command_line
from .errors import EveryRankError, UserError
from .native.cpu_info import cap_onednn_isa

logger = logging.getLogger(__name__)

# The keys each script offers as flags (a YAML file may carry any key; the others are ignored there).
MODEL_KEYS = ["model", "num_classes", "width", "dropout_rate", "bn_momentum", "bn_eps"]
PREPROCESSING_KEYS = ["interpolation", "crop_pct", "mean", "std"]
EVAL_DATA_KEYS = ["device_target", "device_id", "data_url", "pretrained", "use_ema", "batch_size",
                  "num_parallel_workers", "resize", *PREPROCESSING_KEYS, "seed"]
TRAIN_KEYS = [name for name in FIELDS if name not in ("use_ema", "top_k", "output", "json", "val_labels", "val_synsets",
                                                     "backend", "threads", "file_format", "file_name", "quantize",
                                                     "calib_data", "calib_images", "source", "input", "preset",
                                                     "host", "port", "max_batch", "max_wait_ms", "max_bytes",
                                                     "max_queue")]
EVAL_KEYS = MODEL_KEYS + EVAL_DATA_KEYS + ["backend", "threads", "run_distribute", "json", "val_labels", "val_synsets"]
INFER_KEYS = MODEL_KEYS + EVAL_DATA_KEYS + ["backend", "threads", "top_k", "output"]
EXPORT_KEYS = ["device_target", "device_id", "pretrained", "use_ema", "model", "num_classes", "width", "bn_eps",
               "file_format", "file_name", "resize", *PREPROCESSING_KEYS, "quantize", "calib_data", "calib_images"]
SERVE_KEYS = MODEL_KEYS + ["device_target", "device_id", "pretrained", "use_ema", "resize", *PREPROCESSING_KEYS,
                          "backend", "threads", "num_parallel_workers", "top_k", "host", "port", "max_batch",
                          "max_wait_ms", "max_bytes", "max_queue"]
CONVERT_KEYS = ["source", "input", "model", "width", "output", "preset"]
# What the command line says of a model file to run, where the file's meta is silent (deploy.inference.load_model).
MODEL_FILE_KEYS = ("model", "num_classes", "width", "bn_momentum", "bn_eps", "resize")


def apply_process_defaults():
    """The environment and affinity MindSpore should start with (a value the user exported wins): oneDNN
    capped at AVX2 on AVX-512 CPUs, MindSpore's log on ranks other than 0 at errors, every thread free to
    run on every CPU under mpirun. Before MindSpore is imported and its thread pools start."""
    cap_onednn_isa()
    apply_log_defaults()
    release_core_binding()


def parse_args(argv=None, description="", epilog="", keys=None) -> Config:
    """config.from_command_line, then the device: a GPU that MindSpore cannot start here is an error when a
    flag asks for it, and becomes the CPU (said in one line, by rank 0) when a config file or the default
    does."""
    config = from_command_line(argv, description, epilog, keys)
    if "device_target" in (keys or config.values()):
        device, why = usable_device_target(config.device_target, explicit="device_target" in config.flags)
        if why and launcher_rank() in (None, "0"):
            logger.info(f"note: no usable GPU here ({why}): running on the CPU; --device_target CPU skips this check")
        config.device_target = device
    return config


def run_cli(main, argv=None):
    """Run a script's main(argv) after apply_process_defaults and log.configure, turning the errors users
    cause into one line and exit status 2 (or the error's exit_code), and Ctrl-C (KeyboardInterrupt) into
    one line and status 130, as a shell reports a process ended by SIGINT. Under mpirun, an exception only
    this rank raised ends every rank (see cluster/mpi_bridge.py).

    File names that are not valid UTF-8 are printed as the bytes they are (surrogateescape) rather than
    refused by a strict UTF-8 stdout; every other character encodes in UTF-8 anyway."""
    apply_process_defaults()
    log.configure()
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and codecs.lookup(stream.encoding or "ascii").name == "utf-8":
            stream.reconfigure(errors="surrogateescape")
    try:
        return main(argv)
    except UserError as err:
        if getattr(err, "every_rank_says_it", True) or launcher_rank() in (None, "0"):
            print(f"error: {err}", file=sys.stderr)
        status = getattr(err, "exit_code", 2)
        if not isinstance(err, EveryRankError) and in_mpi_job():
            abort_job(status)
        sys.exit(status)
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except Exception:
        if not in_mpi_job():
            raise
        sys.excepthook(*sys.exc_info())  # the traceback, as if uncaught
        abort_job(1)
