"""The optimisers: Momentum (SGD), and RMSProp with torch.optim.RMSprop's update or TensorFlow's, built from
element-wise MindSpore ops.

Per parameter p with gradient g, weight decay wd, learning rate lr of the current step:

    g = g + wd * p
    square_avg = alpha * square_avg + (1 - alpha) * g * g
    torch:       buf = momentum * buf + g / (sqrt(square_avg) + eps)        p = p - lr * buf
    TensorFlow:  buf = momentum * buf + lr * g / sqrt(square_avg + eps)     p = p - buf

square_avg starts at 0 in torch and at 1 in TensorFlow, buf at 0. torch's is the update torchvision's
MobileNetV3 recipe (alpha 0.9, eps 0.0316, momentum 0.9) was tuned with; TensorFlow's that of the paper's
training and of timm's recipe (its RMSpropTF, eps 1e-3), where eps under the root and the start at 1 damp
the first steps, and a change of learning rate leaves the momentum already gathered as it was.
The torch update replaces nn.RMSProp, whose CPU kernel in
MindSpore 2.10 (ApplyRMSProp) divides by sqrt(ms) + eps in its AVX loop but by sqrt(ms + eps) in the
scalar loop over the last n % 8 elements of each thread's slice, and re-slices tensors by call count
and timing: the same state gave other updates on other calls, so runs neither repeated nor resumed
bit-exactly. Each op here (mul, add, square, sqrt, div) rounds once per element, however it is sliced.
The price is a dozen kernels per parameter instead of one: a MobileNetV3-Small training step on 2 CPU
cores takes about 50 ms longer (3% at 224 px and batch 32) and compiles about 7 s longer.

The state keeps nn.RMSProp's names (mean_square.<param>, moment.<param>, global_step), so its
checkpoints still resume; their moment held lr * buf, which then counts as buf: the momentum of the
first few resumed steps is damped, nothing else changes.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

_update = ops.MultitypeFuncGraph("rmsprop_update")


@_update.register("Bool", "Number", "Number", "Number", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _update_tensor(tf_style, alpha, eps, momentum, lr, param, square_avg, buf, grad):
    square_avg = ops.assign(square_avg, alpha * square_avg + (1 - alpha) * ops.square(grad))
    if tf_style:
        buf = ops.assign(buf, momentum * buf + lr * grad / ops.sqrt(square_avg + eps))
        updated = param - buf
    else:
        buf = ops.assign(buf, momentum * buf + grad / (ops.sqrt(square_avg) + eps))
        updated = param - lr * buf
    # True, as nn.Optimizer's updates return: the updated tensors would otherwise become graph outputs.
    return ops.depend(True, ops.assign(param, updated))


class RMSProp(nn.Optimizer):
    """torch.optim.RMSprop(params, lr, alpha, eps, weight_decay, momentum) for nn.Optimizer parameter
    groups, with `tf_style` TensorFlow's update (timm's RMSpropTF with its defaults lr_in_momentum and
    coupled decay); `learning_rate` may be a per-step array, indexed by the global step as in nn.Momentum."""

    def __init__(self, params, learning_rate, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0,
                 tf_style=False):
        super().__init__(learning_rate, params, weight_decay)
        if not 0.0 <= alpha <= 1.0 or eps <= 0.0 or momentum < 0.0:
            raise ValueError(f"RMSProp needs 0 <= alpha <= 1, eps > 0, momentum >= 0; got alpha {alpha}, "
                             f"eps {eps}, momentum {momentum}")
        if self.is_group_lr:
            raise ValueError("RMSProp takes one learning rate for all groups; remove 'lr' from the groups")
        self.alpha, self.eps, self.momentum, self.tf_style = alpha, eps, momentum, tf_style
        self.mean_square = self._parameters.clone(prefix="mean_square", init="ones" if tf_style else "zeros")
        self.moment = self._parameters.clone(prefix="moment", init="zeros")

    @ms.jit
    def construct(self, gradients):
        gradients = self.decay_weight(gradients)
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        return self.hyper_map(ops.partial(_update, self.tf_style, self.alpha, self.eps, self.momentum, lr),
                              self._parameters, self.mean_square, self.moment, gradients)


def build_optimizer(net, lr: np.ndarray, name: str = "momentum", momentum: float = 0.9, weight_decay: float = 0.0):
    """Momentum (SGD) or RMSProp (name "rmsprop": torch's update, "rmsprop_tf": TensorFlow's) over the
    per-step learning rates `lr`; weight decay only on conv and Linear weights (ndim > 1)."""
    params = net.trainable_params()
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
              {"order_params": params}]
    lr = ms.Tensor(lr)
    if name in ("rmsprop", "rmsprop_tf"):
        # torchvision's recipe: torch's update, eps 0.0316; timm's: its RMSpropTF, --opt-eps 1e-3; both alpha 0.9
        tf_style = name == "rmsprop_tf"
        return RMSProp(groups, learning_rate=lr, alpha=0.9, eps=1e-3 if tf_style else 0.0316, momentum=momentum,
                       tf_style=tf_style)
    return nn.Momentum(groups, learning_rate=lr, momentum=momentum)
