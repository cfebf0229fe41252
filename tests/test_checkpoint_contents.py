"""Checkpoints whose contents cannot be right, refused where every checkpoint is read (checkpoints.files.load):
NaN or infinite tensors, and a meta that contradicts the tensors. Each is one error line in eval, infer and
export, average_checkpoints, and training's --resume and --pretrained."""
import re
import runpy

import mindspore as ms
import numpy as np
import pytest

from conftest import REPO
from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.cli import run_cli
from mobilenetv3.errors import UserError
from mobilenetv3.models.factory import create_model
from mobilenetv3.training.trainer import train

SMALL = "mobilenet_v3_small"
CLASSES = ["class_0", "class_1", "class_2"]
BROKEN = "features.4.block.1.0.weight"  # a depthwise conv in the middle of the network


def write_checkpoint(path, rows=3, broken=(), width=1.0, **meta):
    """MobileNetV3-Small's fresh weights at `width` with a classifier of `rows` classes, the tensors named in
    `broken` holding one NaN, and the meta training writes for 3 classes at width 1.0, updated with `meta`."""
    arrays = {p.name: p.asnumpy().copy() for p in create_model(SMALL, rows, width).get_parameters()}
    for name in broken:
        arrays[name].flat[5] = np.nan
    checkpoint.save(path, {name: ms.Tensor(array) for name, array in arrays.items()},
                    dict(dict(model=SMALL, num_classes=3, width=1.0, bn_eps=1e-3, bn_momentum=0.9, classes=CLASSES,
                              resize=32), **meta))
    return path


def script_error(name, argv, capsys) -> str:
    """The one error line of scripts/<name>.py run in this process with `argv`, which must exit 2."""
    main = runpy.run_path(str(REPO / "scripts" / f"{name}.py"), run_name=f"{name}_script")["main"]
    with pytest.raises(SystemExit) as stop:
        run_cli(main, [str(arg) for arg in argv])
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(("warning:", "note:"))]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    return errors[0][len("error: "):]


def uses(image_folder, tmp_path, path):
    """The command lines of the scripts that read a checkpoint, given `path`."""
    return {
        "eval": ["--device_target", "CPU", "--data_url", image_folder, "--pretrained", path],
        "infer": ["--device_target", "CPU", "--data_url", image_folder / "val" / "class_0", "--pretrained", path],
        "export": ["--device_target", "CPU", "--pretrained", path, "--file_name", tmp_path / "exported"],
        "average_checkpoints": ["--inputs", write_checkpoint(tmp_path / "good.ckpt"), path,
                                "--output", tmp_path / "avg.ckpt"],
    }


@pytest.mark.parametrize("script", ["eval", "infer", "export", "average_checkpoints"])
def test_a_checkpoint_holding_nan_is_refused_naming_the_tensor(image_folder, tmp_path, capsys, script):
    path = write_checkpoint(tmp_path / "nan.ckpt", broken=[BROKEN, "classifier.3.weight"])
    size = create_model(SMALL, 3).parameters_dict()[BROKEN].size
    assert script_error(script, uses(image_folder, tmp_path, path)[script], capsys) == (
        f"checkpoint {path}: tensor {BROKEN} holds NaN or infinite values (1 of {size}): the run that saved it "
        "diverged or the file is damaged; use an earlier checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.ckpt", "nan.ckpt"]  # nothing written


def test_training_refuses_to_resume_from_or_fine_tune_a_checkpoint_holding_nan(small_config, tmp_path):
    """A run's own checkpoint (optimiser state and all) with one NaN in a BatchNorm variance."""
    path = train(small_config(epoch_size=1))
    params, meta = checkpoint.load(path)
    arrays = {name: param.asnumpy() for name, param in params.items()}
    arrays["features.0.1.moving_variance"][2] = np.inf
    checkpoint.save(path, {name: ms.Tensor(array) for name, array in arrays.items()}, meta)
    message = re.escape(f"checkpoint {path}: tensor features.0.1.moving_variance holds NaN or infinite values "
                        "(1 of 16): the run that saved it diverged or the file is damaged; use an earlier checkpoint")
    with pytest.raises(UserError, match=message):
        train(small_config(epoch_size=2, resume="auto"))
    assert checkpoint.list_checkpoints(path.parent) == [path]
    with pytest.raises(UserError, match=message):
        train(small_config(pretrained=str(path), ckpt_save_dir=str(tmp_path / "fine_tuned")))
    assert not list((tmp_path / "fine_tuned").glob("*.ckpt"))


@pytest.mark.parametrize("script", ["eval", "infer", "export"])
def test_a_meta_that_contradicts_the_tensors_is_one_line_naming_both(image_folder, tmp_path, capsys, script):
    lying = write_checkpoint(tmp_path / "lying.ckpt", rows=1000, num_classes=10, classes=None)
    assert script_error(script, uses(image_folder, tmp_path, lying)[script], capsys) == (
        f"checkpoint {lying}: its meta says num_classes 10, but its tensor classifier.3.weight is (1000, 1024); "
        "the file contradicts itself: save or convert it again")
    narrow = write_checkpoint(tmp_path / "narrow.ckpt", width=0.5)  # the meta says width 1.0
    error = script_error(script, uses(image_folder, tmp_path, narrow)[script], capsys)
    assert error.startswith(f"checkpoint {narrow}: its meta records {SMALL}, width 1.0, 3 classes, but its tensors "
                            "do not fit that model (shape differs: classifier.0.bias (512,) vs (1024,), ")
    assert error.endswith("; the file contradicts itself: save or convert it again")


def test_a_class_list_of_another_length_than_the_classifier_is_refused(small_config, tmp_path):
    path = write_checkpoint(tmp_path / "classes.ckpt", classes=CLASSES + ["class_3"])
    with pytest.raises(UserError, match=re.escape(
            f"checkpoint {path}: its meta says 4 class names, but its tensor classifier.3.weight is (3, 1024)")):
        checkpoint.load(path)
    with pytest.raises(UserError, match="its meta says 4 class names"):  # fine-tuning from it, too
        train(small_config(pretrained=str(path)))
