"""The training run: train(config, dist) reads the config, builds the model, data, schedule and train step,
and runs the epochs with their checkpoints, validation and run record.

Each epoch builds its data pipeline afresh, seeded by (seed, epoch), and runs one `Model.train`
epoch on it (the compiled graph is reused). The batches and augmentations of epoch e therefore do
not depend on what ran before, and dropout masks follow (seed, rank, global step) (models/dropout.py),
so a run resumed from a checkpoint ends with exactly the parameters of an uninterrupted one, with
Momentum and with RMSProp (optim.py's, written with element-wise ops: nn.RMSProp's CPU kernel is not
deterministic).
"""
import contextlib
import dataclasses
import logging
import signal
import time
from pathlib import Path

import mindspore as ms
from mindspore.train import Model

from ..checkpoints.files import checkpoint_name, latest, load, load_weights
from ..checkpoints.meta import check_model_matches
from ..data.folders import scan_image_folder, split_dir
from ..data.pipeline import create_dataset
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
from .signals import StopSignals, TrainingInterrupted
from .state import restore_training_state, training_state
from .step_log import StepLog, run_epoch, sink_size
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
        with run_record.log_file(config.ckpt_save_dir):
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


def augment_seed(seed: int, epoch: int, rank: int, size: int) -> int:
    """The seed of MindSpore's own random ops in the pipeline (AutoAugment, colour jitter) for `epoch` on
    `rank` of `size`: one per (epoch, rank), so ranks draw different streams; a single process keeps the
    seed it always had."""
    return ((seed * 100003 + epoch) * size + rank) % 2**32


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
    augmentation = augmentation_of(config)

    def dataset_for(epoch, skip_steps=0):  # epoch counts from 0
        ms.dataset.config.set_seed(augment_seed(config.seed, epoch, rank, size))
        dataset = create_dataset(train_folder, preprocessing, config.batch_size, config.num_parallel_workers,
                                 augmentation, seed=config.seed, epoch=epoch, repeats=config.repeat_num,
                                 num_shards=size, shard_id=rank)
        return dataset.skip(skip_steps) if skip_steps else dataset

    steps = dataset_for(0).get_dataset_size()
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

    # Several processes cannot agree on the step to stop at, so only a single process catches signals.
    stop_signals = StopSignals() if size == 1 else None
    model = Model(train_step)
    log = StepLog(lr, config.epoch_size, steps, config.batch_size, config.log_interval,
                  train_step.optimizer.global_step, main_process, stop_signals)
    sink = config.dataset_sink_mode and config.device_target != "CPU"  # MindSpore never sinks on CPU
    if sink and main_process and sink_size(steps, 0, config.log_interval) < config.log_interval:
        logger.info(f"dataset sink: {sink_size(steps, 0, config.log_interval)} steps per sink, as log_interval "
                    f"{config.log_interval} does not divide the {steps} steps of an epoch")
    meta = dict(model_meta(config, train_folder.classes, preprocessing), config=config.values())
    metrics_file = None
    if main_process:  # after the checks above: a refused run leaves no record in another run's folder
        run_record.write_run_file(config.values(), size, config.ckpt_save_dir)
        metrics_file = run_record.MetricsFile(config.ckpt_save_dir, start_epoch)
    last = None
    started = time.time()
    with stop_signals or contextlib.nullcontext():
        for epoch in range(start_epoch + 1, config.epoch_size + 1):
            log.epoch, log.skipped = epoch, skip_steps
            run_epoch(model, dataset_for(epoch - 1, skip_steps), log, steps, skip_steps, config.log_interval, sink)
            skip_steps = 0
            finished = log.steps_done == steps
            if main_process:
                done = (epoch, 0) if finished else (epoch - 1, log.steps_done)
                last = save(folder, config.model, train_step, meta, *done, steps)
            if stop_signals is not None and stop_signals.received is not None:
                name = signal.Signals(stop_signals.received).name
                raise TrainingInterrupted(f"{name}: stopped at epoch {epoch}, step {log.steps_done}/{steps}; saved "
                                          f"{last}. Continue with --resume auto", stop_signals.received)
            validation = None
            if config.eval_interval and epoch % config.eval_interval == 0:
                validation = evaluate_folder(mindspore_predictor(net), net.num_classes, config.data_url, preprocessing,
                                             config.batch_size, config.num_parallel_workers, train_folder.classes,
                                             dist)
                net.set_train(True)  # mindspore_predictor switched it to eval mode
                if main_process:
                    logger.info(f"validation after epoch {epoch}: {validation.seed_dict()}")
            if main_process and finished:
                metrics_file.append(run_record.epoch_record(log.summary, epoch, size, time.time() - started,
                                                            validation))
    return last


def save(folder, model_name: str, train_step, meta, epochs_done, epoch_step, steps):
    """Checkpoint after `epochs_done` epochs and `epoch_step` steps of the next into `folder` (a RunFolder,
    which rotates this run's old ones)."""
    global_step = epochs_done * steps + epoch_step
    name = checkpoint_name(model_name, epochs_done + (epoch_step > 0), global_step)
    return folder.save(name, training_state(train_step), dict(meta, epoch=epochs_done, epoch_step=epoch_step,
                                                             step=global_step))
