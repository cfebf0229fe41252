"""create_model(pretrained=CKPT) builds the model the checkpoint was saved for (BatchNorm eps and momentum,
width, classes from its meta) and refuses a contradicting argument in one line."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from mobilenetv3 import create_model
from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.errors import UserError
from mobilenetv3.models.architectures import ARCHITECTURES
from mobilenetv3.models.mobilenetv3 import MobileNetV3

SMALL = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def timm_like_checkpoint(tmp_path_factory):
    """A checkpoint saved for eps 1e-5 (as converted timm weights are), width 0.75 and 7 classes, with
    BatchNorm statistics far from their initial values so that eps changes the logits."""
    ms.set_seed(5)
    source = MobileNetV3(ARCHITECTURES[SMALL], num_classes=7, width=0.75, bn_eps=1e-5, bn_momentum=0.9)
    rng = np.random.default_rng(0)
    for p in source.get_parameters():
        if "moving_variance" in p.name:  # small variances: where eps matters
            p.set_data(ms.Tensor(rng.uniform(1e-4, 1e-2, p.shape).astype(np.float32)))
    path = tmp_path_factory.mktemp("factory") / "timm_like.ckpt"
    checkpoint.save(path, {p.name: p for p in source.get_parameters()},
                    dict(model=SMALL, num_classes=7, width=0.75, bn_eps=1e-5, bn_momentum=0.9))
    images = ms.Tensor(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))
    return path, images, source.set_train(False)(images).asnumpy()


def batch_norms(net):
    return [cell for _, cell in net.cells_and_names() if isinstance(cell, nn.BatchNorm2d)]


def momenta(net) -> set:
    return {round(1 - bn.momentum, 6) for bn in batch_norms(net)}  # nn.BatchNorm2d keeps 1 - momentum


def test_pretrained_builds_the_saved_model_and_gives_its_logits(timm_like_checkpoint):
    path, images, expected = timm_like_checkpoint
    net = create_model(SMALL, pretrained=str(path)).set_train(False)
    assert {bn.eps for bn in batch_norms(net)} == {1e-5} and net.num_classes == 7
    assert momenta(net) == {0.9}
    assert np.array_equal(net(images).asnumpy(), expected)
    # the same weights in a model with the default eps: the difference the factory avoids
    default_eps = MobileNetV3(ARCHITECTURES[SMALL], num_classes=7, width=0.75, bn_momentum=0.9)
    checkpoint.load_weights(default_eps, path, new_classifier_ok=False)
    assert np.abs(default_eps.set_train(False)(images).asnumpy() - expected).max() > 1e-3


def test_arguments_that_agree_are_accepted_and_contradicting_ones_are_one_clear_error(timm_like_checkpoint):
    path, images, expected = timm_like_checkpoint
    same = create_model(SMALL, num_classes=7, width=0.75, bn_eps=1e-5, pretrained=str(path)).set_train(False)
    assert np.array_equal(same(images).asnumpy(), expected)
    for key, value in (("bn_eps", 1e-3), ("width", 1.0), ("bn_momentum", 0.99)):
        with pytest.raises(UserError) as error:
            create_model(SMALL, pretrained=str(path), **{key: value})
        assert str(error.value) == (f"create_model('{SMALL}', {key}={value!r}): checkpoint {path} was saved with "
                                    f"{key} {dict(bn_eps=1e-5, width=0.75, bn_momentum=0.9)[key]!r}; leave {key} "
                                    "out to build the model it is for")
    with pytest.raises(UserError, match="is for model 'mobilenet_v3_small', but model is 'mobilenet_v3_large'"):
        create_model("mobilenet_v3_large", pretrained=str(path))


def test_another_num_classes_fine_tunes_from_the_checkpoint(timm_like_checkpoint, capsys):
    path, _, _ = timm_like_checkpoint
    net = create_model(SMALL, num_classes=3, pretrained=str(path))
    assert net.num_classes == 3 and {bn.eps for bn in batch_norms(net)} == {1e-5}
    assert "freshly initialised for fine-tuning" in capsys.readouterr().err  # logged: stderr
    saved, _ = checkpoint.load(path)
    assert np.array_equal(net.classifier[0].weight.asnumpy(), saved["classifier.0.weight"].asnumpy())


def test_without_a_checkpoint_the_defaults_are_torchvisions_and_mindspores():
    net = create_model(SMALL)
    assert net.num_classes == 1000 and {bn.eps for bn in batch_norms(net)} == {1e-3}
    assert momenta(net) == {0.99}
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v3_tiny'; known models: mobilenet_v3_large, "):
        create_model("mobilenet_v3_tiny")
