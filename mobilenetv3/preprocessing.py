"""The image preprocessing a model expects: resize interpolation, eval centre-crop fraction, mean and std.

Weight sets differ here (timm evaluates its ra_in1k weights with bicubic resizing, its miil weights with
mean 0 and std 1, torchvision with bilinear), and the wrong transforms cost accuracy without any error. So
every artifact records the preprocessing in its meta ("preprocessing": checkpoints written by training,
conversion with --preset, exports), and eval, infer and export use it. So does the image size (resize): a
network trained at 32 px is at chance at 224 px, and for an exported file it is fixed ("image_size").
Precedence: a key given on the command line, then what the model records, then the config file and the
defaults. Fine-tuning takes the preprocessing from the weights but keeps its own image size.
"""
from typing import Tuple

from .config import PREPROCESSING_KEYS, replaced


RECORDED_KEYS = ("resize", *PREPROCESSING_KEYS)


def of_config(config) -> dict:
    """The image size and preprocessing keys of `config`, as recorded in a meta."""
    return {name: getattr(config, name) for name in RECORDED_KEYS}


def recorded(meta: dict) -> dict:
    """What a model's meta says about its image size and preprocessing: its "preprocessing", and for keys
    it lacks the training config the meta carries (checkpoints written before the key was recorded);
    {} for a model from elsewhere."""
    saved = {**(meta.get("config") or {}), **(meta.get("preprocessing") or {})}
    values = {name: saved[name] for name in RECORDED_KEYS if name in saved}
    if "image_size" in meta:  # an exported model takes images of this size only
        values["resize"] = meta["image_size"]
    return values


def describe(values: dict) -> str:
    mean, std = (", ".join(f"{v:g}" for v in values[name]) for name in ("mean", "std"))
    return (f"{values['resize']} px, {values['interpolation']}, crop_pct {values['crop_pct']:g}, "
            f"mean ({mean}), std ({std})")


def resolve(config, meta: dict, own_size: bool = False) -> Tuple[object, str]:
    """(`config` with the image size and preprocessing the model expects, one line saying what is used and
    where it comes from). own_size: keep config's image size (fine-tuning chooses its own)."""
    flags = getattr(config, "flags", frozenset())
    saved = recorded(meta)
    if own_size:
        saved.pop("resize", None)
    chosen = dict(of_config(config), **{k: v for k, v in saved.items() if k not in flags})
    overridden = sorted(k for k in flags & set(saved) if saved[k] != getattr(config, k))
    origin = meta.get("preset") or "the model's meta"
    if not saved:
        where = "the config (the model records none)"
    elif overridden:
        where = f"{origin}, except {', '.join('--' + k for k in overridden)} from the command line"
    else:
        where = origin
    return replaced(config, **chosen), f"preprocessing: {describe(chosen)} (from {where})"
