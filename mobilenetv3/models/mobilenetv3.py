"""MobileNetV3-Small/Large (Howard et al., 2019) with torchvision's exact layout.

The architecture is data (architectures.py): one table row per inverted-residual block. One generic
block (InvertedResidual) builds every row, so parameter names and shapes match torchvision one-to-one
(features.<i>.block.<j>..., classifier.0 / classifier.3) and converted weights load without special cases.
"""
from typing import NamedTuple

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal, Normal

from .architectures import MODEL_DEFAULTS, STEM_CHANNELS, Architecture, BlockConfig, make_divisible
from .dropout import StepDropout


class HardSwish(nn.Cell):
    """x * ReLU6(x + 3) / 6."""

    def construct(self, x):
        return ops.hardswish(x)


class HardSigmoid(nn.Cell):
    """ReLU6(x + 3) / 6."""

    def construct(self, x):
        return ops.hardsigmoid(x)


class GlobalAvgPool(nn.Cell):
    """Mean over height and width: (N, C, 1, 1) with keep_dims, else (N, C)."""

    def __init__(self, keep_dims=True):
        super().__init__()
        self.keep_dims = keep_dims

    def construct(self, x):
        pooled = ops.adaptive_avg_pool2d(x, 1)  # on CPU several times faster than ReduceMean
        return pooled if self.keep_dims else ops.flatten(pooled)


ACTIVATIONS = {"RE": nn.ReLU, "HS": HardSwish}


def conv2d(in_ch, out_ch, kernel, stride=1, groups=1, weight_init="normal", bias_init=None) -> nn.Conv2d:
    """nn.Conv2d with torchvision's padding, biased only with `bias_init`."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride, pad_mode="pad", padding=(kernel - 1) // 2, group=groups,
                     has_bias=bias_init is not None, weight_init=weight_init, bias_init=bias_init)


class ConvBNAct(nn.SequentialCell):
    """Conv (no bias) + BatchNorm + optional activation: children named 0, 1, 2 as in torchvision."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, groups=1, activation=None,
                 bn_momentum=MODEL_DEFAULTS["bn_momentum"], bn_eps=MODEL_DEFAULTS["bn_eps"]):
        layers = [conv2d(in_ch, out_ch, kernel, stride, groups, HeNormal(mode="fan_out", nonlinearity="relu")),
                  nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum)]
        if activation is not None:
            layers.append(ACTIVATIONS[activation]())
        super().__init__(layers)


class SqueezeExcitation(nn.Cell):
    """Channel attention: pool, 1x1 conv down (ReLU), 1x1 conv up (hard-sigmoid), rescale."""

    def __init__(self, channels):
        super().__init__()
        squeezed = make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeezed, 1, has_bias=True,
                             weight_init=HeNormal(mode="fan_out", nonlinearity="relu"), bias_init="zeros")
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeezed, channels, 1, has_bias=True,
                             weight_init=HeNormal(mode="fan_out", nonlinearity="relu"), bias_init="zeros")
        self.hardsigmoid = HardSigmoid()
        self.pool = GlobalAvgPool()

    def construct(self, x):
        scale = self.pool(x)
        scale = self.hardsigmoid(self.fc2(self.relu(self.fc1(scale))))
        return x * scale


class InvertedResidual(nn.Cell):
    """Expand (1x1, skipped when it would not widen) -> depthwise kxk -> SE -> project (1x1, linear), added to
    the input when the shapes allow, the branch then dropped per sample with probability `drop_path_rate`
    in training (stochastic depth; its masks are stream `stream` of StepDropout's)."""

    def __init__(self, in_ch, row: BlockConfig, width: float, bn_momentum: float, bn_eps: float,
                 drop_path_rate: float = 0.0, stream: int = 0):
        super().__init__()
        expanded, out = make_divisible(row.expanded * width), make_divisible(row.out * width)
        bn = dict(bn_momentum=bn_momentum, bn_eps=bn_eps)
        layers = []
        if expanded != in_ch:
            layers.append(ConvBNAct(in_ch, expanded, 1, activation=row.activation, **bn))
        layers.append(ConvBNAct(expanded, expanded, row.kernel, row.stride, groups=expanded,
                                activation=row.activation, **bn))
        if row.use_se:
            layers.append(SqueezeExcitation(expanded))
        layers.append(ConvBNAct(expanded, out, 1, **bn))
        self.block = nn.SequentialCell(layers)
        self.use_residual = row.stride == 1 and in_ch == out
        self.drop_path = StepDropout(drop_path_rate if self.use_residual else 0.0, per_sample=True, stream=stream)
        self.out_channels = out

    def construct(self, x):
        y = self.block(x)
        if self.use_residual:
            y = self.drop_path(y) + x
        return y


class MobileNetV3(nn.Cell):
    """features (stem, blocks, last 1x1 conv) -> global average pool -> classifier.

    forward_features(x) returns the pooled feature vector (576 for Small, 960 for Large at width 1.0)
    for fine-tuning and embeddings; construct(x) returns the logits.

    `drop_path_rate`: stochastic depth as timm's builder sets it, block i of n rows dropping its residual
    branch with probability drop_path_rate * i / (n + 1) (timm counts the last 1x1 conv as a block).
    """

    def __init__(self, arch: Architecture, num_classes=MODEL_DEFAULTS["num_classes"], width=MODEL_DEFAULTS["width"],
                 dropout_rate=MODEL_DEFAULTS["dropout_rate"], bn_momentum=MODEL_DEFAULTS["bn_momentum"],
                 bn_eps=MODEL_DEFAULTS["bn_eps"], drop_path_rate=0.0):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be a float > 0, got {width!r}")
        if not (isinstance(num_classes, int) and num_classes > 0):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        for name, rate in (("dropout_rate", dropout_rate), ("drop_path_rate", drop_path_rate)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
        bn = dict(bn_momentum=bn_momentum, bn_eps=bn_eps)
        channels = make_divisible(STEM_CHANNELS * width)
        layers = [ConvBNAct(3, channels, 3, 2, activation="HS", **bn)]
        for i, row in enumerate(arch.blocks):
            layers.append(InvertedResidual(channels, row, width, **bn, drop_path_rate=drop_path_rate * i /
                                           (len(arch.blocks) + 1), stream=1 + i))  # stream 0: the classifier's
            channels = layers[-1].out_channels
        self.num_features = 6 * channels
        layers.append(ConvBNAct(channels, self.num_features, 1, activation="HS", **bn))
        self.features = nn.SequentialCell(layers)
        self.pool = GlobalAvgPool(keep_dims=False)

        hidden = make_divisible(arch.head_channels * width)
        self.classifier = nn.SequentialCell([
            nn.Dense(self.num_features, hidden, weight_init=Normal(0.01), bias_init="zeros"),
            HardSwish(),
            StepDropout(dropout_rate),  # nn.Dropout's masks cannot be restored on resume
            nn.Dense(hidden, num_classes, weight_init=Normal(0.01), bias_init="zeros"),
        ])
        self.num_classes = num_classes

    def forward_features(self, x):
        return self.pool(self.features(x))

    def construct(self, x):
        return self.classifier(self.forward_features(x))

    def reset_classifier(self, num_classes: int):
        """Replace the last Linear layer (fine-tuning on another label set), freshly initialised."""
        hidden = self.classifier[0].out_channels
        self.classifier[3] = nn.Dense(hidden, num_classes, weight_init=Normal(0.01), bias_init="zeros")
        self.classifier[3].update_parameters_name("classifier.3.")
        self.num_classes = num_classes


class Complexity(NamedTuple):
    params: int  # trainable parameters
    macs: int  # multiply-accumulates of one forward pass on one image


def count_complexity(net: MobileNetV3, image_size: int = 224) -> Complexity:
    """Trainable parameters and MACs of one image, by tracing output shapes of every conv and Dense."""
    macs = 0
    handles = []

    def add_macs(cell, _inputs, output):
        nonlocal macs
        if isinstance(cell, nn.Conv2d):
            _, c_out, h, w = output.shape
            k_h, k_w = cell.kernel_size
            macs += h * w * c_out * (cell.in_channels // cell.group) * k_h * k_w
        else:
            macs += cell.in_channels * cell.out_channels

    for _, cell in net.cells_and_names():
        if isinstance(cell, (nn.Conv2d, nn.Dense)):
            handles.append(cell.register_forward_hook(add_macs))
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)  # hooks run in PyNative only
    was_training = net.training
    try:
        net.set_train(False)
        net(ops.zeros((1, 3, image_size, image_size), ms.float32))
    finally:
        for handle in handles:
            handle.remove()
        net.set_train(was_training)
        ms.set_context(mode=mode)
    params = sum(p.size for p in net.trainable_params())
    return Complexity(params, macs)
