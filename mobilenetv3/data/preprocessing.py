"""The image preprocessing a model expects: image size, resize interpolation, eval centre-crop fraction,
mean and std.

Weight sets differ here (timm evaluates its ra_in1k weights with bicubic resizing, its miil weights with
mean 0 and std 1, torchvision with bilinear), and the wrong transforms cost accuracy without any error. So
every artifact records the preprocessing in its meta ("preprocessing": checkpoints written by training,
conversion with --preset, exports), and eval, infer and export use it. So does the image size (resize): a
network trained at 32 px is at chance at 224 px, and for an exported file it is fixed ("image_size").
Precedence: a key given on the command line, then what the model records, then the config file and the
defaults. Fine-tuning takes the preprocessing from the weights but keeps its own image size.
"""
import dataclasses
from dataclasses import dataclass
from typing import Collection, Tuple

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """Images as a model takes them: `resize` pixels square; in evaluation the shorter side resized to
    resize / crop_pct (256 for 224) with `interpolation`, then centre-cropped; pixels in [0, 1] minus `mean`,
    divided by `std`, per channel (R, G, B)."""
    resize: int = 224
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):  # lists from YAML, JSON or a config are stored as tuples: hashable, comparable
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))

    @property
    def eval_short_side(self) -> int:
        return int(self.resize / self.crop_pct)

    def normalization(self) -> Tuple[np.ndarray, np.ndarray]:
        """(255 mean, 1 / (255 std)) per channel, float32: a network input is (pixel - shift) * scale."""
        return (np.float32(255) * np.asarray(self.mean, np.float32),
                np.float32(1) / (np.float32(255) * np.asarray(self.std, np.float32)))

    def as_meta(self) -> dict:
        """As a meta records it (its "preprocessing")."""
        return dict(dataclasses.asdict(self), mean=list(self.mean), std=list(self.std))

    def describe(self) -> str:
        mean, std = (", ".join(f"{v:g}" for v in values) for values in (self.mean, self.std))
        return f"{self.resize} px, {self.interpolation}, crop_pct {self.crop_pct:g}, mean ({mean}), std ({std})"


RECORDED_KEYS = tuple(field.name for field in dataclasses.fields(Preprocessing))


def recorded(meta: dict) -> dict:
    """What a model's meta says about its image size and preprocessing: its "preprocessing", and for keys
    it lacks the training config the meta carries (checkpoints written before the key was recorded);
    {} for a model from elsewhere."""
    saved = {**(meta.get("config") or {}), **(meta.get("preprocessing") or {})}
    values = {name: saved[name] for name in RECORDED_KEYS if name in saved}
    if "image_size" in meta:  # an exported model takes images of this size only
        values["resize"] = meta["image_size"]
    return values


def resolve(given: Preprocessing, flags: Collection[str], meta: dict,
            own_size: bool = False) -> Tuple[Preprocessing, str]:
    """(the preprocessing to use, one line saying what it is and where it comes from): what the model's
    `meta` records, except the keys the user gave as `flags`, and those it does not record, which `given`
    (the config's) supplies. own_size: keep given's image size (fine-tuning chooses its own)."""
    saved = recorded(meta)
    if own_size:
        saved.pop("resize", None)
    chosen = dataclasses.replace(given, **{k: v for k, v in saved.items() if k not in flags})
    as_recorded = dataclasses.replace(given, **saved)
    overridden = sorted(k for k in set(flags) & set(saved) if getattr(as_recorded, k) != getattr(given, k))
    origin = meta.get("preset") or "the model's meta"
    if not saved:
        where = "the config (the model records none)"
    elif overridden:
        where = f"{origin}, except {', '.join('--' + k for k in overridden)} from the command line"
    else:
        where = origin
    return chosen, f"preprocessing: {chosen.describe()} (from {where})"
