"""TensorBoard event files of a training run (--tensorboard DIR), written by rank 0 with tensorboardX (the
optional extra `tensorboard`): at each step line train/loss, train/lr and train/images_per_second (per
process), at each epoch's end epoch/loss, epoch/images_per_second_total and, where the run validated,
val/top1, val/top5 and val/loss; all against the global step. `tensorboard --logdir DIR` shows them."""
from ..errors import UserError


class EventFiles:
    """A tensorboardX SummaryWriter on `directory`. A resumed run, whose first step is `first_step`, has
    TensorBoard drop what an earlier start wrote from that step on (purge_step), so a step repeated after a
    stop is shown once."""

    def __init__(self, directory, first_step: int):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs tensorboardX: pip install -e '.[tensorboard]' (or pip install "
                            "tensorboardX)") from None
        try:
            self.writer = SummaryWriter(str(directory), purge_step=first_step or None)
        except OSError as err:
            raise UserError(f"--tensorboard {directory}: cannot write there ({err}); pass a writable folder") from None

    def scalars(self, global_step: int, values: dict):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step)

    def epoch(self, global_step: int, record: dict):
        """The figures of one line of metrics.jsonl (run_record.epoch_record)."""
        self.scalars(global_step, {"epoch/loss": record["loss"],
                                   "epoch/images_per_second_total": record["images_per_second_total"]})
        if "val_top1" in record:
            self.scalars(global_step, {"val/top1": record["val_top1"], "val/top5": record["val_top5"],
                                       "val/loss": record["val_loss"]})
        self.writer.flush()

    def close(self):
        self.writer.close()
