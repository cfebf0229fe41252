"""Published MobileNetV3 weight sets (--preset): where each comes from, and the preprocessing and accuracy
its publisher gives (torchvision's weight enums, timm's pretrained_cfg; ImageNet-1k val at 224 px)."""
from dataclasses import dataclass
from typing import Optional, Tuple

from ..data.imagenet import NUM_CLASSES
from ..data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError


@dataclass(frozen=True)
class Preset:
    """A published weight set: where it comes from and how it was evaluated for its published accuracy."""
    source: str
    model: str
    file: str  # the file its publisher serves
    interpolation: str
    crop_pct: float
    top1: float
    top5: Optional[float]  # None where the publisher gives none
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    width: float = 1.0  # with num_classes, what the weights are: weights that are not are refused
    num_classes: int = NUM_CLASSES

    def preprocessing(self) -> dict:
        return dict(interpolation=self.interpolation, crop_pct=self.crop_pct, mean=list(self.mean), std=list(self.std))


PRESETS = {
    "torchvision/mobilenet_v3_small.IMAGENET1K_V1": Preset(
        "torchvision", "mobilenet_v3_small", "mobilenet_v3_small-047dcff4.pth", "bilinear", 224 / 256, 67.668, 87.402),
    "torchvision/mobilenet_v3_large.IMAGENET1K_V1": Preset(
        "torchvision", "mobilenet_v3_large", "mobilenet_v3_large-8738ca79.pth", "bilinear", 224 / 256, 74.042, 91.340),
    "torchvision/mobilenet_v3_large.IMAGENET1K_V2": Preset(
        "torchvision", "mobilenet_v3_large", "mobilenet_v3_large-5c1a4163.pth", "bilinear", 224 / 232, 75.274, 92.566),
    "timm/mobilenetv3_small_100.lamb_in1k": Preset(
        "timm", "mobilenet_v3_small", "model.safetensors", "bicubic", 0.875, 67.636, None),
    "timm/mobilenetv3_large_100.ra_in1k": Preset(
        "timm", "mobilenet_v3_large", "model.safetensors", "bicubic", 0.875, 75.766, 92.542),
    "timm/mobilenetv3_large_100.miil_in21k_ft_in1k": Preset(
        "timm", "mobilenet_v3_large", "model.safetensors", "bilinear", 0.875, 77.92, None, (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0)),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown --preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
