import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

from mobilenetv3.models.factory import create_model
from mobilenetv3.models.architectures import ARCHITECTURES, list_models, make_divisible
from mobilenetv3.models.mobilenetv3 import GlobalAvgPool, HardSigmoid, HardSwish, count_complexity
from mobilenetv3.models.passes import WrittenOutGlobalAvgPool, WrittenOutHardSigmoid, WrittenOutHardSwish, written_out
from mobilenetv3.training.train_step import TrainStep

# torchvision 0.29's counts for 1000 classes (trainable; and including BN running statistics).
PARAMS = {("mobilenet_v3_small", 1.0): (2_542_856, 2_554_968), ("mobilenet_v3_large", 1.0): (5_483_032, 5_507_432),
          ("mobilenet_v3_small", 0.75): (1_653_920, 1_663_120), ("mobilenet_v3_large", 0.75): (3_377_576, 3_395_992)}


@pytest.mark.parametrize("name,width", PARAMS)
def test_parameter_counts_match_torchvision(name, width):
    net = create_model(name, width=width)
    trainable, total = PARAMS[(name, width)]
    assert sum(p.size for p in net.trainable_params()) == trainable
    assert sum(p.size for p in net.get_parameters()) == total


def test_macs_at_224():
    # Counted layer by layer from traced output shapes; torchvision reports 0.057 / 0.217 GFLOPs.
    assert count_complexity(create_model("mobilenet_v3_small")) == (2_542_856, 56_510_400)
    assert count_complexity(create_model("mobilenet_v3_large")) == (5_483_032, 216_589_760)
    assert ms.get_context("mode") == ms.GRAPH_MODE  # restored after tracing


def test_make_divisible():
    assert [make_divisible(v) for v in (16 * 0.75, 72 * 0.75, 3, 1280 * 0.75, 88 * 0.75)] == [16, 56, 8, 960, 64]
    assert make_divisible(0.9 * 8 * 10 - 1) == 72  # never more than 10% below the request


def test_block_tables_follow_the_paper():
    assert len(ARCHITECTURES["mobilenet_v3_large"].blocks) == 15
    assert len(ARCHITECTURES["mobilenet_v3_small"].blocks) == 11
    net = create_model("mobilenet_v3_small")
    first = net.features[1].block  # stride 2, SE, expansion 16 == input 16: no expand conv
    assert [type(c).__name__ for c in first] == ["ConvBNAct", "SqueezeExcitation", "ConvBNAct"]
    assert first[1].fc1.out_channels == 8 and first[0][0].stride == (2, 2)
    # nn.BatchNorm2d(momentum=0.99) keeps 1 - 0.99 internally: torch's 0.01, the same running-stat update.
    assert net.features[0][1].eps == pytest.approx(1e-3) and net.features[0][1].momentum == pytest.approx(0.01)


@pytest.mark.parametrize("name,width,features", [("mobilenet_v3_small", 1.0, 576), ("mobilenet_v3_large", 1.0, 960),
                                                 ("mobilenet_v3_small", 0.75, 432), ("mobilenet_v3_large", 0.75, 720)])
def test_output_shapes_graph_mode(name, width, features):
    net = create_model(name, num_classes=7, width=width)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).normal(size=(2, 3, 64, 64)), ms.float32)
    assert net(x).shape == (2, 7)
    assert net.num_features == features


@pytest.mark.parametrize("batch,size", [(1, 32), (3, 160), (1, 256)])
def test_batch_and_input_sizes_pynative(batch, size):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net = create_model("mobilenet_v3_small", num_classes=5)
        net.set_train(False)
        x = ms.Tensor(np.ones((batch, 3, size, size)), ms.float32)
        assert net(x).shape == (batch, 5)
        assert net.forward_features(x).shape == (batch, 576)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_unknown_model_and_bad_arguments():
    with pytest.raises(ValueError, match="known models: mobilenet_v3_large, mobilenet_v3_small"):
        create_model("mobilenet_v3_medium")
    with pytest.raises(ValueError, match="width must be a float > 0"):
        create_model("mobilenet_v3_small", width=0)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("mobilenet_v3_small", num_classes=0)
    assert list_models() == ["mobilenet_v3_large", "mobilenet_v3_small"]


def test_initialisation_scheme():
    ms.set_seed(0)
    net = create_model("mobilenet_v3_large")
    params = {p.name: p.asnumpy() for p in net.get_parameters()}
    assert np.all(params["features.3.block.0.1.gamma"] == 1) and np.all(params["features.3.block.0.1.beta"] == 0)
    assert np.all(params["classifier.0.bias"] == 0) and np.all(params["features.4.block.2.fc1.bias"] == 0)
    # Linear: normal(0, 0.01); conv: kaiming normal, fan_out: std sqrt(2 / (out * k * k)).
    assert np.std(params["classifier.0.weight"]) == pytest.approx(0.01, rel=0.02)
    weight = params["features.16.0.weight"]  # 1x1 conv 160 -> 960, 153,600 draws
    assert np.std(weight) == pytest.approx(np.sqrt(2 / 960), rel=0.02)


def test_same_seed_same_model_and_output():
    def build(seed):
        ms.set_seed(seed)
        return create_model("mobilenet_v3_small", num_classes=4)
    a, b, c = build(3), build(3), build(4)
    for pa, pb in zip(a.get_parameters(), b.get_parameters()):
        assert np.array_equal(pa.asnumpy(), pb.asnumpy()), pa.name
    assert not np.array_equal(a.classifier[3].weight.asnumpy(), c.classifier[3].weight.asnumpy())


def test_activations_match_their_written_out_export_form():
    x = ms.Tensor(np.linspace(-6, 6, 10008).reshape(1, 3, 6, 556), ms.float32)
    for op, written in ((HardSwish(), WrittenOutHardSwish()), (HardSigmoid(), WrittenOutHardSigmoid()),
                        (GlobalAvgPool(), WrittenOutGlobalAvgPool(True)), (GlobalAvgPool(False), WrittenOutGlobalAvgPool(False))):
        expected = written(x).asnumpy()
        assert op(x).shape == expected.shape and np.abs(op(x).asnumpy() - expected).max() < 1e-6
        assert np.abs(expected).max() > 0.1


def test_written_out_replaces_every_activation_and_keeps_parameters_and_logits():
    ms.set_seed(3)
    net = create_model("mobilenet_v3_small", num_classes=5).set_train(False)
    x = ms.Tensor(np.random.default_rng(0).normal(size=(2, 3, 64, 64)), ms.float32)
    names = [(p.name, p.shape) for p in net.get_parameters()]
    expected = net(x).asnumpy()
    written_out(net)
    kinds = [type(cell) for _, cell in net.cells_and_names()]
    assert not {HardSwish, HardSigmoid, GlobalAvgPool} & set(kinds)
    # stem, expansion and depthwise of the 8 hard-swish blocks, last conv, classifier; one per SE block
    assert kinds.count(WrittenOutHardSwish) == 1 + 2 * 8 + 1 + 1 and kinds.count(WrittenOutHardSigmoid) == 9
    assert kinds.count(WrittenOutGlobalAvgPool) == 9 + 1
    assert [(p.name, p.shape) for p in net.get_parameters()] == names
    assert np.abs(net(x).asnumpy() - expected).max() < 1e-5 * np.abs(expected).max()


def test_training_steps_lower_the_loss_in_graph_mode():
    ms.set_seed(1)
    net = create_model("mobilenet_v3_small", num_classes=3, bn_momentum=0.9)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.normal(size=(6, 3, 32, 32)), ms.float32)
    labels = ms.Tensor(np.array([0, 1, 2, 0, 1, 2]), ms.int32)
    step = TrainStep(nn.WithLossCell(net, nn.CrossEntropyLoss()), nn.Momentum(net.trainable_params(), 0.05, 0.9))
    step.set_train()
    losses = [float(step(images, labels).asnumpy()) for _ in range(8)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_reset_classifier_keeps_the_rest():
    net = create_model("mobilenet_v3_small", num_classes=10)
    before = net.classifier[0].weight.asnumpy().copy()
    net.reset_classifier(4)
    assert net.classifier[3].weight.shape == (4, 1024) and net.classifier[3].weight.name == "classifier.3.weight"
    assert np.array_equal(net.classifier[0].weight.asnumpy(), before)
    net.set_train(False)
    assert net(ops.ones((1, 3, 32, 32), ms.float32)).shape == (1, 4)


@pytest.mark.parametrize("name, blocks", [("mobilenet_v3_small", 11), ("mobilenet_v3_large", 15)])
def test_stochastic_depth_rates_rise_as_timms_builder_sets_them(name, blocks):
    """Row i of n drops its residual branch with probability rate * i / (n + 1) (timm counts the last 1x1 conv
    as a block); rows without a residual have nothing to drop. Its cells add no parameters."""
    from mobilenetv3.models.mobilenetv3 import InvertedResidual
    net = create_model(name, drop_path_rate=0.2)
    rows = [cell for cell in net.features if isinstance(cell, InvertedResidual)]
    assert len(rows) == blocks
    assert [row.drop_path.p for row in rows] == [0.2 * i / (blocks + 1) if row.use_residual else 0.0
                                                 for i, row in enumerate(rows)]
    assert sum(row.use_residual for row in rows) == (6 if blocks == 11 else 10)
    assert [row.drop_path.stream for row in rows] == list(range(1, blocks + 1))
    assert [p.name for p in net.get_parameters()] == [p.name for p in create_model(name).get_parameters()]
