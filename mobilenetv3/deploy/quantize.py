"""int8 ONNX files: static post-training quantization of our float ONNX export with ONNX Runtime,
calibrated on images put through the model's eval transforms."""
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..data.decoding import READ_ERRORS, EncodedImage
from ..data.folders import images_of_folder
from ..data.preprocessing import Preprocessing
from ..data.transforms import eval_image, normalize_batch
from ..errors import UserError
from .export import INPUT_NAME, set_onnx_meta


logger = logging.getLogger(__name__)

INT8_SUFFIX = ".int8.onnx"

CALIBRATION_BATCH = 16  # images per calibration run
FEW_CALIBRATION_IMAGES = 32  # min/max ranges from fewer images miss the rarer large activations


def int8_path(path) -> Path:
    """Where the int8 version of the ONNX file `path` goes: model.onnx -> model.int8.onnx."""
    path = Path(path)
    return path if path.name.endswith(INT8_SUFFIX) else path.with_name(path.name[:-len(".onnx")] + INT8_SUFFIX)


def calibration_paths(folder, count: int) -> list:
    """`count` image files of `folder` (recursively), evenly spaced over their sorted list: the same files on
    every run, and every class folder of a class-folder tree contributes in proportion to its size."""
    paths = images_of_folder(folder, "--calib_data", "; give a folder of images like those the model will see")
    picks = np.unique(np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int))
    return [paths[i] for i in picks]


def calibration_images(paths, preprocessing: Preprocessing) -> Tuple[np.ndarray, list]:
    """(`paths` as the network gets them in evaluation (eval transforms, normalised), stacked as
    float32 NCHW, [(path, error)] of the unreadable ones skipped); none readable is a UserError, a weak
    calibration set (weak_calibration) a warning. All are held at once (300 images of 224 px: 180 MB), so
    that calibration can run them batch by batch."""
    images, shorter_sides, skipped = [], [], []
    for path in paths:
        try:
            encoded = EncodedImage(path)
            images.append(eval_image(encoded, preprocessing))
            shorter_sides.append(min(encoded.width, encoded.height))
        except READ_ERRORS as err:
            skipped.append((path, err))
    if not images:
        raise UserError(f"none of the {len(paths)} calibration images could be read (first: {skipped[0][0]}: "
                        f"{skipped[0][1]})")
    for warning in weak_calibration(shorter_sides, preprocessing.resize):
        logger.warning(warning)
    return normalize_batch(np.stack(images), preprocessing), skipped


def weak_calibration(shorter_sides: list, image_size: int) -> list:
    """What makes calibration on images with these shorter sides weak for a model taking `image_size` pixels:
    fewer than FEW_CALIBRATION_IMAGES, or images mostly under half the model's size (blown up by the eval
    resize, blurrier than anything the model was made for)."""
    warnings = []
    if len(shorter_sides) < FEW_CALIBRATION_IMAGES:
        warnings.append(f"int8 calibrated on {len(shorter_sides)} image{'s' * (len(shorter_sides) != 1)} only: "
                        f"activation ranges from fewer than {FEW_CALIBRATION_IMAGES} are weak; give --calib_data a "
                        "folder of a few hundred images like those the model will see (--calib_images, default 300)")
    typical = int(np.median(shorter_sides))
    if typical * 2 < image_size:
        warnings.append(f"the calibration images are {typical} px on their shorter side (median), the model takes "
                        f"{image_size} px: calibrated on them blown up {image_size / typical:.1f}x, its ranges may "
                        "not fit real images; give --calib_data images near the model's size or larger")
    return warnings


def readers_of(model) -> dict:
    """Tensor name -> the nodes of `model`'s graph that read it."""
    readers = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            readers[name].append(node)
    return readers


ACTIVATIONS = ("HardSwish", "HardSigmoid", "Relu", "Clip")  # ONNX Runtime fuses these into a float32 Conv


def float_nodes(model) -> list:
    """Names of the nodes quantize_onnx leaves in float32: the stem, each convolution reading the graph's
    input, with an activation that is its only reader. Its three input channels are too few for ONNX
    Runtime's int8 convolution to beat the float32 one, its input is float32 anyway, and the float32
    convolution runs the activation fused in (docs/performance.md, int8, says why the rest is quantized)."""
    readers = readers_of(model)
    names = []
    for stem in (node for tensor in model.graph.input for node in readers[tensor.name] if node.op_type == "Conv"):
        names.append(stem.name)
        after = readers[stem.output[0]]
        if len(after) == 1 and after[0].op_type in ACTIVATIONS:
            names.append(after[0].name)
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


INT8_ENGINES = ("onnxruntime", "openvino")


def quantize_onnx(float_path, path, images: np.ndarray, meta: dict, engine: str = "onnxruntime") -> Path:
    """Static int8 quantization of our float ONNX export `float_path` into `path` with ONNX Runtime:
    activations uint8 and weights int8 per output channel (ONNX Runtime's u8s8 kernels, VNNI where the CPU
    has it), QDQ format, activation ranges (min/max) measured on `images` (float32 NCHW, as the model gets
    them: calibration_images); float_nodes (the stem) stay float32. The classifier's Gemms are quantized
    too (they hold most of the weights) but give float32 outputs, so the logits are not rounded to an int8
    grid. The graph is shaped for `engine`, which either runs: for onnxruntime the hard activations are
    written out into int8 Adds and Muls (write_out_hard_activations); OpenVINO instead fuses HardSwish and
    HardSigmoid into the int8 convolutions before them, faster than it runs the written-out form. `path`
    carries `meta` with "quantization" added (see set_onnx_meta); returns `path`."""
    if engine not in INT8_ENGINES:
        raise ValueError(f"engine is {engine!r}, not one of {INT8_ENGINES}")
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
    if engine == "onnxruntime":
        write_out_hard_activations(model, keep=left_float)
    path = Path(path)
    float_file = path.with_name(f".{path.name}.{os.getpid()}.float.onnx")
    advice = _WithoutPreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        onnx.save(model, str(float_file))
        # reduce_range: weights in 7 bits. ONNX Runtime's u8 x s8 kernels on CPUs without VNNI (AVX2, early
        # AVX-512) sum pairs of products in 16 bits, which full-range weights overflow (saturated sums): on an
        # AVX2 EPYC the tests' int8 logits strayed several times further from float32's than with VNNI.
        quantize_static(str(float_file), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=left_float,
                        extra_options={"CalibStridedMinMax": 1, "OpTypesToExcludeOutputQuantization": ["Gemm"]})
    finally:
        logging.getLogger().removeFilter(advice)
        float_file.unlink(missing_ok=True)
    model = onnx.load(str(path))
    settings = dict(format="QDQ", activations="uint8", weights="int8 per channel", calibration="minmax",
                    calibration_images=len(images), engine=engine)
    set_onnx_meta(model, dict(meta, quantization=settings))
    onnx.save(model, str(path))
    return Path(path)
