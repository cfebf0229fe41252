"""One configuration for every script: a YAML file, then `--key value` flags that override it.

Every key is declared once in `Config` with its type, default and help text; where a default belongs to
a part of the library (the models' registry and settings, the preprocessing, augmentation and schedules),
it is read from there. Unknown keys (in YAML or on the command line) and values of the wrong type fail
with a one-line message naming the key, the file or flag, and the closest valid name. The scripts and
the training entry point (training.trainer.train) read the Config; the rest of the library takes values.
The flags are read by cli.from_command_line.
"""
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import FrozenSet, List, Optional

import yaml

from .data import rand_augment
from .data.preprocessing import INTERPOLATIONS, Preprocessing
from .data.transforms import Augmentation
from .errors import UserError
from .models.architectures import ARCHITECTURES, MODEL_DEFAULTS
from .training.lr_schedules import DECAY_MODES

PREPROCESSING, AUGMENTATION = Preprocessing(), Augmentation()  # their defaults


class ConfigError(UserError):
    """A bad configuration value: the message names the key, where it came from and what to do."""


def key(default, help, choices=None, minimum=None, above=None, maximum=None, below=None):
    """A config key: its default, help text, and the values it can take (choices, or bounds a value may
    reach (minimum, maximum) or only approach (above, below))."""
    meta = dict(help=help, choices=choices, minimum=minimum, above=above, maximum=maximum, below=below, key=True)
    if isinstance(default, tuple):
        default = list(default)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # Seed parameter table (names and defaults as in the MindSpore MobileNetV3 README).
    device_target: str = key("GPU", "Hardware device", choices=["CPU", "GPU", "Ascend"])
    data_url: str = key("", "Dataset root (with train/ and val/) or a class-folder tree")
    pretrained: Optional[str] = key(None, "Checkpoint to load before training/eval/infer (false: none)")
    run_distribute: bool = key(True, "Data-parallel when launched with more than one process")
    num_parallel_workers: int = key(0, "Data pipeline workers per process; 0: its share of the CPUs (those "
                                       "available / processes on this machine), also the most used", minimum=0)
    dataset_sink_mode: bool = key(True, "Sink the dataset into the device graph (GPU, Ascend; the CPU never sinks): "
                                        "the device runs sink_size steps between returns to the host")
    num_classes: int = key(MODEL_DEFAULTS["num_classes"], "Number of classes", minimum=1)
    batch_size: int = key(64, "Batch size per process", minimum=1)
    repeat_num: int = key(1, "Repeat the training set this many times per epoch", minimum=1)
    momentum: float = key(0.9, "Optimiser momentum", minimum=0.0, below=1.0)
    epoch_size: int = key(200, "Number of training epochs", minimum=1)
    keep_checkpoint_max: int = key(10, "Most checkpoints kept in ckpt_save_dir", minimum=1)
    ckpt_save_dir: str = key("./mobilenet_v3", "Where checkpoints and logs are written")
    lr_decay_mode: str = key("cosine_decay_lr", "Learning-rate schedule", choices=list(DECAY_MODES))
    decay_epoch: int = key(0, "cosine: epochs from max_lr to min_lr after warmup; 0: to the run's end", minimum=0)
    smooth_factor: float = key(0.1, "Label smoothing factor", minimum=0.0, below=1.0)
    max_lr: float = key(0.1, "Peak lr (after warmup) at global batch lr_base_size; a flag: as is", above=0.0)
    min_lr: float = key(0.0, "Final learning rate of the cosine schedule", minimum=0.0)
    milestone: List[int] = key([], "piecewise: epochs at which each learning rate ends")
    learning_rates: List[float] = key([], "piecewise: learning rate of each milestone interval")
    resize: int = key(PREPROCESSING.resize, "Input image size", minimum=1)
    # The device of a single process (the flag of the seed's MindSpore scripts).
    device_id: int = key(0, "GPU (or Ascend device) of a single process, counted among the visible ones "
                         "(CUDA_VISIBLE_DEVICES); under mpirun or msrun rank r takes its machine's r-th",
                         minimum=0)
    lr_base_size: int = key(512, "The global batch (batch_size x processes) max_lr belongs to (the seed's: 8 x 64); at "
                            "another, max_lr is scaled by lr_scaling (timm's --lr-base-size)", minimum=1)
    lr_scaling: str = key("linear", "How max_lr follows the global batch: linear (x global / lr_base_size) or sqrt "
                          "(x its square root)", choices=["linear", "sqrt"])
    # Model.
    model: str = key("mobilenet_v3_small", "Model name", choices=list(ARCHITECTURES))
    width: float = key(MODEL_DEFAULTS["width"], "Width multiplier", above=0.0)
    dropout_rate: float = key(MODEL_DEFAULTS["dropout_rate"], "Dropout before the last Linear layer", minimum=0.0,
                               below=1.0)
    drop_path_rate: float = key(0.0, "Stochastic depth: the last residual block's probability of dropping its "
                                "branch, the earlier ones' rising to it from 0 (timm's --drop-path)", minimum=0.0,
                                below=1.0)
    bn_momentum: float = key(MODEL_DEFAULTS["bn_momentum"], "BatchNorm running-stat momentum (MindSpore convention; "
                             "torch 0.01)", minimum=0.0, maximum=1.0)
    bn_eps: float = key(MODEL_DEFAULTS["bn_eps"], "BatchNorm epsilon", minimum=0.0)
    # Training extras.
    optimizer: str = key("momentum", "Optimiser: momentum (SGD), rmsprop (torch's update, torchvision's recipe) or "
                         "rmsprop_tf (TensorFlow's, timm's recipe)", choices=["momentum", "rmsprop", "rmsprop_tf"])
    weight_decay: float = key(4e-5, "Weight decay (not applied to BatchNorm parameters or biases)", minimum=0.0)
    warmup_epochs: int = key(0, "Linear warmup epochs before the schedule", minimum=0)
    lr_decay_rate: float = key(0.973, "step/exponential: factor per decay step", above=0.0, maximum=1.0)
    lr_decay_step_epochs: float = key(2, "step/exponential: epochs per decay step, fractions allowed (timm's 2.4)",
                                      above=0.0)
    lr_noise: List[float] = key([], "timm's --lr-noise, as START,END: from epoch START x epoch_size to before END x "
                                "epoch_size each epoch's learning rate is multiplied by 1 + n, n drawn from "
                                "(seed, epoch), normal, redrawn until |n| < 0.67 (timm's recipe: 0.42,0.9)")
    ema_decay: float = key(0.0, "Exponential moving average of weights (0: off, e.g. 0.9999)", minimum=0.0,
                           below=1.0)
    grad_clip: float = key(0.0, "Clip gradients to this global norm (0: off)", minimum=0.0)
    amp_level: str = key("auto", "Mixed precision (auto: O0 on CPU, O2 elsewhere)",
                         choices=["auto", "O0", "O1", "O2", "O3"])
    loss_scale: float = key(1024.0, "Initial dynamic loss scale with O2/O3", minimum=1.0)
    auto_augment: bool = key(AUGMENTATION.auto_augment, "ImageNet AutoAugment policy in training")
    rand_augment: str = key(AUGMENTATION.rand_augment, "timm's RandAugment in training, in timm's form "
                            "rand-m<magnitude>[-n<ops per image>][-p<probability>][-mstd<magnitude std>], e.g. "
                            "rand-m9-mstd0.5 (timm's recipe); empty: off")
    color_jitter: float = key(AUGMENTATION.color_jitter, "Colour jitter strength in training (0: off)", minimum=0.0)
    random_erase: float = key(AUGMENTATION.random_erase, "Random erasing probability in training", minimum=0.0,
                                maximum=1.0)
    random_erase_mode: str = key(AUGMENTATION.random_erase_mode, "What random erasing fills in: const, the mean colour "
                                 "(0 once normalised, torchvision's); pixel, per-pixel normal noise once normalised "
                                 "(timm's --remode pixel)", choices=["const", "pixel"])
    min_crop_area: float = key(AUGMENTATION.min_crop_area, "Training random-resized crop: smallest crop as a fraction "
                               "of the image area (1: whole image, flips only; small images learn faster with less)",
                               above=0.0, maximum=1.0)
    interpolation: str = key(PREPROCESSING.interpolation, "Resize interpolation", choices=list(INTERPOLATIONS))
    crop_pct: float = key(PREPROCESSING.crop_pct, "Eval centre-crop fraction: shorter side resized to resize/crop_pct",
                          above=0.0, maximum=1.0)
    mean: List[float] = key(PREPROCESSING.mean, "Per-channel (R, G, B) mean subtracted from images in [0, 1] "
                            "(default ImageNet's)")
    std: List[float] = key(PREPROCESSING.std, "Per-channel (R, G, B) standard deviation images are divided by "
                           "(default ImageNet's)")
    seed: int = key(1, "Random seed", minimum=0)
    log_interval: int = key(0, "Print the step line every this many steps; 0: every step, or in sink mode at every "
                            "sink's end. In sink mode N also makes sinks of at most N steps, a return to the host "
                            "each", minimum=0)
    sink_size: int = key(0, "Steps per sink in dataset sink mode, a divisor of an epoch's steps; 0: the largest "
                         "divisor not above log_interval if that is set, else the smallest of at least 100, else the "
                         "whole epoch", minimum=0)
    eval_interval: int = key(0, "Validate every this many epochs (0: never); the best Top-1 is <model>-best.ckpt",
                             minimum=0)
    tensorboard: Optional[str] = key(None, "Folder for TensorBoard event files of loss, lr, img/s, validation")
    resume: Optional[str] = key(None, "Checkpoint to resume from, or 'auto' for the latest in ckpt_save_dir")
    # Evaluation, inference and export.
    use_ema: bool = key(False, "Use the checkpoint's EMA weights (saved by training with --ema_decay; BatchNorm "
                        "statistics averaged too) instead of its raw ones")
    top_k: int = key(5, "Predictions printed per image", minimum=1)
    output: Optional[str] = key(None, "Output file: predictions (.json or .csv) for infer, "
                                "the converted .ckpt for convert_weights")
    json: Optional[str] = key(None, "Also write the evaluation metrics to this JSON file: Top-1, Top-5, loss, "
                              "images, then per-class accuracy and the confusion matrix")
    val_labels: Optional[str] = key(None, "Evaluate the flat folder data_url (ImageNet's val as it ships) labelled "
                                    "by this file: FILE.csv with the header filename,class, or any other file with "
                                    "one label per line for the image files in sorted name order (the devkit's "
                                    "ground truth, with --val_synsets); a class is a name or synset of the model's "
                                    "class list, or a 0-based index into it")
    val_synsets: Optional[str] = key(None, "With val_labels: one class (name or synset) per line; an integer label "
                                     "k is then line k, counted from 1 (the devkit's ILSVRC2012_IDs: see the "
                                     "README for writing this file from its meta.mat)")
    backend: str = key("mindspore", "Engine for eval and infer: onnxruntime runs the checkpoint exported to ONNX "
                       "(once, cached next to it) or a given .onnx, much faster on CPU (pip install onnxruntime); "
                       "openvino runs the same files, faster still (pip install openvino); an exported .onnx "
                       "(onnxruntime) or .mindir picks its own unless this is given. With export's quantize int8: "
                       "the engine the int8 file is shaped for (onnxruntime, or openvino)",
                       choices=["mindspore", "onnxruntime", "openvino"])
    threads: int = key(0, "CPU threads for eval and infer (MindSpore CPU kernels, ONNX Runtime intra-op, OpenVINO); "
                       "0: one per physical core", minimum=0)
    precision: str = key("f32", "Number format OpenVINO computes in (backend openvino): f32, its logits equal to ONNX "
                         "Runtime's to float rounding; bf16, faster on CPUs that compute bfloat16 natively (AVX512_BF16 "
                         "or AMX), the logits to about 3 significant digits: eval tells what it costs",
                         choices=["f32", "bf16"])
    file_format: str = key("MINDIR", "Export format", choices=["MINDIR", "ONNX"])
    file_name: Optional[str] = key(None, "Export file name (default: next to the checkpoint)")
    quantize: str = key("none", "Export int8: also quantize the ONNX export with ONNX Runtime (static, calibrated on "
                        "calib_data) into <file_name>.int8.onnx; needs file_format ONNX", choices=["none", "int8"])
    calib_data: Optional[str] = key(None, "Export with quantize int8: folder of images like those the model will "
                                    "see (searched recursively; class folders or not)")
    calib_images: int = key(300, "Export with quantize int8: images drawn from calib_data (evenly spaced over its "
                            "sorted list, so every class folder contributes)", minimum=1)
    # Serving (scripts/serve.py).
    host: str = key("127.0.0.1", "Address to serve on; 127.0.0.1 answers this machine only, 0.0.0.0 every network")
    port: int = key(8000, "TCP port to serve on (0: any free one)", minimum=0)
    max_batch: int = key(32, "The most concurrent requests the model runs as one batch (1: one at a time)", minimum=1)
    max_wait_ms: float = key(5.0, "How long a batch waits for more requests after its first arrived (only while "
                             "others are still being read or decoded)", minimum=0)
    max_bytes: int = key(20_000_000, "The largest request body accepted (413 above)", minimum=1)
    max_queue: int = key(256, "Requests in progress beyond which new ones get 503 with Retry-After", minimum=1)
    # Weight conversion from PyTorch.
    source: str = key("auto", "Parameter naming of the weights to convert (auto: told by the names)",
                      choices=["auto", "torchvision", "timm"])
    input: Optional[str] = key(None, "Weights to convert: a .safetensors file, or a PyTorch .pth holding a "
                               "state_dict (or one under 'state_dict' or 'model')")
    preset: Optional[str] = key(None, "Published weight set the input is (e.g. timm/mobilenetv3_large_100.ra_in1k): "
                                "records its preprocessing and accuracy in the checkpoint")

    # Not keys: those of the keys above given on the command line (parse_args fills it), and the config file
    # with the values it sets, before flags override them. A flag wins over what a model's meta records, which wins over a config file and the
    # defaults.
    flags: FrozenSet[str] = field(default=frozenset(), compare=False, repr=False)
    config_file: Optional[str] = field(default=None, compare=False, repr=False)
    file_values: dict = field(default_factory=dict, compare=False, repr=False)  # a recipe's max_lr, for lr scaling
    # Why the device is the CPU although the default named the GPU (cli.parse_args), for train.log.
    device_note: Optional[str] = field(default=None, compare=False, repr=False)

    def values(self) -> dict:
        """{key: value} of every key (what run.yaml and a checkpoint's meta record)."""
        return {name: getattr(self, name) for name in FIELDS}

    def subset(self, names) -> dict:
        """{key: value} of the keys `names`."""
        return {name: getattr(self, name) for name in names}

    def named_by(self, name) -> Optional[str]:
        """Who set key `name`: "--name", the config file's path, or None for the built-in default."""
        if name in self.flags:
            return f"--{name}"
        return self.config_file if name in self.file_values else None

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.resize, self.interpolation, self.crop_pct, tuple(self.mean), tuple(self.std))


FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.metadata.get("key")}

FALSE_WORDS, TRUE_WORDS = {"false", "no", "off", "0"}, {"true", "yes", "on", "1"}
NONE_WORDS = {"", "none", "null", "false"}


def closest_name(name: str, names=FIELDS, prefix="") -> str:
    """"; did you mean ..." for the known name closest to `name`, or ""."""
    match = difflib.get_close_matches(name, names, n=1)
    return f"; did you mean '{prefix}{match[0]}'?" if match else ""


def _convert(name: str, value, source: str):
    """Convert a YAML or command-line value to the declared type of `name`, or raise ConfigError."""
    spec = FIELDS[name]
    kind = spec.type
    is_optional = typing.get_origin(kind) is typing.Union
    if is_optional:
        kind = str
    where = f"{name} (from {source})"

    def fail(what):
        return ConfigError(f"{where}: {what}, got {value!r}")

    if is_optional and (value is None or value is False or (isinstance(value, str) and value.lower() in NONE_WORDS)):
        return None
    if typing.get_origin(kind) in (list, List):
        item_type = typing.get_args(kind)[0]
        items = value if isinstance(value, list) else [v for v in str(value).replace(",", " ").split() if v]
        try:
            converted = [item_type(v) for v in items]
        except (TypeError, ValueError):
            raise fail(f"expected a list of {item_type.__name__}") from None
        if not all(math.isfinite(v) for v in converted):
            raise fail("every number must be finite")
        return converted
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in TRUE_WORDS:
            return True
        if str(value).lower() in FALSE_WORDS:
            return False
        raise fail("expected true or false")
    if kind is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
        raise fail("expected an integer")
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise fail(f"expected {'an integer' if kind is int else 'a number' if kind is float else kind.__name__}") \
            from None
    if kind is float and not math.isfinite(converted):
        raise fail("must be a finite number")
    bounds = {"minimum": (converted.__lt__, ">="), "above": (converted.__le__, ">"),
              "maximum": (converted.__gt__, "<="), "below": (converted.__ge__, "<")}
    for bound, (crosses, relation) in bounds.items():
        limit = spec.metadata.get(bound)
        if limit is not None and crosses(limit):
            raise fail(f"must be {relation} {limit}")
    choices = spec.metadata.get("choices")
    if choices and converted not in choices:
        raise fail(f"must be one of {', '.join(choices)}")
    return converted


def load_yaml(path) -> dict:
    """Read a config YAML into {key: converted value}, rejecting unknown keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                          "save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level")
    values = {}
    for name, value in raw.items():
        if name not in FIELDS:
            raise ConfigError(f"{path}: unknown key {name!r}{closest_name(str(name))}")
        values[name] = _convert(name, value, str(path))
    return values


def build_config(config_path=None, overrides: Optional[dict] = None, source=lambda name: "overrides") -> Config:
    """Defaults, then the YAML file, then `overrides` (typed values or strings from the command line)."""
    values = load_yaml(config_path) if config_path else {}
    file_values = dict(values)
    for name, value in (overrides or {}).items():
        if name not in FIELDS:
            raise ConfigError(f"unknown key {name!r}{closest_name(name)}")
        values[name] = _convert(name, value, source(name))
    config = Config(**values, flags=frozenset(overrides or ()), file_values=file_values,
                    config_file=str(config_path) if config_path else None)
    check_consistency(config)
    return config


def check_consistency(config: Config):
    if config.lr_decay_mode == "piecewise" and len(config.milestone) != len(config.learning_rates):
        raise ConfigError("milestone and learning_rates must have the same length for lr_decay_mode piecewise "
                          f"(got {len(config.milestone)} and {len(config.learning_rates)})")
    if config.lr_decay_mode == "piecewise" and not config.milestone:
        raise ConfigError("lr_decay_mode piecewise needs milestone and learning_rates lists")
    if not all(a < b for a, b in zip([0] + config.milestone, config.milestone)):
        raise ConfigError(f"milestone takes rising epochs above 0, got {','.join(map(str, config.milestone))}")
    if not all(rate > 0 for rate in config.learning_rates):
        raise ConfigError(f"learning_rates must all be > 0, got {','.join(map(str, config.learning_rates))}")
    if config.min_lr > config.max_lr:
        raise ConfigError(f"min_lr {config.min_lr} is above max_lr {config.max_lr}: the schedule decays from max_lr "
                          "to min_lr")
    if config.rand_augment:
        if config.auto_augment:
            raise ConfigError("auto_augment and rand_augment are alternatives; set one of them")
        try:
            rand_augment.parse(config.rand_augment)
        except ValueError as err:
            raise ConfigError(f"rand_augment {err}") from None
    if config.lr_noise and not (len(config.lr_noise) == 2 and 0 <= config.lr_noise[0] < config.lr_noise[1] <= 1):
        raise ConfigError(f"lr_noise takes two fractions of the epochs, START,END with START < END in [0, 1] "
                          f"(timm's recipe: 0.42,0.9), got {','.join(map(str, config.lr_noise))}")
    # In units of pixel / 255; MindSpore's Normalize takes mean in [0, 255] and std in (0, 255].
    for name, low, bounds in (("mean", 0.0, "in [0, 1]"), ("std", None, "in (0, 1]")):
        values = getattr(config, name)
        if len(values) != 3 or not all((low is not None and v == low or 0 < v) and v <= 1 for v in values):
            raise ConfigError(f"{name} needs 3 numbers (R, G, B) {bounds}, e.g. --{name} "
                              f"{','.join(map(str, getattr(PREPROCESSING, name)))}; got {values}")
    if config.val_synsets and not config.val_labels:
        raise ConfigError("val_synsets numbers the labels of a val_labels file; pass --val_labels FILE too")
