"""The inference network: BatchNorm folded into the convolutions, and on CPU fused kernels.

In inference BatchNorm is a fixed per-channel affine map, y = (conv(x) - mean) * gamma / sqrt(var + eps)
+ beta, so it can be merged into the convolution before it: weight * s and bias beta - mean * s with
s = gamma / sqrt(var + eps), computed in float64. Where the CPU kernel library runs (cpu_kernels.py),
each folded convolution's bias and activation then take one kernel (a depthwise convolution with them,
all in one) and each squeeze-excitation one kernel, where MindSpore would run 2-8 small kernels:
BatchNorm, the element-wise ops of hard-swish and the squeeze-excitation were half of the CPU inference
time of MobileNetV3-Small at batch 1 (docs/performance.md). Elsewhere the folded convolutions run
Conv2D + BiasAdd and the model's own activations.

The logits change by float32 rounding only, about 1e-6 of their size (tests/test_folding.py). The
inference network cannot train, and its parameters are not the checkpoint's (folded convolutions hold a
weight and a bias under the ConvBNAct's name, BatchNorm parameters are gone): load weights first, fold
after, and fold a fresh network, never the one being trained.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ..native.cpu_kernels import custom_op, kernel_library, output_shape
from .mobilenetv3 import ConvBNAct, HardSwish, SqueezeExcitation
from .passes import is_depthwise, use_cpu_kernels

KERNEL_ACTIVATIONS = {type(None): "Id", nn.ReLU: "Relu", HardSwish: "HSwish"}  # -> the library's entry names


class FoldedConvAct(nn.Cell):
    """A ConvBNAct for inference: activation(conv(x, weight) + bias), its BatchNorm folded into weight and bias.

    With `library`, a depthwise convolution runs as one kernel and any other convolution as Conv2D and
    one bias-and-activation kernel; without, as Conv2D, BiasAdd and the activation cell.
    """

    def __init__(self, block: ConvBNAct, library=None):
        super().__init__()
        conv, bn = block[0], block[1]
        activation = block[2] if len(block) > 2 else None
        scale = bn.gamma.asnumpy().astype(np.float64) / np.sqrt(bn.moving_variance.asnumpy().astype(np.float64) + bn.eps)
        weight = conv.weight.asnumpy().astype(np.float64) * scale[:, None, None, None]
        bias = bn.beta.asnumpy().astype(np.float64) - bn.moving_mean.asnumpy().astype(np.float64) * scale
        self.weight = ms.Parameter(ms.Tensor(weight.astype(np.float32)), name="weight")
        self.bias = ms.Parameter(ms.Tensor(bias.astype(np.float32)), name="bias")
        self.conv2d = conv.conv2d  # nn.Conv2d's op, configured with its padding, stride and groups
        self.bias_add = ops.BiasAdd()
        self.mode, self.activation = "plain", activation
        if library is not None:  # the kernel applies the activation
            entry, self.activation = KERNEL_ACTIVATIONS[type(activation)], None
            if is_depthwise(conv):
                self.mode, self.fused = "depthwise", custom_op(library, f"DwFwd{entry}{conv.stride[0]}",
                                                              output_shape(conv.stride[0]))
            else:
                self.mode, self.fused = "bias", custom_op(library, f"Bias{entry}", lambda x, b: x)

    def construct(self, x):
        if self.mode == "depthwise":
            return self.fused(x, self.weight, self.bias)
        y = self.conv2d(x, self.weight)
        if self.mode == "bias":
            return self.fused(y, self.bias)
        y = self.bias_add(y, self.bias)
        if self.activation is not None:
            y = self.activation(y)
        return y


class FusedSqueezeExcitation(nn.Cell):
    """SqueezeExcitation as one kernel: mean, fc1 + ReLU, fc2 + hard-sigmoid and the rescale."""

    def __init__(self, se: SqueezeExcitation, library):
        super().__init__()
        # copies: assigning the cells themselves would rename the parameters of `se`
        self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias = (
            ms.Parameter(param.value().copy(), name=name) for name, param in
            (("fc1_weight", se.fc1.weight), ("fc1_bias", se.fc1.bias), ("fc2_weight", se.fc2.weight),
             ("fc2_bias", se.fc2.bias)))
        self.squeeze_excite = custom_op(library, "SqueezeExcite", lambda x, *_: x)

    def construct(self, x):
        return self.squeeze_excite(x, self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias)


def fold_for_inference(net: nn.Cell, fused_kernels: bool = True) -> nn.Cell:
    """Fold every ConvBNAct's BatchNorm, in place, and with `fused_kernels` use the CPU kernel library where
    it runs (kernel_library(); the remaining hard-swish and pool too: passes.use_cpu_kernels); returns `net`,
    set to inference mode. Folding twice changes nothing."""
    library = kernel_library() if fused_kernels else None
    for parent in [cell for _, cell in net.cells_and_names() if isinstance(cell, nn.SequentialCell)]:
        for index, cell in enumerate(parent):
            if isinstance(cell, ConvBNAct) and isinstance(cell[1], nn.BatchNorm2d):
                parent[index] = FoldedConvAct(cell, library)
            elif isinstance(cell, SqueezeExcitation) and library is not None:
                parent[index] = FusedSqueezeExcitation(cell, library)
    if library is not None:
        use_cpu_kernels(net)
    return net.set_train(False)
