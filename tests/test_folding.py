"""BatchNorm folding: the logits of the unfolded network up to float32 rounding, and no BatchNorm left."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from mobilenetv3.folding import fold_batchnorm
from mobilenetv3.model import create_model


def trained_like(model_name, seed=0):
    """A network whose BatchNorm statistics, scales and shifts all differ from their initial values.

    The running statistics are those of one random batch (momentum 0), then perturbed; the Linear
    layers get 10x He scale: their 0.01 init gives logits near zero, in which rounding errors cannot show.
    """
    rng = np.random.default_rng(seed)
    ms.set_seed(seed)
    net = create_model(model_name, num_classes=10, bn_momentum=0.0)
    batch_norms = [cell for _, cell in net.cells_and_names() if isinstance(cell, nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.gamma.set_data(ms.Tensor(rng.uniform(0.5, 1.5, bn.gamma.shape).astype(np.float32)))
        bn.beta.set_data(ms.Tensor(rng.normal(0, 0.1, bn.beta.shape).astype(np.float32)))
    for dense in (net.classifier[0], net.classifier[3]):
        dense.weight.set_data(ms.Tensor(rng.normal(0, 10 * (2 / dense.in_channels) ** 0.5, dense.weight.shape)
                                        .astype(np.float32)))
    net.set_train(True)
    net(ms.Tensor(rng.standard_normal((4, 3, 64, 64)).astype(np.float32)))
    for bn in batch_norms:
        mean, var = bn.moving_mean.asnumpy(), bn.moving_variance.asnumpy()
        bn.moving_mean.set_data(ms.Tensor((mean + rng.normal(0, 0.1, mean.shape) * np.sqrt(var)).astype(np.float32)))
        bn.moving_variance.set_data(ms.Tensor(np.maximum(var * rng.uniform(0.8, 1.25, var.shape), 0.01)
                                              .astype(np.float32)))
    return net.set_train(False)


@pytest.mark.parametrize("model_name", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_folded_network_gives_the_same_logits(model_name):
    images = ms.Tensor(np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32))
    expected = trained_like(model_name)(images).asnumpy()
    folded = fold_batchnorm(trained_like(model_name))
    largest = np.abs(expected).max()
    assert largest > 10.0  # logits of the size a trained network gives, not near zero
    # float32 rounding: the folded products round differently, about 1e-6 of the logits' size
    error = np.abs(folded(images).asnumpy() - expected).max()
    print(f"{model_name}: largest logit {largest:.2f}, largest difference {error:.2e}")
    assert error <= 4e-6 * largest
    assert not any(isinstance(cell, nn.BatchNorm2d) for _, cell in folded.cells_and_names())
    assert not folded.training


def test_folding_moves_batchnorm_into_conv_parameters():
    net = trained_like("mobilenet_v3_small")
    conv_weight = net.features[0][0].weight.asnumpy().astype(np.float64)
    bn = net.features[0][1]
    gamma, beta, mean, var = (p.asnumpy().astype(np.float64) for p in
                              (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    unfolded_names = set(net.parameters_dict())
    fold_batchnorm(net)
    names = set(net.parameters_dict())
    scale = gamma / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(net.features[0][0].weight.asnumpy(), conv_weight * scale[:, None, None, None],
                               rtol=1e-6)
    np.testing.assert_allclose(net.features[0][0].bias.asnumpy(), beta - mean * scale, rtol=1e-6, atol=1e-7)
    # 34 ConvBNAct blocks in Small: each gains a conv bias and loses its 4 BatchNorm tensors
    gained = {f"{n[:-len('1.gamma')]}0.bias" for n in unfolded_names if n.endswith(".1.gamma")}
    assert names - unfolded_names == gained and len(gained) == 34
    assert len(unfolded_names - names) == 4 * 34
    assert fold_batchnorm(net) is net and set(net.parameters_dict()) == names  # folding twice changes nothing
