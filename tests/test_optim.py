import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from mobilenetv3.training.optim import RMSProp, build_optimizer

ALPHA, EPS, MOMENTUM, WEIGHT_DECAY = 0.9, 0.0316, 0.9, 0.01
# One learning rate per step, changing every step: torch scales the whole momentum buffer by the current one.
LEARNING_RATES = np.array([0.1, 0.05, 0.2, 0.02, 0.08], np.float32)


def dense_37_to_5():
    """37 inputs: a weight row is four 8-wide AVX blocks and a scalar tail of 5 elements."""
    net = nn.Dense(37, 5)
    rng = np.random.default_rng(0)
    net.weight.set_data(ms.Tensor(rng.normal(0, 0.5, (5, 37)).astype(np.float32)))
    net.bias.set_data(ms.Tensor(rng.normal(0, 0.5, 5).astype(np.float32)))
    return net


def gradient_steps(net, count=len(LEARNING_RATES)):
    """Gradients of very different sizes, so sqrt(square_avg) and eps both matter."""
    rng = np.random.default_rng(1)
    return [[(rng.normal(0, 1, p.shape) * 10.0 ** rng.integers(-3, 2, p.shape)).astype(np.float32)
             for p in net.trainable_params()] for _ in range(count)]


def torch_rmsprop_in_float64(params, steps, weight_decays):
    """torch.optim.RMSprop's single-tensor update, written out in float64."""
    params = [p.astype(np.float64) for p in params]
    square_avgs, bufs = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    for lr, grads in zip(LEARNING_RATES.astype(np.float64), steps):
        for p, square_avg, buf, grad, wd in zip(params, square_avgs, bufs, grads, weight_decays):
            grad = grad + wd * p
            square_avg[:] = ALPHA * square_avg + (1 - ALPHA) * grad * grad
            buf[:] = MOMENTUM * buf + grad / (np.sqrt(square_avg) + EPS)
            p -= lr * buf
    return params, square_avgs, bufs


def run_trainer_rmsprop(net, steps, optimizer="rmsprop"):
    optimizer = build_optimizer(net, LEARNING_RATES, optimizer, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    for grads in steps:
        optimizer(tuple(ms.Tensor(g) for g in grads))
    return optimizer


def test_trainer_rmsprop_is_torchs_update_with_decay_on_weights_only():
    net = dense_37_to_5()
    start = [p.asnumpy().copy() for p in net.trainable_params()]  # asnumpy is a view
    steps = gradient_steps(net)
    optimizer = run_trainer_rmsprop(net, steps)
    expected = torch_rmsprop_in_float64(start, steps, [WEIGHT_DECAY, 0.0])  # weight, then bias
    for i, name in enumerate(["weight", "bias"]):
        param, square_avg, buf = (values[i] for values in expected)
        np.testing.assert_allclose(getattr(net, name).asnumpy(), param, rtol=2e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(optimizer.mean_square[i].asnumpy(), square_avg, rtol=2e-6, err_msg=name)
        np.testing.assert_allclose(optimizer.moment[i].asnumpy(), buf, rtol=2e-6, atol=1e-6, err_msg=name)
    assert int(optimizer.global_step.asnumpy()[0]) == len(steps)
    # The weight decay did reach the weight (the bias matched a reference without it): without it the
    # weight ends elsewhere.
    without_decay = torch_rmsprop_in_float64(start, steps, [0.0, 0.0])[0][0]
    assert np.abs(without_decay - expected[0][0]).max() > 1e-3


def tensorflow_rmsprop_in_float64(params, steps, weight_decays, eps=1e-3):
    """timm's RMSpropTF (lr_in_momentum, coupled weight decay; TensorFlow's update), written out in float64."""
    params = [p.astype(np.float64) for p in params]
    square_avgs, bufs = [np.ones_like(p) for p in params], [np.zeros_like(p) for p in params]
    for lr, grads in zip(LEARNING_RATES.astype(np.float64), steps):
        for p, square_avg, buf, grad, wd in zip(params, square_avgs, bufs, grads, weight_decays):
            grad = grad + wd * p
            square_avg += (1 - ALPHA) * (grad * grad - square_avg)
            buf[:] = MOMENTUM * buf + lr * grad / np.sqrt(square_avg + eps)
            p -= buf
    return params, square_avgs, bufs


def test_trainer_rmsprop_tf_is_tensorflows_update():
    """Square average from 1, eps under the root, the learning rate inside the momentum; differs from torch's."""
    net = dense_37_to_5()
    start = [p.asnumpy().copy() for p in net.trainable_params()]
    steps = gradient_steps(net)
    optimizer = run_trainer_rmsprop(net, steps, "rmsprop_tf")
    expected = tensorflow_rmsprop_in_float64(start, steps, [WEIGHT_DECAY, 0.0])
    for i, name in enumerate(["weight", "bias"]):
        param, square_avg, buf = (values[i] for values in expected)
        # atol: float32 rounding of p - buf for weights up to 2.5 (an ulp there is 2.4e-7), five steps
        np.testing.assert_allclose(getattr(net, name).asnumpy(), param, rtol=2e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(optimizer.mean_square[i].asnumpy(), square_avg, rtol=2e-6, err_msg=name)
        np.testing.assert_allclose(optimizer.moment[i].asnumpy(), buf, rtol=2e-6, atol=1e-7, err_msg=name)
    torchs = torch_rmsprop_in_float64(start, steps, [WEIGHT_DECAY, 0.0])[0][0]
    assert np.abs(torchs - expected[0][0]).max() > 1e-2


def test_matches_torch_optim_rmsprop():
    torch = pytest.importorskip("torch")
    net = dense_37_to_5()
    weight, bias = (torch.tensor(p.asnumpy().copy(), requires_grad=True) for p in net.trainable_params())
    reference = torch.optim.RMSprop([{"params": [weight], "weight_decay": WEIGHT_DECAY},
                                     {"params": [bias], "weight_decay": 0.0}],
                                    lr=0.0, alpha=ALPHA, eps=EPS, momentum=MOMENTUM)
    steps = gradient_steps(net)
    for lr, (weight_grad, bias_grad) in zip(LEARNING_RATES, steps):
        for group in reference.param_groups:
            group["lr"] = float(lr)
        weight.grad, bias.grad = torch.tensor(weight_grad), torch.tensor(bias_grad)
        reference.step()
    run_trainer_rmsprop(net, steps)
    np.testing.assert_allclose(net.weight.asnumpy(), weight.detach().numpy(), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(net.bias.asnumpy(), bias.detach().numpy(), rtol=2e-6, atol=1e-7)


def test_same_state_gives_the_same_update_on_every_call():
    """nn.RMSProp's CPU kernel re-sliced tensors by call count (calls 1-5, 6-15, then by timing) and updated
    a slice's scalar tail with another formula: run this way, its calls 6-15 differ from call 1 in 8 of
    the 1003 elements. Each call here starts from the same state."""
    param = ms.Parameter(ms.Tensor(np.zeros(1003, np.float32)), name="w")
    optimizer = RMSProp([param], learning_rate=0.1, alpha=ALPHA, eps=EPS, momentum=MOMENTUM)
    grad = ms.Tensor(np.linspace(-2, 2, 1003).astype(np.float32))
    updates = []
    for _ in range(20):
        for state in (param, optimizer.mean_square[0], optimizer.moment[0]):
            state.set_data(ms.Tensor(np.zeros(1003, np.float32)))
        optimizer((grad,))
        updates.append(param.asnumpy().copy())
    g = np.linspace(-2, 2, 1003)
    np.testing.assert_allclose(updates[0], -0.1 * g / (np.sqrt(0.1 * g * g) + EPS), rtol=2e-6)
    for call, values in enumerate(updates[1:], 2):
        np.testing.assert_array_equal(values, updates[0], err_msg=f"call {call}")


def test_state_keeps_nn_rmsprops_names():
    """Checkpoints written with nn.RMSProp (opt.mean_square.<param>, opt.moment.<param>) still resume."""
    ours = RMSProp(dense_37_to_5().trainable_params(), learning_rate=0.1)
    theirs = nn.RMSProp(dense_37_to_5().trainable_params(), learning_rate=0.1)
    names = sorted(p.name for p in ours.get_parameters())
    assert names == sorted(p.name for p in theirs.get_parameters())
    assert {"mean_square.weight", "moment.bias", "global_step"} <= set(names)


@pytest.mark.parametrize("kwargs, message", [(dict(alpha=1.5), "alpha 1.5"), (dict(eps=0.0), "eps 0.0"),
                                             (dict(momentum=-0.1), "momentum -0.1")])
def test_rejects_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RMSProp(dense_37_to_5().trainable_params(), learning_rate=0.1, **kwargs)
