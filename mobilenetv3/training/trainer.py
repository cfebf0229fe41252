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

from ..checkpoints.files import best_name, checkpoint_name, latest, load, load_weights
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
from .lr_schedules import Schedule, learning_rates, scaled_lr, schedule_warnings
from .optim import build_optimizer
from .run_folder import RunFolder
from .signals import EveryRankInterrupted, StopSignals, TrainingInterrupted
from .state import restore_training_state, training_state
from .step_log import DivergenceWatch, StepLog, run, sink_size
from .tensorboard import EventFiles
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


def schedule_of(config, max_lr: float) -> Schedule:
    return Schedule(epochs=config.epoch_size, max_lr=max_lr, mode=config.lr_decay_mode, min_lr=config.min_lr,
                    decay_epoch=config.decay_epoch, warmup_epochs=config.warmup_epochs,
                    decay_rate=config.lr_decay_rate, decay_step_epochs=config.lr_decay_step_epochs,
                    milestones=tuple(config.milestone), rates=tuple(config.learning_rates),
                    noise=tuple(config.lr_noise), seed=config.seed)


# A --max_lr flag this many times above or below the recipe's scaled value is likely a mistake.
LR_FLAG_TOLERANCE = 4


def peak_lr(config, global_batch: int):
    """(the run's peak learning rate, the line saying how it was found, a warning or None, the config as the
    run records it).

    The config's max_lr belongs to the global batch lr_base_size and is scaled to `global_batch` by
    lr_scaling (lr_schedules.scaled_lr). A --max_lr flag is the peak at this global batch, taken as is, and
    recorded with lr_base_size = global_batch so that run.yaml repeats it; it is warned about when more
    than LR_FLAG_TOLERANCE times off the config file's (or default) max_lr scaled the same way.
    """
    recipe_lr = config.file_values.get("max_lr", default_of(config, "max_lr"))
    scaled, how = scaled_lr(recipe_lr if "max_lr" in config.flags else config.max_lr, config.lr_base_size,
                            global_batch, config.lr_scaling)
    if "max_lr" not in config.flags:
        return scaled, how, None, config
    line = f"lr {config.max_lr:g} (--max_lr) at global batch {global_batch}"
    warning = None
    if max(config.max_lr / scaled, scaled / config.max_lr) > LR_FLAG_TOLERANCE:
        warning = (f"--max_lr {config.max_lr:g} is {config.max_lr / scaled:.3g} times the config's max_lr scaled to "
                   f"global batch {global_batch} ({how}; lr_base_size {config.lr_base_size}); check the flag, or "
                   "leave it out to train at the scaled value")
    return config.max_lr, line, warning, dataclasses.replace(config, lr_base_size=global_batch)


def default_of(config, name: str):
    return next(spec.default for spec in dataclasses.fields(config) if spec.name == name)


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
    return resume if resume != "auto" else latest(directory, model)


def say(main_process: bool, notes=(), warnings=()):
    """Rank 0 logs `notes` and `warnings` (other ranks would repeat them)."""
    if main_process:
        for note in notes:
            logger.info(note)
        for warning in warnings:
            logger.warning(warning)


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
    max_lr, lr_line, lr_warning, config = peak_lr(config, config.batch_size * size)
    schedule = schedule_of(config, max_lr)
    say(main_process, [lr_line], [lr_warning] if lr_warning else [])
    say(main_process, warnings=schedule_warnings(schedule))
    lr = learning_rates(schedule, steps)
    optimizer = build_optimizer(net, lr, config.optimizer, config.momentum, config.weight_decay)
    train_step = build_train_step(net, optimizer, preprocessing, amp_level(config.amp_level, config.device_target),
                                  config.smooth_factor, config.loss_scale, config.grad_clip, config.ema_decay)
    start_epoch, skip_steps = 0, 0
    resume_path = resolve_resume(config.resume, config.ckpt_save_dir, config.model) if config.resume else None
    if config.resume and not resume_path:
        say(main_process, [f"--resume auto: no checkpoint in {config.ckpt_save_dir}; starting from scratch"])
    if resume_path:
        params, saved = load(resume_path)
        check_model_matches(saved, resume_path, config.model, config.num_classes, config.width)
        notes = restore_training_state(train_step, params, resume_path)
        start_epoch, skip_steps = saved.get("epoch", 0), saved.get("epoch_step", 0)
        if start_epoch >= config.epoch_size:
            say(main_process, [f"nothing to do: the checkpoint is at epoch {start_epoch} of {config.epoch_size} "
                               f"({resume_path}); a larger --epoch_size trains on"])
            return resume_path
        say(main_process, notes)
        if main_process:
            folder.continue_run(saved, [checkpoint_name(config.model, epoch, epoch * steps)
                                        for epoch in range(start_epoch + 1, config.epoch_size + 1)])
            logger.info(f"resumed from {resume_path} at epoch {start_epoch + 1}, step {skip_steps + 1}")
    # Dropout masks follow (seed, rank, global step), so a resumed run draws those of an uninterrupted one.
    dropout.set_state(net, config.seed * size + rank, start_epoch * steps + skip_steps)

    dataset = create_dataset(train_folder, preprocessing, config.batch_size, config.num_parallel_workers,
                             augmentation_of(config), seed=config.seed, first_epoch=start_epoch,
                             epochs=config.epoch_size - start_epoch, skip_steps=skip_steps, repeats=config.repeat_num,
                             num_shards=size, shard_id=rank)
    sink = sink_plan(config, steps, skip_steps, main_process)
    meta = dict(model_meta(config, train_folder.classes, preprocessing), config=config.values())
    metrics_file = events = None
    best_top1 = -1.0
    if main_process:  # after the checks above: a refused run leaves no record in another run's folder
        if config.tensorboard:  # first: without tensorboardX the run stops here
            events = EventFiles(config.tensorboard, start_epoch * steps + skip_steps + 1)
        run_record.write_run_file(config.values(), size, config.ckpt_save_dir)
        metrics_file = run_record.MetricsFile(config.ckpt_save_dir, start_epoch)
        best_top1 = folder.best_top1(start_epoch)
    # Every rank catches the stop signals; at each step (or sink) boundary the ranks agree whether to stop.
    stop_signals = StopSignals(announce=main_process)
    saved_last = None
    started = time.time()

    def end_of_epoch(epoch, summary, stopping):
        nonlocal saved_last, best_top1
        if main_process:
            saved_last = save(folder, checkpoint_name(config.model, epoch, epoch * steps), train_step, meta, epoch, 0,
                              steps)
        validation = None
        if config.eval_interval and epoch % config.eval_interval == 0 and not stopping:
            validation = evaluate_folder(mindspore_predictor(net), net.num_classes, config.data_url, preprocessing,
                                         config.batch_size, config.num_parallel_workers, train_folder.classes, dist)
            net.set_train(True)  # mindspore_predictor switched it to eval mode
            if main_process:
                logger.info(f"validation after epoch {epoch}: {validation.seed_dict()}")
        if not main_process:
            return
        record = run_record.epoch_record(summary, epoch, size, time.time() - started, validation)
        if validation is not None and validation.top1 > best_top1:  # the first of equals stays the best
            best_top1 = validation.top1
            best = save(folder, best_name(config.model), train_step, meta, epoch, 0, steps, val_top1=validation.top1,
                        val_top5=validation.top5)
            record["best_checkpoint"] = best.name
            logger.info(f"best validation Top-1 so far: {best} (epoch {epoch}, Top-1 {validation.top1:.4f})")
        metrics_file.append(record)
        if events is not None:
            events.epoch(epoch * steps, record)

    divergence = DivergenceWatch(config.num_classes, config.warmup_epochs * steps,
                                 f"{lr_line}; global batch {config.batch_size * size} = {size} x {config.batch_size}")
    log = StepLog(lr, config.epoch_size, steps, config.batch_size, 0 if sink else config.log_interval,
                  train_step.optimizer.global_step, start_epoch + 1, skip_steps, main_process, stop_signals,
                  end_of_epoch, max_over_ranks, divergence, events.scalars if events else None)
    try:
        with stop_signals:
            run(Model(train_step), dataset, log, (config.epoch_size - start_epoch) * steps - skip_steps, sink)
            if log.stop_signum and log.epoch <= config.epoch_size:
                if log.steps_done and main_process:  # stopped within an epoch
                    saved_last = save(folder, checkpoint_name(config.model, log.epoch, (log.epoch - 1) * steps
                                                              + log.steps_done), train_step, meta, log.epoch - 1,
                                      log.steps_done, steps)
                max_over_ranks(0)  # no rank exits, which would make mpirun end the others, before rank 0 has saved
                epoch, step = (log.epoch, log.steps_done) if log.steps_done else (log.epoch - 1, steps)
                stopped = EveryRankInterrupted if size > 1 else TrainingInterrupted
                raise stopped(f"{signal.Signals(log.stop_signum).name}: stopped at step {step} of epoch {epoch} "
                              f"({steps} steps per epoch); saved {saved_last}. Continue with --resume auto",
                              log.stop_signum)
    finally:
        if events is not None:
            events.close()
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


def save(folder, name: str, train_step, meta, epochs_done, epoch_step, steps, **facts):
    """Checkpoint `name` after `epochs_done` epochs and `epoch_step` steps of the next into `folder` (a
    RunFolder, which rotates this run's old ones); `facts` go into its meta too."""
    return folder.save(name, training_state(train_step), dict(meta, epoch=epochs_done, epoch_step=epoch_step,
                                                             step=epochs_done * steps + epoch_step, **facts))
