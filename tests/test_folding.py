"""The inference network (BatchNorm folded, fused CPU kernels): the logits of the unfolded network up to float32
rounding, and no BatchNorm left."""
from collections import Counter

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from mobilenetv3.native.cpu_kernels import kernel_library
from mobilenetv3.models.factory import create_model
from mobilenetv3.models.folding import FoldedConvAct, FusedSqueezeExcitation, fold_for_inference
from mobilenetv3.models.architectures import ARCHITECTURES
from mobilenetv3.models.mobilenetv3 import ConvBNAct, GlobalAvgPool, HardSwish, SqueezeExcitation
from mobilenetv3.models.passes import KernelGlobalAvgPool, KernelHardSwish

needs_kernels = pytest.mark.skipif(kernel_library() is None, reason="the AVX2 kernels cannot run here (the reason "
                                   "is on stderr); the plain inference network is tested without them")


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


@pytest.mark.parametrize("fused_kernels", [pytest.param(True, marks=needs_kernels), False])
# Large, the same blocks at other sizes: with --runslow.
@pytest.mark.parametrize("model_name", ["mobilenet_v3_small", pytest.param("mobilenet_v3_large", marks=pytest.mark.slow)])
def test_inference_network_gives_the_same_logits(model_name, fused_kernels):
    images = ms.Tensor(np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32))
    expected = trained_like(model_name)(images).asnumpy()
    folded = fold_for_inference(trained_like(model_name), fused_kernels)
    largest = np.abs(expected).max()
    assert largest > 10.0  # logits of the size a trained network gives, not near zero
    # float32 rounding: the folded products round differently, about 1e-6 of the logits' size
    error = np.abs(folded(images).asnumpy() - expected).max()
    print(f"{model_name}: largest logit {largest:.2f}, largest difference {error:.2e}")
    assert error <= 4e-6 * largest
    cells = [cell for _, cell in folded.cells_and_names()]
    assert not any(isinstance(cell, (nn.BatchNorm2d, ConvBNAct)) for cell in cells)
    modes = Counter(cell.mode for cell in cells if isinstance(cell, FoldedConvAct))
    se_blocks = sum(row.use_se for row in ARCHITECTURES[model_name].blocks)
    depthwise = len(ARCHITECTURES[model_name].blocks)
    fused_se = sum(isinstance(cell, FusedSqueezeExcitation) for cell in cells)
    if fused_kernels:  # every depthwise convolution one kernel, every other conv Conv2D + one kernel
        assert modes == {"depthwise": depthwise, "bias": modes["bias"]} and modes["bias"] > depthwise
        assert fused_se == se_blocks and not any(isinstance(cell, SqueezeExcitation) for cell in cells)
        assert not any(isinstance(cell, (HardSwish, GlobalAvgPool)) for cell in cells)  # classifier, head pool
        assert sum(isinstance(cell, (KernelHardSwish, KernelGlobalAvgPool)) for cell in cells) == 2
    else:
        assert set(modes) == {"plain"} and fused_se == 0
    assert not folded.training


def test_folding_moves_batchnorm_into_conv_parameters():
    net = trained_like("mobilenet_v3_small")
    conv_weight = net.features[0][0].weight.asnumpy().astype(np.float64)
    bn = net.features[0][1]
    gamma, beta, mean, var = (p.asnumpy().astype(np.float64) for p in
                              (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    unfolded_names = set(net.parameters_dict())
    fold_for_inference(net)
    names = set(net.parameters_dict())
    scale = gamma / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(net.features[0].weight.asnumpy(), conv_weight * scale[:, None, None, None],
                               rtol=1e-6)
    np.testing.assert_allclose(net.features[0].bias.asnumpy(), beta - mean * scale, rtol=1e-6, atol=1e-7)
    # 34 ConvBNAct blocks in Small: each becomes one weight and one bias under the block's name
    blocks = {n[:-len(".1.gamma")] for n in unfolded_names if n.endswith(".1.gamma")}
    assert len(blocks) == 34 and {"features.0", "features.1.block.0"} <= blocks
    assert {f"{block}.{p}" for block in blocks for p in ("weight", "bias")} <= names
    assert not any(".1.moving_mean" in n or n.endswith(".0.weight") and n[:-len(".0.weight")] in blocks
                   for n in names)
    if kernel_library() is not None:
        assert "features.1.block.1.fc1_weight" in names  # the fused squeeze-excitation's copy of fc1.weight
    assert fold_for_inference(net) is net and set(net.parameters_dict()) == names  # folding twice changes nothing


def randomized_block(block, seed):
    rng = np.random.default_rng(seed)
    for param in block.get_parameters():
        low, high = (0.5, 2.0) if "variance" in param.name or "gamma" in param.name else (-1.0, 1.0)
        param.set_data(ms.Tensor(rng.uniform(low, high, param.shape).astype(np.float32)))
    return block


@needs_kernels
@pytest.mark.parametrize("groups,kernel,stride,activation", [
    (13, 3, 1, "HS"), (13, 5, 2, "RE"), (13, 3, 2, None), (1, 1, 1, "HS"), (1, 1, 1, "RE"), (1, 1, 1, None)])
def test_fused_conv_kernels_match_the_plain_ops_on_odd_shapes(groups, kernel, stride, activation):
    """Channel counts and map sizes that are not multiples of the kernels' 8 lanes."""
    out_channels = 13 if groups > 1 else 21
    block = randomized_block(ConvBNAct(13, out_channels, kernel, stride, groups, activation), seed=kernel + stride)
    fused, plain = FoldedConvAct(block, kernel_library()), FoldedConvAct(block, None)
    assert fused.mode == ("depthwise" if groups > 1 else "bias") and plain.mode == "plain"
    x = ms.Tensor(np.random.default_rng(5).uniform(-4, 4, (3, 13, 9, 9)).astype(np.float32))
    expected = plain(x).asnumpy()
    assert expected.shape == (3, out_channels, 9 // stride + stride - 1, 9 // stride + stride - 1)
    assert np.max(np.abs(fused(x).asnumpy() - expected)) <= 1e-5 * np.max(np.abs(expected))
    if activation is not None:
        assert (expected < 0).mean() < 0.4  # the activation ran: ReLU / hard-swish leave few negatives


@needs_kernels
def test_fused_squeeze_excitation_matches_the_cell_on_odd_shapes():
    se = randomized_block(SqueezeExcitation(20), seed=3)  # 8 squeezed channels
    x = ms.Tensor(np.random.default_rng(6).uniform(-2, 2, (3, 20, 7, 5)).astype(np.float32))
    expected = se(x).asnumpy()
    fused = FusedSqueezeExcitation(se, kernel_library())(x).asnumpy()
    assert np.max(np.abs(fused - expected)) <= 1e-5 * np.max(np.abs(expected))
    assert np.std(expected / x.asnumpy()) > 0.01  # the scales differ between channels and images
