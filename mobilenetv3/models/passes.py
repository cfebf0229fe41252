"""Replacement passes over a built network, so one model (model.py) serves training, export and GPU.

- use_cpu_kernels: on CPU in float32, the AVX2 kernels (cpu_kernels.py) run the depthwise convolutions,
  hard-swish and the global pool. Parameters and their names stay as they are, so checkpoints do not
  depend on whether the pass ran.
- written_out: hard-swish and hard-sigmoid as ReLU6 arithmetic and the global pool as ReduceMean, which
  MindSpore's ONNX exporter knows (it has no mapping for HSwish, HSigmoid and AdaptiveAvgPool2D); for export.
Both change the network in place and return it; the BatchNorm folding for inference is folding.py.
"""
from typing import Callable, Optional

from mindspore import nn, ops

from ..native.cpu_kernels import depthwise_op, global_mean_op, hard_swish_op, kernel_library, kernel_supports
from .mobilenetv3 import GlobalAvgPool, HardSigmoid, HardSwish


def replace_cells(net: nn.Cell, replacement: Callable[[nn.Cell], Optional[nn.Cell]]) -> nn.Cell:
    """Every cell c below `net` for which replacement(c) is not None is swapped for it, in place."""
    for parent in [cell for _, cell in net.cells_and_names()]:
        for name, child in list(parent.name_cells().items()):
            new = replacement(child)
            if new is None:
                continue
            if isinstance(parent, nn.SequentialCell):
                parent[list(parent.name_cells()).index(name)] = new
            else:
                setattr(parent, name, new)
    return net


class KernelHardSwish(nn.Cell):
    def __init__(self, library: str):
        super().__init__()
        self.op = hard_swish_op(library)

    def construct(self, x):
        return self.op(x)


class KernelGlobalAvgPool(nn.Cell):
    def __init__(self, library: str, keep_dims: bool):
        super().__init__()
        self.op = global_mean_op(library)
        self.keep_dims = keep_dims

    def construct(self, x):
        pooled = self.op(x)
        return pooled if self.keep_dims else ops.flatten(pooled)


def is_depthwise(conv: nn.Conv2d) -> bool:
    """A convolution the depthwise kernel can run: one group per channel, odd square kernel padded by half."""
    kernel, stride = conv.kernel_size, conv.stride
    return (conv.group == conv.in_channels == conv.out_channels > 1 and kernel[0] == kernel[1]
            and stride[0] == stride[1] and conv.pad_mode == "pad" and conv.padding == kernel[0] // 2
            and kernel_supports(conv.in_channels, kernel[0], stride[0]))


def use_cpu_kernels(net: nn.Cell) -> nn.Cell:
    """Run `net`'s depthwise convolutions, hard-swish and global pools on the CPU kernel library, where it
    runs in this process (else `net` is left as it is). Float32 only: not for mixed precision."""
    library = kernel_library()
    if library is None:
        return net
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.Conv2d) and is_depthwise(cell):
            cell.conv2d = depthwise_op(library, cell.stride[0])  # nn.Conv2d.construct calls conv2d(x, weight)

    def kernel_cell(cell):
        if isinstance(cell, HardSwish):
            return KernelHardSwish(library)
        if isinstance(cell, GlobalAvgPool):
            return KernelGlobalAvgPool(library, cell.keep_dims)
        return None

    return replace_cells(net, kernel_cell)


class WrittenOutHardSwish(nn.Cell):
    def construct(self, x):
        return x * ops.relu6(x + 3.0) / 6.0


class WrittenOutHardSigmoid(nn.Cell):
    def construct(self, x):
        return ops.relu6(x + 3.0) / 6.0


class WrittenOutGlobalAvgPool(nn.Cell):
    def __init__(self, keep_dims: bool):
        super().__init__()
        self.keep_dims = keep_dims

    def construct(self, x):
        return ops.mean(x, (2, 3), keep_dims=self.keep_dims)


def written_out(net: nn.Cell) -> nn.Cell:
    """Hard-swish and hard-sigmoid as ReLU6 arithmetic, the global pool as ReduceMean (equal to float32
    rounding): ops every exporter knows. A network running the CPU kernels is refused: export one without."""
    if any(isinstance(op, ops.Custom) for _, cell in net.cells_and_names() for op in cell._primitives.values()):
        raise ValueError("this network runs the CPU kernel library's custom ops, which no exporter knows; export "
                         "a network built without use_cpu_kernels (and folded with fused_kernels=False)")
    def exportable(cell):
        if isinstance(cell, HardSwish):
            return WrittenOutHardSwish()
        if isinstance(cell, HardSigmoid):
            return WrittenOutHardSigmoid()
        if isinstance(cell, GlobalAvgPool):
            return WrittenOutGlobalAvgPool(cell.keep_dims)
        return None

    return replace_cells(net, exportable)
