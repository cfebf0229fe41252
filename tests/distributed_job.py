"""A small job for tests/test_distributed.py, run under mpirun, msrun or alone.

  python tests/distributed_job.py OUT_DIR --checks collectives,dense[,mobilenet] [--die RANK] [--fail RANK]
                                 [--crash RANK] [--config_rank RANK]

Each rank writes OUT_DIR/rank<r>.json (its DistInfo and all_reduce_sum results) and OUT_DIR/<check>_rank<r>.npz
(parameters after training). `dense` trains a Dense layer with MSE for 3 steps on shards of a fixed
dataset, at DENSE_BATCH rows per step in total whatever the number of ranks. `--die r` makes rank r
write the time and SIGKILL itself after init while the others sit in collectives; `--fail r` and `--crash r` make
it raise instead, a UserError or a RuntimeError (a user's mistake seen by one rank, a bug); `--config_rank r`
gives rank r another batch_size than the others before check_same_config.
"""
import argparse
import json
import os
import signal
import time
from pathlib import Path

from mobilenetv3.cli import apply_process_defaults, run_cli

apply_process_defaults()  # the CPU and log defaults, before MindSpore loads (as every script does)

import mobilenetv3  # noqa: E402
from mobilenetv3.cluster import device  # noqa: E402
from mobilenetv3.cluster.distributed import (all_reduce_sum, check_same_config, init_distributed,  # noqa: E402
                                             is_main_process)
from mobilenetv3.config import Config  # noqa: E402
from mobilenetv3.errors import UserError  # noqa: E402

DENSE_BATCH, DENSE_STEPS = 4, 3


def train_dense(info):
    """A Dense layer fitted by MSE with inputs in {-1, 0, 1}, weights in quarters, learning rate 1/8 and
    momentum 1/2: every value stays a dyadic rational of under 24 significant bits, so no float32
    operation rounds and the order of the batch sums cannot matter. N ranks at batch B must then match
    one process at batch N*B exactly, which is what gradients_mean promises."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn
    rng = np.random.default_rng(7)
    inputs = rng.integers(-1, 2, size=(DENSE_BATCH * DENSE_STEPS, 4)).astype("float32")
    targets = rng.integers(-1, 2, size=(DENSE_BATCH * DENSE_STEPS, 4)).astype("float32")
    net = nn.Dense(4, 4)
    for param in net.trainable_params():
        param.set_data(ms.Tensor((rng.integers(-4, 5, size=param.shape) / 4).astype("float32")))
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()),
                               nn.Momentum(net.trainable_params(), learning_rate=0.125, momentum=0.5))
    dataset = ms.dataset.NumpySlicesDataset({"x": inputs, "y": targets}, shuffle=False,
                                            num_shards=info.size, shard_id=info.rank)
    losses = [float(step(x, y).asnumpy()) for x, y in dataset.batch(DENSE_BATCH // info.size).create_tuple_iterator()]
    return net, losses


def train_mobilenet(info):
    """mobilenet_v3_small at 32x32 px, batch 4 per rank: BatchNorm uses each rank's own batch statistics,
    so only the ranks' agreement with each other is exact, not agreement with one big batch."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn
    rng = np.random.default_rng(11)
    images = rng.standard_normal((4 * info.size * 3, 3, 32, 32)).astype("float32")
    labels = rng.integers(0, 10, size=len(images)).astype("int32")
    net = mobilenetv3.create_model("mobilenet_v3_small", num_classes=10)
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    step = nn.TrainOneStepCell(nn.WithLossCell(net, loss),
                               nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9))
    dataset = ms.dataset.NumpySlicesDataset({"x": images, "y": labels}, shuffle=False,
                                            num_shards=info.size, shard_id=info.rank)
    losses = [float(step(x, y).asnumpy()) for x, y in dataset.batch(4).create_tuple_iterator()]
    return net, losses


def save_params(net, path):
    import numpy as np
    np.savez(path, **{param.name: param.asnumpy() for param in net.trainable_params()})


def scheduler_pid():
    children = Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
    return next((int(pid) for pid in children
                 if b"cluster/scheduler.py" in Path(f"/proc/{pid}/cmdline").read_bytes()), None)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--checks", default="collectives")
    parser.add_argument("--die", type=int)
    parser.add_argument("--fail", type=int)
    parser.add_argument("--crash", type=int)
    parser.add_argument("--config_rank", type=int)
    parser.add_argument("--run_distribute", default="true")
    args = parser.parse_args(argv)
    import numpy as np

    info = init_distributed("CPU", run_distribute=args.run_distribute == "true")
    device.setup("CPU", seed=1)  # after init: selecting the device init selected is allowed again
    report = {"rank": info.rank, "size": info.size, "is_distributed": info.is_distributed,
              "is_main_process": is_main_process(), "scheduler_pid": scheduler_pid(),
              "cpus": sorted(os.sched_getaffinity(0)), "init_again": init_distributed("CPU", True) == info}
    (args.out_dir / f"rank{info.rank}.json").write_text(json.dumps(report))
    if {args.die, args.fail, args.crash} != {None}:
        all_reduce_sum(np.ones(1))  # every rank has written its report before one dies
        if info.rank in (args.die, args.fail, args.crash):
            (args.out_dir / "died_at").write_text(repr(time.time()))
        if info.rank == args.die:
            os.kill(os.getpid(), signal.SIGKILL)
        if info.rank == args.fail:
            raise UserError(f"rank {info.rank} alone found a mistake")
        if info.rank == args.crash:
            raise RuntimeError(f"rank {info.rank} alone hit a bug")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the launcher kills this rank; if not, the test fails
            all_reduce_sum(np.ones(1))
        return
    config = Config(batch_size=2 if info.rank == args.config_rank else 1)
    check_same_config(config.values())
    checks = args.checks.split(",")
    if "collectives" in checks:
        report["int_sum"] = all_reduce_sum(np.array([[1, 2**40], [3, -4]]) * (info.rank + 1)).tolist()
        report["float_sum"] = all_reduce_sum(np.array([0.1 * (info.rank + 1), 2.0**-30])).tolist()
        report["bool_sum"] = all_reduce_sum(np.array([True, info.rank == 0])).tolist()
    for name, train in (("dense", train_dense), ("mobilenet", train_mobilenet)):
        if name in checks:
            net, losses = train(info)
            report[f"{name}_losses"] = losses
            save_params(net, args.out_dir / f"{name}_rank{info.rank}.npz")
    (args.out_dir / f"rank{info.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    run_cli(main)
