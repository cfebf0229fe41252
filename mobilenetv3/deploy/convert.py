"""Convert published MobileNetV3 weights (torchvision or timm naming) into a MindSpore checkpoint.

Reads .safetensors files (as timm publishes its weights) with the safetensors package alone, no torch,
and PyTorch .pth files with torch when it is installed. The naming is told by the tensor names unless
given; --preset names a published weight set and records its preprocessing and accuracy in the meta.

Every tensor is mapped by name and checked for shape; anything unmapped or missing is an error that
lists the names. Our model has torchvision's layout, so torchvision names map one-to-one (BatchNorm
weight/bias/running_mean/running_var become gamma/beta/moving_mean/moving_variance). timm's
`mobilenetv3_small_100` / `mobilenetv3_large_100` hold the same tensors under other names, with BatchNorm
eps 1e-5 instead of 1e-3; the eps travels with the weights into the checkpoint's meta. timm's `tf_*`
variants use TensorFlow "same" padding and are not supported.
"""
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import mindspore as ms
import numpy as np

from ..checkpoints.files import first_non_finite, listing, mismatch, require_file, save
from ..data.imagenet import NUM_CLASSES, wnids
from ..errors import UserError
from ..models.architectures import ARCHITECTURES, MODEL_DEFAULTS
from ..models.factory import create_model
from .presets import preset


SOURCES = ("torchvision", "timm")

SAFETENSORS_SUFFIX = ".safetensors"

BN_EPS = {"torchvision": 1e-3, "timm": 1e-5}

TORCH_BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}

CLASSIFIER_WEIGHT = {"torchvision": "classifier.3.weight", "timm": "classifier.weight"}

# timm's conv_head is a 1x1 conv after pooling, stored (out, in, 1, 1); ours is the Dense classifier.0.
TIMM_CONV_HEAD = "conv_head.weight"

# How timm groups the inverted-residual blocks into stages (blocks.<stage>.<index>), from the arch_def
# of timm's _gen_mobilenet_v3; one more stage after them holds the last 1x1 conv.
TIMM_STAGE_SIZES = {
    "mobilenet_v3_large": (1, 2, 3, 4, 2, 3),
    "mobilenet_v3_small": (1, 2, 3, 2, 3),
}

# Sub-layer names of a timm block by role: the first block has no expansion (timm's depthwise-separable
# block), every other one expands (timm's inverted residual); each role is (conv, batchnorm).
TIMM_SEPARABLE = {"depthwise": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2")}

TIMM_INVERTED = {"expand": ("conv_pw", "bn1"), "depthwise": ("conv_dw", "bn2"), "project": ("conv_pwl", "bn3")}

TIMM_SE = {"fc1": "se.conv_reduce", "fc2": "se.conv_expand"}

BLOCK_KEY = re.compile(r"^features\.(?P<block>\d+)\.block\.(?P<layer>\d+)\.(?P<rest>.+)$")


def torchvision_to_timm(keys: Iterable[str], model_name: str) -> Dict[str, str]:
    """Map torchvision-layout parameter names of `model_name` to timm's names (keys that fit no rule are left out).

    The role of each conv in a block follows from the block's own layers: two convs besides SE are
    depthwise + project, three are expand + depthwise + project.
    """
    keys = list(keys)
    stage_sizes = TIMM_STAGE_SIZES[model_name]
    positions = [(stage, index) for stage, size in enumerate(stage_sizes) for index in range(size)]
    last_conv = len(positions) + 1  # features index of the final 1x1 conv, after stem and blocks
    block_layers: Dict[Tuple[int, int], bool] = {}  # (block, layer) -> is squeeze-excitation
    for key in keys:
        match = BLOCK_KEY.match(key)
        if match:
            is_se = match["rest"].split(".")[0] in TIMM_SE
            block_layers[int(match["block"]), int(match["layer"])] = is_se
    roles = {}
    for block in {block for block, _ in block_layers}:
        convs = sorted(layer for (b, layer), is_se in block_layers.items() if b == block and not is_se)
        names = TIMM_INVERTED if len(convs) == 3 else TIMM_SEPARABLE
        roles.update({(block, layer): names[role] for layer, role in zip(convs, names)})

    mapping = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] == "classifier" and parts[1] in ("0", "3"):
            mapping[key] = f"{'conv_head' if parts[1] == '0' else 'classifier'}.{parts[2]}"
        elif key.startswith("features.0."):
            mapping[key] = f"{'conv_stem' if parts[2] == '0' else 'bn1'}.{parts[3]}"
        elif key.startswith(f"features.{last_conv}."):
            mapping[key] = f"blocks.{len(stage_sizes)}.0.{'conv' if parts[2] == '0' else 'bn1'}.{parts[3]}"
        elif (match := BLOCK_KEY.match(key)) and 1 <= int(match["block"]) <= len(positions):
            block, layer, rest = int(match["block"]), int(match["layer"]), match["rest"].split(".")
            stage, index = positions[block - 1]
            if rest[0] in TIMM_SE:
                mapping[key] = f"blocks.{stage}.{index}.{TIMM_SE[rest[0]]}.{rest[1]}"
            elif (block, layer) in roles:
                conv, bn = roles[block, layer]
                mapping[key] = f"blocks.{stage}.{index}.{conv if rest[0] == '0' else bn}.{rest[1]}"
    return mapping


def torch_name(name: str) -> str:
    """Our parameter name -> torchvision's (only BatchNorm parameters differ)."""
    prefix, _, leaf = name.rpartition(".")
    return f"{prefix}.{TORCH_BN_NAMES.get(leaf, leaf)}"


def _to_numpy(value) -> np.ndarray:
    array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    return np.ascontiguousarray(array, dtype=np.float32)


def convert_state_dict(state_dict, source: str, model_name: str, width: float = 1.0,
                       preset_name: Optional[str] = None) -> Tuple[Dict[str, np.ndarray], float]:
    """PyTorch state_dict -> ({our parameter name: float32 array}, BatchNorm eps the weights were trained with).

    num_classes is read from the last Linear layer. Fails with a UserError naming every missing,
    unexpected and wrongly shaped tensor, and asking whether they are the `preset_name`'s weights, if given.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if model_name not in ARCHITECTURES:
        raise UserError(f"unknown model {model_name!r}; known models: {', '.join(sorted(ARCHITECTURES))}")
    if source == "timm" and width != 1.0:
        raise UserError(f"timm weights can only be converted at width 1.0 (got {width}): timm's narrower "
                        "models compute expanded channels differently and do not fit torchvision's layout")
    hint = f" (are these the weights of --preset {preset_name}?)" if preset_name else \
        f" (is --source {source} with --model {model_name} --width {width} right for this file?)"
    classifier = CLASSIFIER_WEIGHT[source]
    if classifier not in state_dict or len(state_dict[classifier].shape) != 2:
        raise UserError(f"no 2-D classifier weight {classifier!r} in the weights to convert{hint}")
    num_classes = int(state_dict[classifier].shape[0])

    own = {p.name: tuple(p.shape) for p in create_model(model_name, num_classes, width).get_parameters()}
    names = {name: torch_name(name) for name in own}
    if source == "timm":
        timm_names = torchvision_to_timm(names.values(), model_name)
        names = {name: timm_names.get(key, key) for name, key in names.items()}

    given = {key for key in state_dict if not key.endswith("num_batches_tracked")}
    missing = sorted(key for key in names.values() if key not in state_dict)
    unexpected = sorted(given - set(names.values()))
    converted, wrong_shape = {}, []
    for name, key in names.items():
        if key not in state_dict:
            continue
        array = _to_numpy(state_dict[key])
        if key == TIMM_CONV_HEAD and array.shape == own[name] + (1, 1):
            array = array.reshape(own[name])
        if array.shape != own[name]:
            wrong_shape.append(f"{key} {tuple(array.shape)} vs {own[name]} for {name}")
        converted[name] = array
    problems = mismatch(missing, unexpected, sorted(wrong_shape), missing_label="missing",
                                   unexpected_label="not mapped to the model")
    if problems:
        raise UserError(f"{source} weights do not fit {model_name} width {width} with {num_classes} classes: "
                        + problems + hint)
    return converted, BN_EPS[source]


TORCH_LEGACY_MAGIC = b"\x80\x02"  # pickle protocol 2, which torch.save used before its zip format


def is_torch_file(path) -> bool:
    """Whether `path` has the form of a torch.save file, so that torch.load's errors can be told apart: a file
    of another kind fails as a pickle too, which torch reports as objects it refuses to load."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as source:
        return source.read(len(TORCH_LEGACY_MAGIC)) == TORCH_LEGACY_MAGIC


def read_torch_state_dict(path) -> dict:
    """torch.load a .pth holding a state_dict, or a training checkpoint with one under 'state_dict' or 'model'."""
    try:
        import torch
    except ImportError:
        raise UserError("converting PyTorch weights needs torch: pip install torch==2.13.0 "
                        "(or pip install .[convert])") from None
    path = require_file(path, "PyTorch weights")
    if not is_torch_file(path):
        raise UserError(f"{path} is not a PyTorch file (torch.save writes a zip archive, before torch 1.6 a pickle); "
                        "pass the .pth or .pt file of the weights")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds objects other than tensors, which torch.load(weights_only=True) refuses "
                        "for safety; if you trust the file, re-save only its state_dict with torch.save") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"{path} is not a readable PyTorch file ({err})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, dict) or not all(hasattr(v, "shape") for v in loaded.values()):
        raise UserError(f"{path} is not a state_dict (a dict of tensors), nor holds one under 'state_dict' or 'model'")
    return loaded


def read_safetensors(path) -> dict:
    """{name: numpy array} of a .safetensors file, read without torch."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err})") from None


def read_weights(path) -> dict:
    """The tensors of a .safetensors file (no torch needed) or of a PyTorch .pth (see read_torch_state_dict)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"weights file {path} not found")
    if path.is_dir():
        raise UserError(f"--input {path} is a directory; pass the weights file in it (e.g. {path}/model.safetensors)")
    if path.suffix == SAFETENSORS_SUFFIX:
        return read_safetensors(path)
    return read_torch_state_dict(path)


def detect_source(state_dict) -> str:
    """"torchvision" or "timm", told by the classifier's name (they name every other tensor differently too)."""
    found = [source for source in SOURCES if CLASSIFIER_WEIGHT[source] in state_dict]
    if len(found) != 1:
        raise UserError(f"cannot tell the naming of the weights: expected {CLASSIFIER_WEIGHT['torchvision']!r} "
                        f"(torchvision) or {CLASSIFIER_WEIGHT['timm']!r} (timm) among their "
                        f"{len(state_dict)} tensors; pass --source")
    return found[0]


def convert_file(input_path, source: str, model_name: str, output_path, width: float = 1.0,
                 preset_name: Optional[str] = None) -> dict:
    """Convert a .safetensors or .pth file into a checked MindSpore checkpoint at `output_path`; returns its meta.

    `source` "auto" is told by the tensor names. The meta carries model, num_classes, width, bn_eps and
    bn_momentum, which rebuild the exact model (timm weights need bn_eps 1e-5), plus ImageNet class names for
    1000-class weights and the source; with a preset, also its preprocessing and published accuracy, so the
    weights must be what the preset is (its model and width, and its number of classes).
    """
    chosen = preset(preset_name) if preset_name else None
    state_dict = read_weights(input_path)
    bad = first_non_finite((key, _to_numpy(value)) for key, value in state_dict.items())
    if bad:
        raise UserError(f"{input_path}: tensor {bad}; these weights are broken: download or export them again")
    source = detect_source(state_dict) if source == "auto" else source
    weights, bn_eps = convert_state_dict(state_dict, source, model_name, width, preset_name)
    num_classes = weights["classifier.3.bias"].shape[0]
    if chosen and num_classes != chosen.num_classes:
        raise UserError(f"{input_path} holds weights for {num_classes} classes, but --preset {preset_name} is "
                        f"{chosen.num_classes}-class weights: drop --preset (it records the published weights' "
                        "preprocessing and accuracy)")
    bn_momentum = MODEL_DEFAULTS["bn_momentum"]  # torch's 0.01 weighs the new batch, MindSpore's the running value
    net = create_model(model_name, num_classes, width, bn_momentum=bn_momentum, bn_eps=bn_eps)
    not_loaded, _ = ms.load_param_into_net(net, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in weights.items()},
                                           strict_load=True)
    if not_loaded:
        raise UserError(f"parameters not loaded from {input_path}: {listing(sorted(not_loaded))}")
    meta = dict(model=model_name, num_classes=num_classes, width=width, bn_eps=bn_eps, bn_momentum=bn_momentum,
                classes=wnids() if num_classes == NUM_CLASSES else None, source=source)
    if chosen:
        meta.update(preset=preset_name, preprocessing=chosen.preprocessing(),
                    published={"top1": chosen.top1, "top5": chosen.top5})
    save(output_path, {p.name: p for p in net.get_parameters()}, meta)
    return meta
