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
import argparse
import codecs
import dataclasses
import logging
import signal
import sys
import time

from . import log
from .cluster.device import usable_device_target
from .cluster.launchers import (apply_log_defaults, detect_launcher, launcher_local_rank, launcher_rank,
                                release_core_binding)
from .cluster.mpi_bridge import abort_job, in_mpi_job
from .config import FIELDS, Config, ConfigError, build_config, closest_name
from .errors import EveryRankError, MachineError, UserError
from .native import sigint_relay
from .native.cpu_info import cap_onednn_isa

logger = logging.getLogger(__name__)

# The keys each script offers as flags (a YAML file may carry any key; the others are ignored there).
MODEL_KEYS = ["model", "num_classes", "width", "dropout_rate", "bn_momentum", "bn_eps"]
PREPROCESSING_KEYS = ["interpolation", "crop_pct", "mean", "std"]
EVAL_DATA_KEYS = ["device_target", "device_id", "data_url", "pretrained", "use_ema", "batch_size",
                  "num_parallel_workers", "resize", *PREPROCESSING_KEYS, "seed"]
TRAIN_KEYS = [name for name in FIELDS if name not in ("use_ema", "top_k", "output", "json", "val_labels", "val_synsets",
                                                     "backend", "threads", "precision", "file_format", "file_name", "quantize",
                                                     "calib_data", "calib_images", "source", "input", "preset",
                                                     "host", "port", "max_batch", "max_wait_ms", "max_bytes",
                                                     "max_queue")]
EVAL_KEYS = MODEL_KEYS + EVAL_DATA_KEYS + ["backend", "threads", "precision", "run_distribute", "json", "val_labels", "val_synsets"]
INFER_KEYS = MODEL_KEYS + EVAL_DATA_KEYS + ["backend", "threads", "precision", "top_k", "output"]
EXPORT_KEYS = ["device_target", "device_id", "pretrained", "use_ema", "model", "num_classes", "width", "bn_eps",
               "file_format", "file_name", "resize", *PREPROCESSING_KEYS, "quantize", "calib_data", "calib_images",
               "backend"]
SERVE_KEYS = MODEL_KEYS + ["device_target", "device_id", "pretrained", "use_ema", "resize", *PREPROCESSING_KEYS,
                          "backend", "threads", "precision", "num_parallel_workers", "top_k", "host", "port", "max_batch",
                          "max_wait_ms", "max_bytes", "max_queue"]
CONVERT_KEYS = ["source", "input", "model", "width", "output", "preset"]
# What the command line says of a model file to run, where the file's meta is silent (deploy.inference.load_model).
MODEL_FILE_KEYS = ("model", "num_classes", "width", "bn_momentum", "bn_eps", "resize")

# How long a rank that leaves an error to another rank to print waits before exiting.
QUIET_RANK_GRACE_SECONDS = 1.0


def apply_process_defaults(runs_graphs: bool = True):
    """The environment and affinity MindSpore should start with (a value the user exported wins): oneDNN
    capped at AVX2 on AVX-512 CPUs, MindSpore's log on ranks other than 0 at errors, every thread free to
    run on every CPU under mpirun, and, for a process that `runs_graphs`, a Ctrl-C that stays one while
    MindSpore runs a graph (native/sigint_relay.py, built on first use). Before MindSpore is imported and
    its thread pools start."""
    cap_onednn_isa()
    apply_log_defaults()
    release_core_binding()
    if runs_graphs:
        sigint_relay.install()


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(message)


def from_command_line(argv=None, description="", epilog="", keys=None) -> Config:
    """Parse `--config FILE` and `--key value` flags into a Config (parse_args also picks the device).

    `keys` limits the flags offered to what the calling script uses (all keys if None); the help text
    lists them with their defaults.
    """
    parser = _Parser(description=description, epilog=epilog, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with any of the keys below")
    for name in keys or FIELDS:
        spec = FIELDS[name]
        meta = spec.metadata
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        choices = f" ({'|'.join(meta['choices'])})" if meta.get("choices") else ""
        # A true/false key given alone (--use_ema) means true.
        alone = dict(nargs="?", const="true") if spec.type is bool else {}
        parser.add_argument(f"--{name}", dest=name, metavar="VALUE", default=argparse.SUPPRESS, **alone,
                            help=f"{meta['help']}{choices}; default {default!r}")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        hint = closest_name(flag.lstrip("-").split("=")[0], list(keys or FIELDS) + ["config"], prefix="--")
        raise ConfigError(f"unknown flag {flag!r}{hint} (see --help)")
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    return build_config(args.config, overrides, source=lambda name: f"--{name}")


def parse_args(argv=None, description="", epilog="", keys=None) -> Config:
    """from_command_line, then the device: a GPU that MindSpore cannot start here is an error when a
    flag or config file names it or the job has a launcher, and becomes the CPU for the built-in default of a
    single process, said in one line (kept in config.device_note for train.log)."""
    config = from_command_line(argv, description, epilog, keys)
    if "device_target" in (keys or config.values()):
        device, why = usable_device_target(config.device_target, config.named_by("device_target"), detect_launcher())
        if why:
            config.device_note = (f"note: no usable GPU here ({why}): running on the CPU; --device_target CPU skips "
                                  "this check")
            logger.info(config.device_note)
        config.device_target = device
    return config


def run_cli(main, argv=None, runs_graphs: bool = True):
    """Run a script's main(argv) after apply_process_defaults(runs_graphs: False for a script that never runs
    a MindSpore graph) and log.configure, turning the errors users
    cause into one line and exit status 2 (or the error's exit_code), and Ctrl-C (KeyboardInterrupt) into
    one line and status 130, as a shell reports a process ended by SIGINT. Under mpirun, an exception only
    this rank raised ends every rank (see cluster/mpi_bridge.py).

    File names that are not valid UTF-8 are printed as the bytes they are (surrogateescape) rather than
    refused by a strict UTF-8 stdout; every other character encodes in UTF-8 anyway."""
    apply_process_defaults(runs_graphs)
    log.configure()
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and codecs.lookup(stream.encoding or "ascii").name == "utf-8":
            stream.reconfigure(errors="surrogateescape")
    try:
        return main(argv)
    except UserError as err:
        if _says_it(err):
            print(f"error: {err}", file=sys.stderr)
        elif launcher_rank() is not None:
            # The launcher ends the whole job once a rank exits with an error: leave the rank that says it
            # time to finish its line.
            time.sleep(QUIET_RANK_GRACE_SECONDS)
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


def _says_it(err: UserError) -> bool:
    """Whether this rank prints `err`: every rank, or only rank 0, or for a MachineError the first rank of
    each machine."""
    if isinstance(err, MachineError):
        return launcher_local_rank() in (None, "0")
    return getattr(err, "every_rank_says_it", True) or launcher_rank() in (None, "0")
