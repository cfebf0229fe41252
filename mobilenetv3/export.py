"""Export an eval-mode model to MINDIR or ONNX for deployment.

Both formats take any batch size: the batch dimension is exported as dynamic (named "batch" in ONNX,
whose input is "images" and output "logits"); height and width are fixed at the exported image size.
The checkpoint's meta (model, num_classes, width, bn_eps, classes, preprocessing...) and the image size
travel with the file, so the file alone is enough to predict: an ONNX file carries them as JSON in its
metadata_props under ONNX_META_KEY (ONNX Runtime reads them without the onnx package:
session.get_modelmeta().custom_metadata_map). A MINDIR has them next to it in <file>.json
(model.mindir.json): MindIR can hold strings (export's custom_func, the proto's user_info), but
mindspore.load gives no access to them, only a deprecated proto reader does.

The ONNX graph is rewritten into the form torchvision's export has, which is what ONNX Runtime runs
fastest: BatchNorm folded into the convolution before it, and the written-out x * relu6(x + 3) / 6 and
relu6(x + 3) / 6 (Add, Clip, Mul, Div) replaced by single HardSwish and HardSigmoid ops, which ONNX
Runtime fuses into the convolutions; opset 14, the first with HardSwish.
"""
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Optional, Tuple

import mindspore as ms
import numpy as np

from . import checkpoint, data
from .errors import UserError
from .passes import written_out

EXTENSIONS = {"MINDIR": ".mindir", "ONNX": ".onnx"}
INPUT_NAME, OUTPUT_NAME, BATCH_AXIS = "images", "logits", "batch"
ONNX_OPSET = 14  # the first with HardSwish
ONNX_META_KEY = "mobilenetv3.meta"  # metadata_props key of the JSON meta in an ONNX file


def with_extension(path, file_format: str) -> Path:
    """`path` with the format's extension added unless it ends with it already."""
    if file_format not in EXTENSIONS:
        raise ValueError(f"file_format must be one of {', '.join(EXTENSIONS)}, got {file_format!r}")
    path, extension = Path(path), EXTENSIONS[file_format]
    return path if path.suffix == extension else path.with_name(path.name + extension)


def export_path(checkpoint, file_format: str, file_name: Optional[str] = None, use_ema: bool = False) -> Path:
    """Where to export: `file_name`, else next to the checkpoint under its name (with -ema added for its EMA
    weights); with the format's extension."""
    checkpoint = Path(checkpoint)
    return with_extension(file_name or checkpoint.with_name(checkpoint.stem + ("-ema" if use_ema else "")), file_format)


def meta_path(exported) -> Path:
    """The JSON file with the meta of an exported MINDIR (or of an ONNX file exported before the meta went
    inside it): its full name with .json added."""
    exported = Path(exported)
    return exported.with_name(exported.name + ".json")


def read_meta(exported, embedded: Optional[str] = None) -> dict:
    """The meta of an exported model: `embedded`, the JSON text the file carries itself (an ONNX file's
    ONNX_META_KEY), else the meta_path file next to it, else {} (a file from elsewhere)."""
    path = meta_path(exported)
    where = f"{path} (the meta of {exported})" if embedded is None else f"the {ONNX_META_KEY} metadata of {exported}"
    try:
        if embedded is None:
            if not path.is_file():
                return {}
            embedded = path.read_text()
        meta = json.loads(embedded)
    except (OSError, ValueError) as err:
        raise UserError(f"{where} is not readable JSON ({err}); export again") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where} is not a JSON object; export again")
    return meta


def checked_meta(path, file_format: str, config, embedded: Optional[str] = None) -> dict:
    """The meta of an exported model (read_meta), checked like a checkpoint's against the flags given: the
    file fixes model, num_classes, width and image size, so only --model, --num_classes, --width or --resize
    saying otherwise is an error (preprocessing.recorded takes the image size from it). num_classes is the
    config's without a meta."""
    checkpoint.require_file(path, f"{file_format} file")
    meta = read_meta(path, embedded)
    checkpoint.check_model_flags(meta, path, config)
    image_size = meta.get("image_size", config.resize)
    if image_size != config.resize and "resize" in getattr(config, "flags", frozenset()):
        raise UserError(f"{path} was exported for {image_size}-pixel images, but --resize is {config.resize}; "
                        f"pass --resize {image_size} or leave it out")
    return dict(meta, num_classes=meta.get("num_classes", config.num_classes))


def export(net, path, file_format: str, image_size: int, meta: Optional[dict] = None) -> Path:
    """Write `net` in eval mode for NCHW float32 images of `image_size`; returns the file written. `net`
    is changed in place into ops every exporter knows (passes.written_out).

    With `meta` (the checkpoint's), the file carries it with "image_size" (see the module docstring).
    """
    path = with_extension(path, file_format)
    meta = None if meta is None else dict(meta, image_size=image_size)
    net.set_train(False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        written_out(net)  # ops both formats know
        if file_format == "MINDIR":
            ms.export(net, ms.Tensor(shape=[None, 3, image_size, image_size], dtype=ms.float32),
                      file_name=str(path), file_format=file_format)
        else:
            _export_onnx(net, path, image_size, meta)
        if not path.is_file():
            raise UserError(f"MindSpore reported no error but wrote no {path}")
        if file_format == "MINDIR" and meta is not None:
            meta_path(path).write_text(json.dumps(meta, indent=1))
        elif file_format == "ONNX":
            meta_path(path).unlink(missing_ok=True)  # an older export's, which would contradict the file
    except OSError as err:
        raise UserError(f"could not write {path} ({err}); check that {path.parent} is writable") from None
    return path


def _export_onnx(net, path: Path, image_size: int, meta: Optional[dict]):
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install onnx (or pip install .[onnx])") from None
    # ms.export(file_format="ONNX") rejects dynamic shapes; ms.onnx.export takes dynamic input axes.
    example = ms.Tensor(np.zeros((1, 3, image_size, image_size), np.float32))
    ms.onnx.export(net, example, file_name=str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                   dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}})
    # The output keeps the example's batch of 1, and onnxruntime warns on every other batch size.
    model = onnx.load(str(path))
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[0].dim_param = BATCH_AXIS
    fuse_onnx_graph(model)
    if meta is not None:
        set_onnx_meta(model, meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def set_onnx_meta(model, meta: dict):
    """Put `meta` into the ONNX model's metadata_props as JSON under ONNX_META_KEY, in place."""
    kept = [prop for prop in model.metadata_props if prop.key != ONNX_META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=ONNX_META_KEY, value=json.dumps(meta))


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


INT8_SUFFIX = ".int8.onnx"
CALIBRATION_BATCH = 16  # images per calibration run


def int8_path(path) -> Path:
    """Where the int8 version of the ONNX file `path` goes: model.onnx -> model.int8.onnx."""
    path = Path(path)
    return path if path.name.endswith(INT8_SUFFIX) else path.with_name(path.name[:-len(".onnx")] + INT8_SUFFIX)


def calibration_paths(folder, count: int) -> list:
    """`count` image files of `folder` (recursively), evenly spaced over their sorted list: the same files on
    every run, and every class folder of a class-folder tree contributes in proportion to its size."""
    paths = data.images_of_folder(folder, "--calib_data", "; give a folder of images like those the model will see")
    picks = np.unique(np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int))
    return [paths[i] for i in picks]


def calibration_images(paths, config) -> Tuple[np.ndarray, list]:
    """(`paths` as the network gets them in evaluation (config's eval transforms, normalised), stacked as
    float32 NCHW, [(path, error)] of the unreadable ones skipped); none readable is a UserError. All are
    held at once (300 images of 224 px: 180 MB), so that calibration can run them batch by batch."""
    images, skipped = [], []
    for path in paths:
        try:
            images.append(data.eval_image(data.EncodedImage(path), config))
        except (OSError, ValueError, RuntimeError) as err:
            skipped.append((path, err))
    if not images:
        raise UserError(f"none of the {len(paths)} calibration images could be read (first: {skipped[0][0]}: "
                        f"{skipped[0][1]})")
    return data.normalize_batch(np.stack(images), config), skipped


def readers_of(model) -> dict:
    """Tensor name -> the nodes of `model`'s graph that read it."""
    readers = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            readers[name].append(node)
    return readers


ACTIVATIONS = ("HardSwish", "HardSigmoid", "Relu", "Clip")  # ONNX Runtime fuses these into a float32 Conv


def float_nodes(model) -> list:
    """Names of the nodes quantize_onnx leaves in float32 (see docs/performance.md, int8, for why the rest is
    quantized):
    - the stem, each convolution reading the graph's input, with an activation that is its only reader: its
      three input channels are too few for ONNX Runtime's int8 convolution to beat the float32 one, its
      input is float32 anyway, and the float32 convolution runs the activation fused in;
    - the classifier, everything after the final global pooling (the mean whose result does not scale
      features, as a squeeze-excitation's does), so the logits are not rounded to an int8 grid."""
    readers = readers_of(model)
    names = []
    for stem in (node for tensor in model.graph.input for node in readers[tensor.name] if node.op_type == "Conv"):
        names.append(stem.name)
        after = readers[stem.output[0]]
        if len(after) == 1 and after[0].op_type in ACTIVATIONS:
            names.append(after[0].name)
    pools = [node for node in model.graph.node if node.op_type == "ReduceMean"]
    pending = list(readers[pools[-1].output[0]]) if pools else []
    while pending:
        node = pending.pop()
        if node.name not in names:
            names.append(node.name)
            pending.extend(reader for output in node.output for reader in readers[output])
    return names


# Ops through which a tensor's scale carries linearly to their output, whatever their other operand.
SCALE_CARRYING_OPS = ("Mul", "ReduceMean", "GlobalAveragePool", "AveragePool", "Flatten", "Reshape")


def weights_taking_in(model, tensor: str, readers: dict) -> Optional[list]:
    """The weight initializers of the Conv/Gemm/MatMul nodes that every path from `tensor` reaches
    through SCALE_CARRYING_OPS (a weight once per path), or None if a path ends elsewhere (an Add, a
    graph output, a weight shared with another node): then the tensor's scale cannot be moved into them.
    `readers`: readers_of(model)."""
    initializers = {init.name for init in model.graph.initializer}
    outputs = {output.name for output in model.graph.output}
    weights, pending = [], [tensor]
    while pending:
        name = pending.pop()
        if name in outputs:
            return None
        for node in readers[name]:
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                weight = node.input[1]
                if node.input[0] != name or weight not in initializers or len(readers[weight]) != 1:
                    return None
                weights.append(weight)
            elif node.op_type in SCALE_CARRYING_OPS:
                pending.append(node.output[0])
            else:
                return None
    return weights


def write_out_hard_activations(model, keep=()):
    """HardSwish(x) -> x * Clip(x + 3, 0, 6) / 6 and HardSigmoid(x) -> Clip(x + 3, 0, 6) / 6, in place, but for
    the nodes named in `keep` (those left in float32, where one op is faster): the inverse of
    fuse_onnx_graph's fusion. ONNX Runtime has int8 kernels for Add and Mul and folds the Clip
    into the quantization range, but none for HardSwish or HardSigmoid, which would run in float32 between
    a DequantizeLinear and a QuantizeLinear. The division goes into the weights of the convolutions that
    take the activation in (weights_taking_in; in MobileNetV3 all do), which saves an int8 Mul per
    activation; where it cannot, it stays a Mul by 1/6."""
    from onnx import helper, numpy_helper
    initializers = {init.name: init for init in model.graph.initializer}
    readers = readers_of(model)  # of the graph as exported: the rewrite keeps every activation's output name
    constants = {"three": 3.0, "zero": 0.0, "six": 6.0}
    nodes = []
    for node in model.graph.node:
        if node.op_type not in ("HardSwish", "HardSigmoid") or node.name in keep:
            nodes.append(node)
            continue
        x, name, output = node.input[0], node.name, node.output[0]
        weights = weights_taking_in(model, output, readers)
        six_times = output if weights is not None else f"{name}.six_times"  # 6 x the activation
        relu6 = six_times if node.op_type == "HardSigmoid" else f"{name}.relu6"
        nodes += [helper.make_node("Add", [x, "hard_activation.three"], [f"{name}.plus3"], name=f"{name}.add"),
                  helper.make_node("Clip", [f"{name}.plus3", "hard_activation.zero", "hard_activation.six"], [relu6],
                                   name=f"{name}.clip")]
        if node.op_type == "HardSwish":
            nodes.append(helper.make_node("Mul", [x, relu6], [six_times], name=f"{name}.mul"))
        if weights is None:
            constants["sixth"] = 1.0 / 6.0
            nodes.append(helper.make_node("Mul", [six_times, "hard_activation.sixth"], [output], name=f"{name}.div"))
        for weight in weights or ():
            scaled = numpy_helper.to_array(initializers[weight]) / np.float32(6)
            initializers[weight].CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), weight))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(numpy_helper.from_array(np.array(value, np.float32), f"hard_activation.{name}")
                                   for name, value in constants.items())


class _WithoutPreprocessingAdvice(logging.Filter):
    """Drops ONNX Runtime's advice to run its quantization pre-processing first: our export is already
    optimised (BatchNorm folded), and that pass would split HardSwish into ops without int8 kernels."""

    def filter(self, record):
        return "pre-processing before quantization" not in record.getMessage()


def quantize_onnx(float_path, path, images: np.ndarray, meta: dict) -> Path:
    """Static int8 quantization of our float ONNX export `float_path` into `path` with ONNX Runtime:
    activations uint8 and weights int8 per output channel (ONNX Runtime's u8s8 kernels, VNNI where the CPU
    has it), QDQ format, activation ranges (min/max) measured on `images` (float32 NCHW, as the model gets
    them: calibration_images); float_nodes (the stem and the classifier) stay float32. `path` carries `meta`
    with "quantization" added (see set_onnx_meta); returns `path`."""
    try:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
    except ImportError:
        raise UserError("--quantize int8 needs ONNX Runtime and onnx: pip install onnxruntime onnx "
                        "(or pip install .[onnx])") from None

    class Reader(CalibrationDataReader):
        """Batch by batch: with CalibStridedMinMax 1 ONNX Runtime computes the ranges of each batch and merges
        them, so only one batch's activations are held at a time. (CalibMaxIntermediateOutputs would bound
        them too, but ONNX Runtime 1.32 drops the batches collected so far instead of merging them.)"""
        pending = iter(())

        def __len__(self):
            return -(-len(images) // CALIBRATION_BATCH)

        def set_range(self, start_index, end_index):
            self.pending = iter(range(start_index, end_index))

        def get_next(self):
            batch = next(self.pending, None)
            return None if batch is None else {
                INPUT_NAME: images[batch * CALIBRATION_BATCH:(batch + 1) * CALIBRATION_BATCH]}

    model = onnx.load(str(float_path))
    left_float = float_nodes(model)
    write_out_hard_activations(model, keep=left_float)
    path = Path(path)
    float_file = path.with_name(f".{path.name}.{os.getpid()}.float.onnx")
    advice = _WithoutPreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        onnx.save(model, str(float_file))
        quantize_static(str(float_file), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=left_float,
                        extra_options={"CalibStridedMinMax": 1})
    finally:
        logging.getLogger().removeFilter(advice)
        float_file.unlink(missing_ok=True)
    model = onnx.load(str(path))
    settings = dict(format="QDQ", activations="uint8", weights="int8 per channel", calibration="minmax",
                    calibration_images=len(images))
    set_onnx_meta(model, dict(meta, quantization=settings))
    onnx.save(model, str(path))
    return Path(path)
