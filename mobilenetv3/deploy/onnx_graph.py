"""Our ONNX export rewritten into the form torchvision's export has, which is what ONNX Runtime runs
fastest: BatchNorm folded into the convolution before it, and the written-out x * relu6(x + 3) / 6 and
relu6(x + 3) / 6 (Add, Clip, Mul, Div) replaced by single HardSwish and HardSigmoid ops, which ONNX
Runtime fuses into the convolutions; opset 14, the first with HardSwish."""
from collections import defaultdict

import numpy as np


ONNX_OPSET = 14  # the first with HardSwish


def fuse_onnx_graph(model):
    """Fold BatchNorm into convolutions and turn the written-out hard activations into HardSwish and
    HardSigmoid nodes, in place (see the module docstring). Numerics change by float32 rounding only."""
    graph = _OnnxGraph(model.graph)
    replacements = {}  # id(node) -> the node replacing it, or None to drop it
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            replacements.update(graph.fold_batch_norm(node))
        elif node.op_type == "Add":
            replacements.update(graph.fuse_hard_activation(node))
    nodes = [replacements.get(id(node), node) for node in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(node for node in nodes if node is not None)
    used = {name for node in model.graph.node for name in node.input}
    initializers = [tensor for tensor in list(model.graph.initializer) + graph.new_constants if tensor.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, ONNX_OPSET)


class _OnnxGraph:
    """Who produces and who reads each tensor of an ONNX graph, its constants, and the two rewrites."""

    def __init__(self, graph):
        from onnx import numpy_helper
        self.constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
        self.producers = {name: node for node in graph.node for name in node.output}
        self.consumers = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.new_constants = []

    def is_scalar(self, name, value) -> bool:
        array = self.constants.get(name)
        return array is not None and array.size == 1 and float(array.ravel()[0]) == value

    def only_consumer(self, name, op_type):
        """The node reading tensor `name` if it is the only one and of `op_type`, else None."""
        users = self.consumers[name]
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def add_constant(self, array, name) -> str:
        from onnx import numpy_helper
        self.new_constants.append(numpy_helper.from_array(array, name))
        return name

    def fold_batch_norm(self, bn) -> dict:
        """Conv -> BatchNormalization (the conv's only reader, all weights constant) -> one Conv with a bias."""
        from onnx import helper
        conv = self.producers.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(bn.output) != 1 or len(self.consumers[conv.output[0]]) != 1 \
                or len(self.consumers[conv.input[1]]) != 1 \
                or not all(name in self.constants for name in list(conv.input[1:]) + list(bn.input[1:])):
            return {}
        gamma, beta, mean, variance = (self.constants[name].astype(np.float64) for name in bn.input[1:])
        epsilon = next((attribute.f for attribute in bn.attribute if attribute.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(variance + epsilon)
        weight = self.constants[conv.input[1]]
        bias = self.constants[conv.input[2]].astype(np.float64) if len(conv.input) > 2 else 0.0
        folded_weight = (weight * scale.reshape(-1, 1, 1, 1)).astype(weight.dtype)
        folded_bias = ((bias - mean) * scale + beta).astype(weight.dtype)
        inputs = [conv.input[0], self.add_constant(folded_weight, f"{conv.input[1]}.folded"),
                  self.add_constant(folded_bias, f"{conv.input[1]}.folded_bias")]
        folded = helper.make_node("Conv", inputs, list(bn.output), name=conv.name)
        folded.attribute.extend(conv.attribute)
        return {id(conv): None, id(bn): folded}

    def fuse_hard_activation(self, add) -> dict:
        """Add(x, 3) -> Clip(0, 6) -> [Mul(x, .)] -> Div(6): HardSwish(x) with the Mul, else HardSigmoid(x)."""
        from onnx import helper
        x = next((a for a, b in (add.input, add.input[::-1]) if self.is_scalar(b, 3.0) and a not in self.constants),
                 None) if len(add.input) == 2 else None
        clip = self.only_consumer(add.output[0], "Clip")
        if x is None or clip is None or len(clip.input) != 3 \
                or not (self.is_scalar(clip.input[1], 0.0) and self.is_scalar(clip.input[2], 6.0)):
            return {}
        mul = self.only_consumer(clip.output[0], "Mul")
        if mul is not None and set(mul.input) == {x, clip.output[0]}:
            pattern, fused = [add, clip, mul], helper.make_node("HardSwish", [x], [], name=f"{add.name}.hard_swish")
        else:
            pattern, fused = [add, clip], helper.make_node("HardSigmoid", [x], [], alpha=1.0 / 6.0, beta=0.5,
                                                           name=f"{add.name}.hard_sigmoid")
        div = self.only_consumer(pattern[-1].output[0], "Div")
        if div is None or div.input[0] != pattern[-1].output[0] or not self.is_scalar(div.input[1], 6.0):
            return {}
        fused.output.append(div.output[0])
        return {**{id(node): None for node in pattern}, id(div): fused}
