"""Checkpoint averaging: one checkpoint whose weights are the element-wise mean of several of one model's.

torchvision's MobileNetV3 recipe evaluates the average of its last checkpoints rather than the last one.
Every floating-point entry is averaged: the weights, BatchNorm's running mean and variance, EMA weights
and optimiser state. Integer entries (step counters) are the last checkpoint's, as is the meta, which
also records what was averaged under "averaged". The result loads wherever a checkpoint does.
"""
import hashlib
from pathlib import Path
from typing import List, Sequence

import mindspore as ms
import numpy as np

from . import files
from .meta import NETWORK_KEYS
from ..errors import UserError


def last_checkpoints(directory, count: int) -> List[Path]:
    """The `count` latest checkpoints of the run in `directory`, oldest first: in the order the run wrote
    them, which is that of their <prefix>-<epoch>_<step>.ckpt names (files.list_checkpoints)."""
    directory = Path(directory)
    if count < 2:
        raise UserError(f"--last {count}: averaging needs at least two checkpoints; pass --last 2 or more")
    if not directory.is_dir():
        raise UserError(f"--ckpt_save_dir {directory} is not a directory")
    found = files.list_checkpoints(directory)
    prefixes = sorted({files.NAME_PATTERN.match(path.name)["prefix"] for path in found})
    if len(prefixes) > 1:
        raise UserError(f"--ckpt_save_dir {directory} holds checkpoints of several models ({', '.join(prefixes)}); "
                        "pass the ones to average with --inputs")
    if len(found) < count:
        raise UserError(f"--last {count}: {directory} holds {len(found)} checkpoint{'s' * (len(found) != 1)} "
                        f"named <model>-<epoch>_<step>.ckpt; pass a smaller --last (training keeps "
                        "keep_checkpoint_max of them)")
    return found[-count:]


def average(paths: Sequence) -> tuple:
    """({name: array}, meta) of the average of the checkpoints at `paths` (see the module docstring).

    Every file must be another (by path and by content: a copy would count twice), of the model the first
    is for (its meta), holding the same names with the same shapes and types; the first that is not is one
    error naming it. Files are read one at a time, summed in float64.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise UserError(f"averaging needs at least two checkpoints, got {len(paths)}")
    check_distinct(paths)
    sums, reference, meta, records = {}, None, {}, []
    for path in paths:
        params, meta = files.load(path)
        arrays = {name: param.asnumpy() for name, param in params.items()}
        if reference is None:
            reference = (paths[0], {name: (a.shape, a.dtype) for name, a in arrays.items()})
            sums = {name: np.zeros(a.shape, np.float64) for name, a in arrays.items()
                    if np.issubdtype(a.dtype, np.floating)}
            network = {key: meta[key] for key in NETWORK_KEYS if key in meta}
        check_same_model(path, meta, paths[0], network)
        check_same_entries(path, arrays, *reference)
        for name, total in sums.items():
            total += arrays[name]
        records.append({"file": str(path), "epoch": meta.get("epoch"), "step": meta.get("step")})
    averaged = {name: (total / len(paths)).astype(reference[1][name][1]) for name, total in sums.items()}
    integers = {name: value for name, value in arrays.items() if name not in sums}  # the last checkpoint's
    return {**averaged, **integers}, dict(meta, averaged=records)


def check_distinct(paths: List[Path]):
    """One error if a checkpoint is given twice: the same file (under any name) or a copy of one."""
    seen = {}
    for path in paths:
        with open(files.require_file(path), "rb") as source:
            digest = hashlib.file_digest(source, "sha256").hexdigest()
        for key, how in ((path.resolve(), "is the same file as"), (digest, "has the same content as")):
            if key in seen:
                raise UserError(f"checkpoint {path} {how} {seen[key]}: it would count twice in the average; "
                                "pass each checkpoint once")
            seen[key] = path


def check_same_model(path, meta: dict, first: Path, network: dict):
    """One error if the meta of `path` records another model, width or number of classes than the first's."""
    for key, value in network.items():
        if key in meta and meta[key] != value:
            raise UserError(f"checkpoint {path} is for {key} {meta[key]!r}, but {first} for {key} {value!r}: "
                            "average checkpoints of one model")


def check_same_entries(path, arrays: dict, first: Path, entries: dict):
    for name, array in arrays.items():
        if name not in entries:
            raise UserError(f"checkpoint {path} has parameter {name}, which {first} has not: average checkpoints "
                            "of one model and one run")
        shape, dtype = entries[name]
        if (array.shape, array.dtype) != (shape, dtype):
            raise UserError(f"checkpoint {path}: parameter {name} is {array.dtype}{list(array.shape)} but "
                            f"{dtype}{list(shape)} in {first}: average checkpoints of one model")
    missing = sorted(set(entries) - set(arrays))
    if missing:
        raise UserError(f"checkpoint {path} lacks parameter {missing[0]}"
                        f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}, which {first} has: "
                        "average checkpoints of one model and one run")


def average_checkpoints(paths: Sequence, output) -> Path:
    """Write the average of the checkpoints at `paths` to `output` (atomically); returns its path."""
    output = Path(output)
    if any(output.resolve() == Path(p).resolve() for p in paths):
        raise UserError(f"--output {output} is one of the inputs; write the average to another file")
    if output.suffix != ".ckpt":
        raise UserError(f"--output {output}: name the file <something>.ckpt (MindSpore writes only .ckpt files)")
    tensors, meta = average(paths)
    files.save(output, {name: ms.Tensor(value) for name, value in tensors.items()}, meta)
    return output
