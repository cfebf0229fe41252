"""Data-parallel start-up that works unchanged under mpirun, msrun or as a single process, and the
collectives the package needs (exact sums, a check that every rank has the same config).

    info = init_distributed(device_target, run_distribute)  # before datasets and networks
    check_same_config(config_values)
    dataset = ...(num_shards=info.size, shard_id=info.rank)

Which launcher started the process is launchers.py's; mpirun on CPU goes through mpi_bridge.py. A rank
that dies ends the job: mpirun kills the other ranks when one exits abnormally, and the scheduler dies
with rank 0. Under msrun the scheduler notices the missing heartbeat after MS_NODE_TIMEOUT and msrun then
stops the rest.
"""
import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import EveryRankError, UserError, mindspore_cause
from .device import select_device
from .launchers import (CLUSTER_TIMEOUTS, UNSUPPORTED_LAUNCHERS, detect_launcher, drop_harmless_exit_lines,
                        release_core_binding, without_harmless_lines)
from .mpi_bridge import join_cluster_from_mpirun

logger = logging.getLogger(__name__)


# Only where a launcher started the process: without one, a single process is what the user asked for.
SINGLE_PROCESS_WARNING = "run_distribute is true but the launcher started only one process; running on one process"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    size: int = 1
    is_distributed: bool = False


_state = {"info": DistInfo(), "joined": False, "warned_single": False, "all_gather": None}


def is_main_process() -> bool:
    """True on the one rank that prints step logs and writes checkpoints (on every rank before
    init_distributed)."""
    return _state["info"].rank == 0


def init_distributed(device_target: str, run_distribute: bool, device_id: int = 0) -> DistInfo:
    """Select the device and, if several processes were launched, join them for data-parallel training.

    Sets DATA_PARALLEL with gradients_mean=True, so N ranks at batch B step like one process at batch N*B.
    Raises UserError for launch mistakes a user can fix.
    """
    import mindspore as ms

    launcher = detect_launcher()
    if launcher in UNSUPPORTED_LAUNCHERS:
        variable = UNSUPPORTED_LAUNCHERS[launcher]
        raise UserError(f"{launcher} started {os.environ[variable]} processes ({variable}), which cannot join one "
                        "job here: each would train alone as rank 0 on the same device. Launch with OpenMPI's "
                        "mpirun (mpirun -n N python scripts/train.py ...) or MindSpore's msrun")
    size = int(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("MS_WORKER_NUM") or 1)
    if device_id and launcher != "single" and (size > 1 or launcher == "msrun"):
        raise UserError(f"device_id {device_id} is for a single process: under {launcher} rank r of each machine "
                        "takes its r-th visible device; choose the GPUs with CUDA_VISIBLE_DEVICES (mpirun -x "
                        "CUDA_VISIBLE_DEVICES=4,5,6,7 ...) and leave device_id at 0")
    select_device(device_target, device_id)  # init() needs it, and device.setup may select it again afterwards
    if _state["joined"]:
        return _state["info"]
    if run_distribute and size == 1 and launcher != "single" and not _state["warned_single"]:
        _state["warned_single"] = True
        logger.warning(SINGLE_PROCESS_WARNING)
    if launcher == "single" or (launcher == "mpirun" and size == 1):
        return _state["info"]
    if not run_distribute and size > 1:
        raise UserError(f"{launcher} launched {size} processes but run_distribute is false, so each would train "
                        "alone and they would overwrite each other's checkpoints; pass --run_distribute true, "
                        "or start one process without a launcher")
    if launcher == "mpirun":
        release_core_binding()  # again: for threads started since the process began
        if device_target == "CPU":
            join_cluster_from_mpirun(int(os.environ["OMPI_COMM_WORLD_RANK"]), size)
    for name, seconds in CLUSTER_TIMEOUTS.items():
        os.environ.setdefault(name, seconds)
    _init_communication(device_target, launcher)

    from mindspore.communication import get_group_size, get_rank
    info = DistInfo(rank=get_rank(), size=get_group_size(), is_distributed=get_group_size() > 1)
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=info.size)
    _state.update(info=info, joined=True)
    return info


def _init_communication(device_target: str, launcher: str):
    from mindspore.communication import init
    backend = {"GPU": "nccl", "Ascend": "hccl"}.get(device_target) if launcher == "mpirun" else None
    # The scheduler's init() ends the process without returning: its stderr stays as it is.
    quiet = contextlib.nullcontext() if os.environ.get("MS_ROLE") == "MS_SCHED" else without_harmless_lines()
    try:
        with quiet:
            init(backend)
    except RuntimeError as err:
        cause = mindspore_cause(err)
        if os.environ.get("MS_ROLE") == "MS_SCHED":
            raise UserError(f"the MindSpore scheduler ended the job: {cause} See the workers' logs") from None
        raise UserError(f"MindSpore could not set up communication on {device_target} under {launcher} "
                        f"({cause}); check {_communication_hint(device_target, launcher, cause)}") from None
    drop_harmless_exit_lines()


def _communication_hint(device_target: str, launcher: str, cause: str) -> str:
    if launcher == "msrun":
        return "msrun's --master_addr (reachable from every machine), --master_port (free) and --worker_num (the " \
               "number of processes started on all machines)"
    if "mpi" in cause.lower():
        return "that mpirun is OpenMPI 4 (MindSpore loads libmpi.so.40) and mpi4py was built with that MPI"
    check_gpu = "; python scripts/check_gpu.py checks the GPU libraries" if device_target == "GPU" else ""
    return "that each rank sees its device (CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES: at least as many " \
           f"devices as ranks on each machine){check_gpu}"


def all_reduce_sum(array) -> np.ndarray:
    """The element-wise sum of `array` over all ranks, identical on every rank.

    Integers and booleans are summed exactly as int64, floats as float64; a single process gets its own
    array converted the same way. The arrays are gathered and summed here in rank order because
    MindSpore's CPU AllReduce takes float32 only, which miscounts above 2**24.
    """
    array = np.asarray(array)
    if array.dtype.kind in "biu":
        array = array.astype(np.int64)
    elif array.dtype.kind == "f":
        array = array.astype(np.float64)
    else:
        raise ValueError(f"all_reduce_sum takes integer, boolean or float arrays, got dtype {array.dtype}")
    return _all_gather(array).sum(axis=0, dtype=array.dtype)


def max_over_ranks(value: int) -> int:
    """The largest of every rank's integer `value`, identical on every rank (its own for a single process).
    A collective: every rank must call it at the same point, which also makes it a barrier."""
    return int(_all_gather(np.array([value], np.int64)).max())


def _all_gather(array: np.ndarray) -> np.ndarray:
    """Every rank's `array` (the same shape on all ranks) stacked in rank order along a new first axis.

    The bytes travel as int32 words: MindSpore's CPU AllGather silently cuts int64 and float64 values
    to 32 bits (2**60 + 1 arrives as 1), but copies int32 exactly.
    """
    info = _state["info"]
    if not info.is_distributed:
        return array[np.newaxis].copy()
    import mindspore as ms
    if _state["all_gather"] is None:
        _state["all_gather"] = _all_gather_cell()
    words = np.ascontiguousarray(array).reshape(1, -1).view(np.int32)
    gathered = _state["all_gather"](ms.Tensor(words)).asnumpy()
    return gathered.view(array.dtype).reshape((info.size,) + array.shape)


def _all_gather_cell():
    from mindspore import nn, ops

    class AllGather(nn.Cell):
        def __init__(self):
            super().__init__()
            self.all_gather = ops.AllGather()

        def construct(self, x):
            return self.all_gather(x)

    return AllGather()


def check_same_config(config: dict):
    """Raise UserError on every rank unless all ranks were given the same configuration."""
    names = sorted(config)
    digests = np.array([_digest(names)] + [_digest(config[name]) for name in names], dtype=np.int64)
    gathered = _all_gather(digests)
    differing = [rank for rank in range(len(gathered)) if not np.array_equal(gathered[rank], gathered[0])]
    if not differing:
        return
    if (gathered[differing, 0] != gathered[0, 0]).any():
        detail = "a different set of keys (another version of the code?)"
    else:
        keys = [name for i, name in enumerate(names) if (gathered[differing, i + 1] != gathered[0, i + 1]).any()]
        detail = f"different values of {', '.join(keys)}"
    raise EveryRankError(f"rank {', '.join(map(str, differing))} got {detail} than rank 0; give every rank the "
                         "same --config file and flags")


def _digest(value) -> int:
    text = json.dumps(value, sort_keys=True, default=_json_value).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:7], "little")  # 56 bits: an int64 holds it exactly


def _json_value(value):
    """Sets sorted: their order changes with each process's hash seed."""
    return sorted(value, key=repr) if isinstance(value, (set, frozenset)) else str(value)
