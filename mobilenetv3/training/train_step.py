"""The train step: input normalisation on the device, forward, loss, backward, gradient all-reduce,
optional clipping, the optimiser's update and an optional EMA of the weights, at O0 or with mixed
precision and dynamic loss scaling (O2/O3)."""
import mindspore as ms
from mindspore import nn, ops

from ..data.preprocessing import Preprocessing
from ..errors import UserError
from ..models.passes import use_cpu_kernels




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
    (data/pipeline.py) become float32 NCHW (pixel - 255 mean) / (255 std) here, on the device, as
    data.transforms.normalize_batch does on the host. No parameters, and none renamed (auto_prefix off)."""

    def __init__(self, network_with_loss, preprocessing: Preprocessing):
        super().__init__(auto_prefix=False)
        self.network = network_with_loss
        shift, scale = preprocessing.normalization()
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


def amp_level(requested: str, device_target: str) -> str:
    """The AMP level to train at: `requested`, or for auto O0 on CPU and O2 elsewhere.
    O2 and O3 run on CPU too (LossScaleTrainStep checks overflow there with CPU kernels)."""
    amp = requested if requested != "auto" else ("O0" if device_target == "CPU" else "O2")
    if amp == "O1":
        # Found on CPU; the failure is in Python code that no device changes.
        raise UserError("amp_level O1 cannot build this network: MindSpore's O1 regenerates the network's Python "
                        "source (mindspore.rewrite), and the regenerated MobileNetV3 fails to construct (TypeError "
                        "in its Conv2dOpt); use --amp_level O2 (float16, BatchNorm in float32) or O0")
    return amp


def build_train_step(net, optimizer, preprocessing: Preprocessing, amp: str = "O0", smooth_factor: float = 0.0,
                     loss_scale: float = 1024.0, grad_clip: float = 0.0, ema_decay: float = 0.0):
    """The train step of `net` with `optimizer` at AMP level `amp` (see amp_level): label-smoothed
    cross-entropy, `loss_scale` the initial dynamic loss scale (O2/O3), `grad_clip` the global norm to clip
    to (0: off), `ema_decay` the weights' EMA (0: off)."""
    loss_fn = nn.CrossEntropyLoss(label_smoothing=smooth_factor)
    if amp == "O0":
        use_cpu_kernels(net)  # where they run (CPU); float32 only, so not under mixed precision
        return TrainStep(InputNormalization(nn.WithLossCell(net, loss_fn), preprocessing), optimizer, grad_clip,
                         ema_decay)
    # MindSpore's casts (float16 compute, BN and loss in float32) without its train step, which has no
    # place for clipping or EMA: LossScaleTrainStep takes its place.
    net_with_loss = ms.amp.build_train_network(net, optimizer, loss_fn, level=amp, loss_scale_manager=None).network
    scale_update = ms.amp.DynamicLossScaleManager(loss_scale).get_update_cell()
    return LossScaleTrainStep(InputNormalization(net_with_loss, preprocessing), optimizer, scale_update, grad_clip,
                              ema_decay)
