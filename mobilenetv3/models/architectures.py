"""The registry of models: each name's architecture as data, one table row per inverted-residual block
(Howard et al., 2019, Tables 1 and 2, as torchvision builds them), and the settings a model is built with
when nobody says otherwise. Plain Python: the CLI reads the names without starting MindSpore.

A new variant is a new entry of ARCHITECTURES (and, for converted weights, of TIMM_STAGE_SIZES in
deploy/convert.py)."""
from dataclasses import dataclass
from typing import List, NamedTuple


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never going down by more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class BlockConfig(NamedTuple):
    """One row of a block table, channels at width 1.0."""
    kernel: int
    expanded: int
    out: int
    use_se: bool
    activation: str  # "RE" or "HS"
    stride: int


# fmt: off
LARGE_BLOCKS = [
    BlockConfig(3, 16, 16, False, "RE", 1),
    BlockConfig(3, 64, 24, False, "RE", 2),
    BlockConfig(3, 72, 24, False, "RE", 1),
    BlockConfig(5, 72, 40, True, "RE", 2),
    BlockConfig(5, 120, 40, True, "RE", 1),
    BlockConfig(5, 120, 40, True, "RE", 1),
    BlockConfig(3, 240, 80, False, "HS", 2),
    BlockConfig(3, 200, 80, False, "HS", 1),
    BlockConfig(3, 184, 80, False, "HS", 1),
    BlockConfig(3, 184, 80, False, "HS", 1),
    BlockConfig(3, 480, 112, True, "HS", 1),
    BlockConfig(3, 672, 112, True, "HS", 1),
    BlockConfig(5, 672, 160, True, "HS", 2),
    BlockConfig(5, 960, 160, True, "HS", 1),
    BlockConfig(5, 960, 160, True, "HS", 1),
]
SMALL_BLOCKS = [
    BlockConfig(3, 16, 16, True, "RE", 2),
    BlockConfig(3, 72, 24, False, "RE", 2),
    BlockConfig(3, 88, 24, False, "RE", 1),
    BlockConfig(5, 96, 40, True, "HS", 2),
    BlockConfig(5, 240, 40, True, "HS", 1),
    BlockConfig(5, 240, 40, True, "HS", 1),
    BlockConfig(5, 120, 48, True, "HS", 1),
    BlockConfig(5, 144, 48, True, "HS", 1),
    BlockConfig(5, 288, 96, True, "HS", 2),
    BlockConfig(5, 576, 96, True, "HS", 1),
    BlockConfig(5, 576, 96, True, "HS", 1),
]
# fmt: on


@dataclass(frozen=True)
class Architecture:
    blocks: List[BlockConfig]
    head_channels: int  # hidden width of the classifier, before the width multiplier


ARCHITECTURES = {
    "mobilenet_v3_small": Architecture(SMALL_BLOCKS, 1024),
    "mobilenet_v3_large": Architecture(LARGE_BLOCKS, 1280),
}

STEM_CHANNELS = 16


def list_models() -> List[str]:
    return sorted(ARCHITECTURES)


# What a model is built with when neither the caller nor a checkpoint's meta says otherwise. BatchNorm
# momentum in MindSpore's convention (torch's 0.01); timm's weights need eps 1e-5 (their meta says so).
MODEL_DEFAULTS = {"num_classes": 1000, "width": 1.0, "dropout_rate": 0.2, "bn_momentum": 0.99, "bn_eps": 1e-3}
