"""What a checkpoint must hold to continue training (model weights, optimiser state, EMA weights, the
loss scale), and putting it back into a train step."""
import mindspore as ms
from mindspore import nn

from ..checkpoints.files import EMA_PREFIX, OPTIMIZER_PREFIX
from ..errors import UserError


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
        if param.name in model_names or param.name.startswith(EMA_PREFIX):
            state[param.name] = param
        else:
            state[OPTIMIZER_PREFIX + param.name] = param
    return state


# The state of dynamic loss scaling (O2/O3): TrainOneStepWithLossScaleCell's scale and its update
# cell's counters. A run without loss scaling has none, so checkpoints move between AMP levels without it.
LOSS_SCALE_STATE = tuple(OPTIMIZER_PREFIX + name
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
