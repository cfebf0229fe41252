"""The training run: train(config, dist) reads the config, builds the model, data, schedule and train step,
and runs the epochs with their checkpoints, validation and run record.

A run (a start, or a resume) is one data pipeline over all its remaining epochs and one `Model.train`
call: its worker processes start once, and in sink mode (GPU, Ascend) MindSpore compiles the sink graph
once, as it keeps it on the dataset object. The epoch-end work (checkpoint, validation, metrics.jsonl)
runs from the step log's callback at each epoch's last step. The batches and augmentations of epoch e
are drawn from (seed, epoch, key) and do not depend on what ran before, and dropout masks follow (seed,
rank, global step) (models/dropout.py), so a run resumed from a checkpoint ends with exactly the
parameters of an uninterrupted one, with Momentum and with RMSProp (optim.py's, written with
element-wise ops: nn.RMSProp's CPU kernel is not deterministic).
"""
import dataclasses
import logging
import signal
import time
from pathlib import Path

import mindspore as ms
from mindspore.train import Model

from ..checkpoints.files import checkpoint_name, latest, load, load_weights
from ..checkpoints.meta import check_model_matches
from ..cluster.distributed import max_over_ranks
from ..data.folders import scan_image_folder, split_dir
from ..data.pipeline import create_dataset, training_steps
from ..data.preprocessing import resolve
from ..data.transforms import Augmentation
from ..errors import UserError
from ..evaluation import evaluate_folder, mindspore_predictor
from ..models import dropout
from ..models.factory import create_model
from . import run_record
from .lr_schedules import Schedule, learning_rates
from .optim import build_optimizer
from .run_folder import RunFolder
from .signals import EveryRankInterrupted, StopSignals, TrainingInterrupted
from .state import restore_training_state, training_state
from .step_log import StepLog, run, sink_size
from .train_step import amp_level, build_train_step

logger = logging.getLogger(__name__)


def train(config, dist=None):
    """Train `config.model` on `config.data_url`; returns the path of the last checkpoint written.

    Rank 0 holds ckpt_save_dir (run_folder.RunFolder: locked, refused to a fresh run if it holds another
    run's checkpoints) from before training starts to the end, which also shows it is writable, and writes
    run.yaml, metrics.jsonl and train.log into it (see run_record).
    """
    if dist is not None and dist.rank != 0:
        return _train(config, dist, None)
    with RunFolder(config.ckpt_save_dir, config.model, config.keep_checkpoint_max, fresh=not config.resume) as folder:
        with run_record.log_file(config.ckpt_save_dir, said_before=[config.device_note] if config.device_note else []):
            return _train(config, dist, folder)


def schedule_of(config) -> Schedule:
    return Schedule(epochs=config.epoch_size, max_lr=config.max_lr, mode=config.lr_decay_mode, min_lr=config.min_lr,
                    decay_epoch=config.decay_epoch, warmup_epochs=config.warmup_epochs,
                    decay_rate=config.lr_decay_rate, decay_step_epochs=config.lr_decay_step_epochs,
                    milestones=tuple(config.milestone), rates=tuple(config.learning_rates),
                    noise=tuple(config.lr_noise), seed=config.seed)


def augmentation_of(config) -> Augmentation:
    return Augmentation(min_crop_area=config.min_crop_area, rand_augment=config.rand_augment,
                        auto_augment=config.auto_augment, color_jitter=config.color_jitter,
                        random_erase=config.random_erase, random_erase_mode=config.random_erase_mode)


def model_meta(config, classes, preprocessing) -> dict:
    return {"model": config.model, "num_classes": config.num_classes, "width": config.width,
            "bn_eps": config.bn_eps, "bn_momentum": config.bn_momentum, "classes": classes,
            "preprocessing": preprocessing.as_meta()}


def resolve_resume(resume: str, directory, model: str):
    """The checkpoint `--resume` names: itself, or for "auto" the latest of `model` in `directory` (None
    when there is none)."""
    if resume != "auto":
        return resume
    found = latest(directory, model)
    if found is None:
        logger.info(f"--resume auto: no checkpoint in {directory}; starting from scratch")
    return found


def check_validation_folder(data_url, eval_interval: int, train_folder):
    """With --eval_interval, fail at start, not after the first epochs, if validation cannot run.

    A class-folder tree without val/ is refused rather than validated on: its accuracy would be that of
    the training images, reported as validation.
    """
    root = Path(data_url)
    if not (root / "val").is_dir():
        layout = "is one class-folder tree, so validation would run on the training images" \
            if train_folder.root == root else "has no val/ folder"
        raise UserError(f"--eval_interval {eval_interval} needs held-out images in {root}/val/<class>/, but "
                        f"data_url {root} {layout}; add them, or set --eval_interval 0")
    scan_image_folder(root / "val", train_folder.classes)


def _train(config, dist, folder):
    rank, size = (dist.rank, dist.size) if dist else (0, 1)
    main_process = rank == 0
    ms.set_seed(config.seed)  # same initial weights on every rank and in every run
    train_folder = scan_image_folder(split_dir(config.data_url, "train"))
    if len(train_folder.classes) != config.num_classes:
        raise UserError(f"{train_folder.root} has {len(train_folder.classes)} class folders but num_classes is "
                        f"{config.num_classes}; pass --num_classes {len(train_folder.classes)}")
    if config.eval_interval:
        check_validation_folder(config.data_url, config.eval_interval, train_folder)
    net = create_model(config.model, config.num_classes, config.width, config.dropout_rate,
                       config.bn_momentum, config.bn_eps, drop_path_rate=config.drop_path_rate)
    preprocessing = config.preprocessing()
    if config.pretrained:  # fine-tuning: with the preprocessing those weights expect
        preprocessing, line = resolve(preprocessing, config.flags,
                                      load_weights(net, config.pretrained, new_classifier_ok=True), own_size=True)
        config = dataclasses.replace(config, **preprocessing.as_meta())  # what run.yaml and the meta record
        if main_process:
            logger.info(line)
    steps = training_steps(train_folder, config.batch_size, config.repeat_num, size)
    lr = learning_rates(schedule_of(config), steps)
    optimizer = build_optimizer(net, lr, config.optimizer, config.momentum, config.weight_decay)
    train_step = build_train_step(net, optimizer, preprocessing, amp_level(config.amp_level, config.device_target),
                                  config.smooth_factor, config.loss_scale, config.grad_clip, config.ema_decay)
    start_epoch, skip_steps = 0, 0
    resume_path = resolve_resume(config.resume, config.ckpt_save_dir, config.model) if config.resume else None
    if resume_path:
        params, saved = load(resume_path)
        check_model_matches(saved, resume_path, config.model, config.num_classes, config.width)
        notes = restore_training_state(train_step, params, resume_path)
        start_epoch, skip_steps = saved.get("epoch", 0), saved.get("epoch_step", 0)
        if main_process:
            for note in notes:
                logger.info(note)
            folder.continue_run(saved, [checkpoint_name(config.model, epoch, epoch * steps)
                                        for epoch in range(start_epoch + 1, config.epoch_size + 1)])
            logger.info(f"resumed from {resume_path} at epoch {start_epoch + 1}, step {skip_steps + 1}")
    # Dropout masks follow (seed, rank, global step), so a resumed run draws those of an uninterrupted one.
    dropout.set_state(net, config.seed * size + rank, start_epoch * steps + skip_steps)
    if start_epoch >= config.epoch_size:
        logger.info(f"nothing to do: the checkpoint is at epoch {start_epoch} of {config.epoch_size}")
        return resume_path

    dataset = create_dataset(train_folder, preprocessing, config.batch_size, config.num_parallel_workers,
                             augmentation_of(config), seed=config.seed, first_epoch=start_epoch,
                             epochs=config.epoch_size - start_epoch, skip_steps=skip_steps, repeats=config.repeat_num,
                             num_shards=size, shard_id=rank)
    sink = sink_plan(config, steps, skip_steps, main_process)
    meta = dict(model_meta(config, train_folder.classes, preprocessing), config=config.values())
    metrics_file = None
    if main_process:  # after the checks above: a refused run leaves no record in another run's folder
        run_record.write_run_file(config.values(), size, config.ckpt_save_dir)
        metrics_file = run_record.MetricsFile(config.ckpt_save_dir, start_epoch)
    # Every rank catches the stop signals; at each step (or sink) boundary the ranks agree whether to stop.
    stop_signals = StopSignals(announce=main_process)
    saved_last = None
    started = time.time()

    def end_of_epoch(epoch, summary, stopping):
        nonlocal saved_last
        if main_process:
            saved_last = save(folder, config.model, train_step, meta, epoch, 0, steps)
        validation = None
        if config.eval_interval and epoch % config.eval_interval == 0 and not stopping:
            validation = evaluate_folder(mindspore_predictor(net), net.num_classes, config.data_url, preprocessing,
                                         config.batch_size, config.num_parallel_workers, train_folder.classes, dist)
            net.set_train(True)  # mindspore_predictor switched it to eval mode
            if main_process:
                logger.info(f"validation after epoch {epoch}: {validation.seed_dict()}")
        if main_process:
            metrics_file.append(run_record.epoch_record(summary, epoch, size, time.time() - started, validation))

    log = StepLog(lr, config.epoch_size, steps, config.batch_size, 0 if sink else config.log_interval,
                  train_step.optimizer.global_step, start_epoch + 1, skip_steps, main_process, stop_signals,
                  end_of_epoch, max_over_ranks)
    with stop_signals:
        run(Model(train_step), dataset, log, (config.epoch_size - start_epoch) * steps - skip_steps, sink)
        if log.stop_signum and log.epoch <= config.epoch_size:
            if log.steps_done and main_process:  # stopped within an epoch
                saved_last = save(folder, config.model, train_step, meta, log.epoch - 1, log.steps_done, steps)
            max_over_ranks(0)  # no rank exits, which would make mpirun end the others, before rank 0 has saved
            epoch, step = (log.epoch, log.steps_done) if log.steps_done else (log.epoch - 1, steps)
            stopped = EveryRankInterrupted if size > 1 else TrainingInterrupted
            raise stopped(f"{signal.Signals(log.stop_signum).name}: stopped at epoch {epoch}, step {step}/{steps}; "
                          f"saved {saved_last}. Continue with --resume auto", log.stop_signum)
    return saved_last


def sink_plan(config, steps: int, skip_steps: int, main_process: bool) -> int:
    """Steps per sink (step_log.sink_size), or 0 where the run does not sink: on CPU MindSpore never does.
    Rank 0 says the size chosen and why, in one line."""
    if not (config.dataset_sink_mode and config.device_target != "CPU"):
        return 0
    size = sink_size(steps, skip_steps, config.log_interval, config.sink_size)
    if main_process:
        why = ("--sink_size" if config.sink_size else f"the largest divisor not above log_interval {config.log_interval}"
               if config.log_interval else "the smallest divisor of at least 100, else the whole epoch")
        resumed = f", and of the {skip_steps} steps done before the resume" if skip_steps else ""
        logger.info(f"dataset sink mode: {size} steps per sink ({why}, of the epoch's {steps} steps{resumed}); "
                    "each sink ends with a return to the host and a step line: --log_interval N for finer logging "
                    "costs one more per N steps")
    return size


def save(folder, model_name: str, train_step, meta, epochs_done, epoch_step, steps):
    """Checkpoint after `epochs_done` epochs and `epoch_step` steps of the next into `folder` (a RunFolder,
    which rotates this run's old ones)."""
    global_step = epochs_done * steps + epoch_step
    name = checkpoint_name(model_name, epochs_done + (epoch_step > 0), global_step)
    return folder.save(name, training_state(train_step), dict(meta, epoch=epochs_done, epoch_step=epoch_step,
                                                             step=global_step))
