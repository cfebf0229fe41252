"""The training loop: optimiser, loss, train step, step log, checkpoints, resume.

Each epoch builds its data pipeline afresh, seeded by (seed, epoch), and runs one `Model.train`
epoch on it (the compiled graph is reused). The batches and augmentations of epoch e therefore do
not depend on what ran before, and dropout masks follow (seed, rank, global step) (dropout.py), so a
run resumed from a checkpoint ends with exactly the parameters of an uninterrupted one, with Momentum
and with RMSProp (optim.py's, written with element-wise ops: nn.RMSProp's CPU kernel is not
deterministic).
"""
import contextlib
import math
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.train import Callback, Model

from . import checkpoint, data, dropout, lr_schedules, optim, preprocessing, run_record
from .errors import UserError
from .factory import create_model
from .passes import use_cpu_kernels

# The seed README's step line: "Epoch:[ 90/ 120], step:[    1/ 2502], ...".
LOG_FORMAT = "Epoch:[{epoch:3d}/{epochs:4d}], step:[{step:5d}/{steps:5d}], loss:[{loss:.3f}/{mean:.3f}], " \
             "time:{ms:.3f} ms, lr:{lr:.5f}"


class NonFiniteLoss(UserError):
    pass


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM stopped training after a checkpoint was written; exits 128 + signal number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """While active, SIGINT and SIGTERM only record that a stop was asked for; the train loop then
    stops after the current step and writes a checkpoint. A second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = None

    def _handle(self, signum, _frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step (again to stop at once)",
              file=sys.stderr, flush=True)

    def __enter__(self):
        self.previous = [signal.signal(s, self._handle) for s in self.SIGNALS]
        return self

    def __exit__(self, *exc):
        for s, handler in zip(self.SIGNALS, self.previous):
            signal.signal(s, handler)


def build_optimizer(net, config, lr: np.ndarray):
    """Momentum or RMSProp (torch's or TensorFlow's update) over per-step `lr`; weight decay only on conv and
    Linear weights (ndim > 1)."""
    params = net.trainable_params()
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
              {"order_params": params}]
    lr = ms.Tensor(lr)
    if config.optimizer in ("rmsprop", "rmsprop_tf"):
        # torchvision's recipe: torch's update, eps 0.0316; timm's: its RMSpropTF, --opt-eps 1e-3; both alpha 0.9
        tf_style = config.optimizer == "rmsprop_tf"
        return optim.RMSProp(groups, learning_rate=lr, alpha=0.9, eps=1e-3 if tf_style else 0.0316,
                             momentum=config.momentum, tf_style=tf_style)
    return nn.Momentum(groups, learning_rate=lr, momentum=config.momentum)


def ema_copies(network, decay: float):
    """(the parameters of `network`, their float32 "ema.<name>" copies) when `decay` > 0, else ((), ()).

    Every parameter is averaged, BN running statistics too, as timm's ModelEmaV2 does. They are all
    float32 at every AMP level: O2 and O3 cast them to float16 inside the graph and keep the parameters
    themselves in float32, so the average follows the float32 master weights the optimiser updates.
    """
    if decay <= 0:
        return (), ()
    params = ms.ParameterTuple(network.get_parameters())
    return params, params.clone(prefix="ema", init="same")


def update_ema(loss, averages, params, decay: float):
    """ema = decay * ema + (1 - decay) * param for each pair; returns `loss` after the updates."""
    for ema, param in zip(averages, params):
        loss = ops.depend(loss, ops.assign(ema, ema * decay + param * (1 - decay)))
    return loss


class InputNormalization(nn.Cell):
    """(images, labels) -> network_with_loss(normalised images, labels): the pipeline's uint8 NHWC batches
    (data.create_dataset) become float32 NCHW (pixel - 255 mean) / (255 std) here, on the device, as
    data.normalize_batch does on the host. No parameters, and none renamed (auto_prefix off)."""

    def __init__(self, network_with_loss, config):
        super().__init__(auto_prefix=False)
        self.network = network_with_loss
        shift, scale = data.normalization(config)
        self.shift = ms.Tensor(shift.reshape(1, -1, 1, 1))
        self.scale = ms.Tensor(scale.reshape(1, -1, 1, 1))

    def construct(self, images, labels):
        images = ops.transpose(ops.cast(images, ms.float32), (0, 3, 1, 2))
        return self.network((images - self.shift) * self.scale, labels)


class TrainStep(nn.TrainOneStepCell):
    """O0: forward, backward, gradient all-reduce (data parallel), optional clipping, update, optional EMA."""

    def __init__(self, net_with_loss, optimizer, grad_clip=0.0, ema_decay=0.0):
        super().__init__(net_with_loss, optimizer)
        self.grad_clip = grad_clip
        self.ema_decay = ema_decay
        self.model_params, self.ema_params = ema_copies(net_with_loss, ema_decay)

    def construct(self, images, labels):
        loss = self.network(images, labels)
        sens = ops.fill(loss.dtype, loss.shape, self.sens)
        grads = self.grad(self.network, self.weights)(images, labels, sens)
        grads = self.grad_reducer(grads)
        if self.grad_clip > 0:
            grads = ops.clip_by_global_norm(grads, self.grad_clip)
        loss = ops.depend(loss, self.optimizer(grads))
        if self.ema_decay > 0:
            loss = update_ema(loss, self.ema_params, self.model_params, self.ema_decay)
        return loss


_unscale = ops.MultitypeFuncGraph("unscale")
_non_finite = ops.MultitypeFuncGraph("non_finite")


@_unscale.register("Tensor", "Tensor")
def _unscale_tensor(scale, grad):
    return grad * ops.cast(ops.reciprocal(scale), ops.dtype(grad))


@_non_finite.register("Tensor")
def _non_finite_tensor(grad):
    return ops.logical_not(ops.isfinite(grad).all()).astype(ms.float32).reshape((1,))


class LossScaleTrainStep(nn.TrainOneStepWithLossScaleCell):
    """O2/O3: MindSpore's step with dynamic loss scaling (the update skipped when the unscaled gradients
    overflow), plus optional clipping of the unscaled gradients and optional EMA, both on applied steps only.

    On CPU, where MindSpore has no kernel for its overflow check (FloatStatus on GPU, the NPU status
    registers on Ascend), the check is made of element-wise ops (isfinite), summed over the ranks the same
    way; it flags the same steps.
    """

    def __init__(self, net_with_loss, optimizer, scale_update_cell, grad_clip=0.0, ema_decay=0.0):
        super().__init__(net_with_loss, optimizer, scale_sense=scale_update_cell)
        self.grad_clip = grad_clip
        self.ema_decay = ema_decay
        self.model_params, self.ema_params = ema_copies(net_with_loss, ema_decay)
        self.cpu_target = ms.get_context("device_target") == "CPU"

    def cpu_overflow_status(self, grads):
        flags = ops.AddN()(self.hyper_map(_non_finite, grads)).reshape(())
        if self.is_distributed:
            flags = self.allreduce(flags)
        return flags >= 1

    def construct(self, images, labels):
        loss = self.network(images, labels)
        scale = self.scale_sense
        status = ms.Tensor([0] * 8, ms.int32)  # the Ascend overflow check's status register
        sens = ops.ones_like(loss) * ops.cast(scale, ops.dtype(loss))
        grads = self.grad(self.network, self.weights)(images, labels, sens)
        grads = self.hyper_map(ops.partial(_unscale, scale), grads)
        grads = self.grad_reducer(grads)
        overflow = self.cpu_overflow_status(grads) if self.cpu_target else self.get_overflow_status(status, grads)
        skip = self.process_loss_scale(overflow)
        if not skip:
            if self.grad_clip > 0:
                grads = ops.clip_by_global_norm(grads, self.grad_clip)
            loss = ops.depend(loss, self.optimizer(grads))
            if self.ema_decay > 0:
                loss = update_ema(loss, self.ema_params, self.model_params, self.ema_decay)
        return loss, overflow, scale


def amp_level(config) -> str:
    """The AMP level to train at: amp_level, or for auto O0 on CPU and O2 elsewhere.
    O2 and O3 run on CPU too (LossScaleTrainStep checks overflow there with CPU kernels)."""
    amp = config.amp_level if config.amp_level != "auto" else ("O0" if config.device_target == "CPU" else "O2")
    if amp == "O1":
        # Found on CPU; the failure is in Python code that no device changes.
        raise UserError("amp_level O1 cannot build this network: MindSpore's O1 regenerates the network's Python "
                        "source (mindspore.rewrite), and the regenerated MobileNetV3 fails to construct (TypeError "
                        "in its Conv2dOpt); use --amp_level O2 (float16, BatchNorm in float32) or O0")
    return amp


def build_train_step(net, config, lr: np.ndarray):
    optimizer = build_optimizer(net, config, lr)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.smooth_factor)
    amp = amp_level(config)
    if amp == "O0":
        use_cpu_kernels(net)  # where they run (CPU); float32 only, so not under mixed precision
        return TrainStep(InputNormalization(nn.WithLossCell(net, loss_fn), config), optimizer, config.grad_clip,
                         config.ema_decay)
    # MindSpore's casts (float16 compute, BN and loss in float32) without its train step, which has no
    # place for clipping or EMA: LossScaleTrainStep takes its place.
    net_with_loss = ms.amp.build_train_network(net, optimizer, loss_fn, level=amp, loss_scale_manager=None).network
    scale_update = ms.amp.DynamicLossScaleManager(config.loss_scale).get_update_cell()
    return LossScaleTrainStep(InputNormalization(net_with_loss, config), optimizer, scale_update, config.grad_clip,
                              config.ema_decay)


def sink_size(steps: int, skip_steps: int, log_interval: int) -> int:
    """Steps per sink in dataset sink mode for an epoch of `steps` of which `skip_steps` are done.

    Callbacks run only between sinks, so every sink must end on a step the log prints (the multiples
    of log_interval and the epoch's last step), and none may run past the epoch's end: MindSpore would
    repeat this epoch's pipeline instead of starting the next one's.
    """
    return math.gcd(log_interval, steps, skip_steps)


def run_epoch(model, dataset, log, steps, skip_steps, log_interval, sink):
    """One epoch of `model.train` on `dataset` (its `steps - skip_steps` batches), sunk in
    sink_size(...) chunks when `sink`: each chunk is one of Model.train's epochs."""
    if not sink:
        model.train(1, dataset, callbacks=[log], dataset_sink_mode=False)
        return
    per_sink = sink_size(steps, skip_steps, log_interval)
    model.train((steps - skip_steps) // per_sink, dataset, callbacks=[log], dataset_sink_mode=True,
                sink_size=per_sink)


def step_outputs(outputs):
    """(loss, overflow, loss scale) of a train step's outputs; overflow False and scale None without
    loss scaling (TrainStep returns the loss alone, TrainOneStepWithLossScaleCell all three)."""
    if not isinstance(outputs, (tuple, list)):
        return float(outputs.asnumpy()), False, None
    loss, overflow, scale = outputs
    return float(loss.asnumpy()), bool(overflow.asnumpy()), float(scale.asnumpy())


class LossGuard:
    """Decides when a bad loss ends training.

    Without loss scaling any non-finite loss ends it. With dynamic loss scaling (O2/O3) an fp16
    overflow is routine: the step is skipped and the scale lowered. There training ends only after
    PATIENCE observed steps in a row whose loss is non-finite or that overflowed at the smallest scale
    (1, where MindSpore stops lowering it, so every further step would be skipped too). In sink mode
    the guard observes the last step of each sink.
    """
    PATIENCE = 5

    def __init__(self):
        self.bad_in_a_row = 0

    def check(self, loss, overflow, scale, epoch, step):
        advice = "The last good checkpoint is kept; lower max_lr or check the data, then --resume auto"
        if scale is None:
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss} at epoch {epoch}, step {step}: stopping. {advice}")
            return
        collapsed = overflow and scale <= 1.0
        self.bad_in_a_row = self.bad_in_a_row + 1 if collapsed or not math.isfinite(loss) else 0
        if self.bad_in_a_row < self.PATIENCE:
            return
        in_a_row = f"in {self.bad_in_a_row} observed steps in a row"
        if math.isfinite(loss):
            raise NonFiniteLoss(f"gradients overflowed at loss scale {scale:g} (the smallest) {in_a_row} up to epoch "
                                f"{epoch}, step {step}: stopping. {advice}")
        raise NonFiniteLoss(f"loss is {loss} at epoch {epoch}, step {step}, {in_a_row} (loss scale {scale:g}): "
                            f"stopping. {advice}")


class StepLog(Callback):
    """The seed's step line every `log_interval` steps, a summary per epoch, and the LossGuard.

    One Model.train call runs one epoch, whether unsunk or in several sinks. In sink mode the callbacks
    see the last step of each sink: its loss, and the time of the sink divided by its steps. The
    learning rate printed is the one the optimiser last applied, read from its step counter, which a
    step skipped on overflow does not advance.
    """

    def __init__(self, lr, epochs, steps, batch_size, log_interval, global_step, printing=True, stop_signals=None):
        self.lr, self.epochs, self.steps, self.batch_size = lr, epochs, steps, batch_size
        self.log_interval, self.printing, self.stop_signals = log_interval, printing, stop_signals
        self.global_step = global_step  # the optimiser's count of applied steps (a Parameter)
        self.epoch, self.skipped = 0, 0  # skipped: steps of this epoch done before a resume
        self.steps_done = 0
        self.guard = LossGuard()

    def applied_steps(self) -> int:
        return int(self.global_step.asnumpy().reshape(-1)[0])

    def on_train_begin(self, run_context):
        self.losses, self.epoch_start, self.steps_done = [], time.time(), self.skipped
        self.applied_at_start, self.scale = self.applied_steps(), None

    def on_train_step_begin(self, run_context):
        self.step_start = time.time()

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        loss, overflow, self.scale = step_outputs(params.net_outputs)
        # cur_step_num counts the steps of this Model.train call; in sink mode several pass per callback.
        step = self.skipped + params.cur_step_num
        steps_run, self.steps_done = step - self.steps_done, step
        self.guard.check(loss, overflow, self.scale, self.epoch, step)
        if math.isfinite(loss):
            self.losses.append(loss)
        if self.printing and (step % self.log_interval == 0 or step == self.steps):
            applied = min(max(self.applied_steps() - 1, 0), len(self.lr) - 1)
            print(LOG_FORMAT.format(epoch=self.epoch, epochs=self.epochs, step=step, steps=self.steps, loss=loss,
                                    mean=float(np.mean(self.losses)) if self.losses else loss,
                                    ms=1000 * (time.time() - self.step_start) / steps_run,
                                    lr=float(self.lr[applied])), flush=True)
        if self.stop_signals is not None and self.stop_signals.received is not None:
            run_context.request_stop()

    def on_train_end(self, run_context):
        seconds = time.time() - self.epoch_start
        steps = self.steps_done - self.skipped
        skipped = steps - (self.applied_steps() - self.applied_at_start)
        applied = min(max(self.applied_steps() - 1, 0), len(self.lr) - 1)
        self.summary = dict(global_step=(self.epoch - 1) * self.steps + self.steps_done,
                            loss=float(np.mean(self.losses)) if self.losses else float("nan"),
                            lr=float(self.lr[applied]), steps=steps, seconds=round(seconds, 3),
                            images_per_second=round(steps * self.batch_size / seconds, 2))
        if self.scale is not None:
            self.summary.update(loss_scale=self.scale, overflow_steps=skipped)
        if self.printing:
            scaling = "" if self.scale is None else \
                f", loss scale {self.scale:g}, {skipped} steps skipped on fp16 overflow"
            print(f"Epoch {self.epoch} finished: {steps} steps in {seconds:.1f} s, "
                  f"{self.summary['images_per_second']:.1f} img/s per process, "
                  f"mean loss {self.summary['loss']:.4f}{scaling}", flush=True)


def training_state(train_step) -> dict:
    """Every parameter needed to continue training: model weights, optimiser state, EMA weights.

    The learning-rate array is left out: the schedule comes from the config of the resumed run.
    """
    model_names = {p.name for p in train_step.network.get_parameters()}
    schedule = train_step.optimizer.learning_rate  # a Cell over the per-step array
    schedule_names = {p.name for p in schedule.get_parameters()} if isinstance(schedule, nn.Cell) else {schedule.name}
    state = {}
    for param in train_step.get_parameters():
        if param.name in schedule_names:
            continue
        if param.name in model_names or param.name.startswith(checkpoint.EMA_PREFIX):
            state[param.name] = param
        else:
            state[checkpoint.OPTIMIZER_PREFIX + param.name] = param
    return state


# The state of dynamic loss scaling (O2/O3): TrainOneStepWithLossScaleCell's scale and its update
# cell's counters. A run without loss scaling has none, so checkpoints move between AMP levels without it.
LOSS_SCALE_STATE = tuple(checkpoint.OPTIMIZER_PREFIX + name
                         for name in ("scale_sense", "current_iterator_step", "last_overflow_iterator_step"))


def restore_training_state(train_step, params: dict, path) -> list:
    """Load `params` into `train_step`; returns notes for the user about state it had to do without.

    Resuming across devices and AMP levels works: loss-scale state missing from the checkpoint starts
    afresh (at the configured loss_scale), and the checkpoint's own is unused by a run without it.
    """
    own = training_state(train_step)
    missing = sorted(set(own) - set(params) - set(LOSS_SCALE_STATE))
    if missing:
        raise UserError(f"checkpoint {path} lacks training state {', '.join(missing[:5])}: it cannot be resumed "
                        "(use it with --pretrained to start a new run from its weights)")
    for name, param in own.items():
        if name not in params:
            continue
        if params[name].shape != param.shape:
            raise UserError(f"checkpoint {path}: {name} has shape {params[name].shape}, expected {param.shape}")
        param.set_data(params[name].data if isinstance(params[name], ms.Parameter) else params[name])
    scale_name = LOSS_SCALE_STATE[0]
    if any(name in own and name not in params for name in LOSS_SCALE_STATE):
        return [f"{path} holds no loss-scale state (saved by a run without loss scaling, e.g. O0 on CPU): the "
                f"loss scale starts at {float(own[scale_name].asnumpy()):g}"]
    if any(name in params and name not in own for name in LOSS_SCALE_STATE):
        return [f"{path} holds loss-scale state (scale {float(params[scale_name].asnumpy()):g}) that this run "
                "without loss scaling does not use"]
    return []


def model_meta(config, classes) -> dict:
    return {"model": config.model, "num_classes": config.num_classes, "width": config.width,
            "bn_eps": config.bn_eps, "bn_momentum": config.bn_momentum, "classes": classes,
            "preprocessing": preprocessing.of_config(config)}


def resolve_resume(config):
    if config.resume != "auto":
        return config.resume
    found = checkpoint.latest(config.ckpt_save_dir, config.model)
    if found is None:
        print(f"--resume auto: no checkpoint in {config.ckpt_save_dir}; starting from scratch")
    return found


def check_validation_folder(config, train_folder):
    """With --eval_interval, fail at start, not after the first epochs, if validation cannot run.

    A class-folder tree without val/ is refused rather than validated on: its accuracy would be that of
    the training images, reported as validation.
    """
    root = Path(config.data_url)
    if not (root / "val").is_dir():
        layout = "is one class-folder tree, so validation would run on the training images" \
            if train_folder.root == root else "has no val/ folder"
        raise UserError(f"--eval_interval {config.eval_interval} needs held-out images in {root}/val/<class>/, but "
                        f"data_url {root} {layout}; add them, or set --eval_interval 0")
    data.scan_image_folder(root / "val", train_folder.classes)


def augment_seed(seed: int, epoch: int, rank: int, size: int) -> int:
    """The seed of MindSpore's own random ops in the pipeline (AutoAugment, colour jitter, random
    erasing) for `epoch` on `rank` of `size`: one per (epoch, rank), so ranks draw different streams;
    a single process keeps the seed it always had."""
    return ((seed * 100003 + epoch) * size + rank) % 2**32


def train(config, dist=None):
    """Train `config.model` on `config.data_url`; returns the path of the last checkpoint written.

    Rank 0 holds ckpt_save_dir (checkpoint.RunFolder: locked, refused to a fresh run if it holds another
    run's checkpoints) from before training starts to the end, which also shows it is writable, and writes
    run.yaml, metrics.jsonl and train.log into it (see run_record).
    """
    if dist is not None and dist.rank != 0:
        return _train(config, dist, None)
    with checkpoint.RunFolder(config.ckpt_save_dir, config.model, config.keep_checkpoint_max,
                              fresh=not config.resume) as folder:
        with run_record.tee_stdout(config.ckpt_save_dir):
            return _train(config, dist, folder)


def _train(config, dist, folder):
    rank, size = (dist.rank, dist.size) if dist else (0, 1)
    main_process = rank == 0
    ms.set_seed(config.seed)  # same initial weights on every rank and in every run
    train_folder = data.scan_image_folder(data.split_dir(config.data_url, "train"))
    if len(train_folder.classes) != config.num_classes:
        raise UserError(f"{train_folder.root} has {len(train_folder.classes)} class folders but num_classes is "
                        f"{config.num_classes}; pass --num_classes {len(train_folder.classes)}")
    if config.eval_interval:
        check_validation_folder(config, train_folder)
    net = create_model(config.model, config.num_classes, config.width, config.dropout_rate,
                       config.bn_momentum, config.bn_eps, drop_path_rate=config.drop_path_rate)
    if config.pretrained:  # fine-tuning: with the preprocessing those weights expect
        config, line = preprocessing.resolve(config, checkpoint.load_weights(net, config.pretrained,
                                                                             new_classifier_ok=True), own_size=True)
        if main_process:
            print(line, file=sys.stderr)

    def dataset_for(epoch, skip_steps=0):  # epoch counts from 0
        ms.dataset.config.set_seed(augment_seed(config.seed, epoch, rank, size))
        dataset = data.create_dataset(train_folder, config, training=True, num_shards=size, shard_id=rank,
                                      epoch=epoch)
        return dataset.skip(skip_steps) if skip_steps else dataset

    steps = dataset_for(0).get_dataset_size()
    lr = lr_schedules.learning_rates(config, steps)
    train_step = build_train_step(net, config, lr)
    start_epoch, skip_steps = 0, 0
    resume_path = resolve_resume(config) if config.resume else None
    if resume_path:
        params, saved = checkpoint.load(resume_path)
        checkpoint.check_model_matches(saved, resume_path, config.model, config.num_classes, config.width)
        notes = restore_training_state(train_step, params, resume_path)
        start_epoch, skip_steps = saved.get("epoch", 0), saved.get("epoch_step", 0)
        if main_process:
            for note in notes:
                print(note)
            folder.continue_run(saved, [checkpoint.checkpoint_name(config.model, epoch, epoch * steps)
                                        for epoch in range(start_epoch + 1, config.epoch_size + 1)])
            print(f"resumed from {resume_path} at epoch {start_epoch + 1}, step {skip_steps + 1}")
    # Dropout masks follow (seed, rank, global step), so a resumed run draws those of an uninterrupted one.
    dropout.set_state(net, config.seed * size + rank, start_epoch * steps + skip_steps)
    if start_epoch >= config.epoch_size:
        print(f"nothing to do: the checkpoint is at epoch {start_epoch} of {config.epoch_size}")
        return resume_path

    # Several processes cannot agree on the step to stop at, so only a single process catches signals.
    stop_signals = StopSignals() if size == 1 else None
    model = Model(train_step)
    log = StepLog(lr, config.epoch_size, steps, config.batch_size, config.log_interval,
                  train_step.optimizer.global_step, main_process, stop_signals)
    sink = config.dataset_sink_mode and config.device_target != "CPU"  # MindSpore never sinks on CPU
    if sink and main_process and sink_size(steps, 0, config.log_interval) < config.log_interval:
        print(f"dataset sink: {sink_size(steps, 0, config.log_interval)} steps per sink, as log_interval "
              f"{config.log_interval} does not divide the {steps} steps of an epoch")
    meta = dict(model_meta(config, train_folder.classes), config=asdict(config))
    metrics_file = None
    if main_process:  # after the checks above: a refused run leaves no record in another run's folder
        run_record.write_run_file(config, size, config.ckpt_save_dir)
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
                last = save(folder, config, train_step, meta, *done, steps)
            if stop_signals is not None and stop_signals.received is not None:
                name = signal.Signals(stop_signals.received).name
                raise TrainingInterrupted(f"{name}: stopped at epoch {epoch}, step {log.steps_done}/{steps}; saved "
                                          f"{last}. Continue with --resume auto", stop_signals.received)
            validation = None
            if config.eval_interval and epoch % config.eval_interval == 0:
                from .evaluation import evaluate_folder, mindspore_predictor
                validation = evaluate_folder(mindspore_predictor(net), net.num_classes, config,
                                             train_folder.classes, dist)
                net.set_train(True)  # mindspore_predictor switched it to eval mode
                if main_process:
                    print(f"validation after epoch {epoch}: {validation.seed_dict()}", flush=True)
            if main_process and finished:
                metrics_file.append(epoch_record(log.summary, epoch, size, time.time() - started, validation))
    return last


def epoch_record(summary: dict, epoch: int, world_size: int, wall_seconds: float, validation=None) -> dict:
    """One line of metrics.jsonl; wall_seconds counts from the start of this process's training loop."""
    record = dict(epoch=epoch, **summary, images_per_second_total=round(summary["images_per_second"] * world_size, 2),
                  wall_seconds=round(wall_seconds, 3), peak_rss_mb=round(run_record.peak_rss_mb(), 1))
    if validation is not None:
        record.update(val_top1=validation.top1, val_top5=validation.top5, val_loss=validation.loss)
    return record


def save(folder, config, train_step, meta, epochs_done, epoch_step, steps):
    """Checkpoint after `epochs_done` epochs and `epoch_step` steps of the next into `folder` (a RunFolder,
    which rotates this run's old ones)."""
    global_step = epochs_done * steps + epoch_step
    name = checkpoint.checkpoint_name(config.model, epochs_done + (epoch_step > 0), global_step)
    return folder.save(name, training_state(train_step), dict(meta, epoch=epochs_done, epoch_step=epoch_step,
                                                             step=global_step))
