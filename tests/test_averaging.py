"""Checkpoint averaging against hand-computed means, its refusals, and the script's output in eval.py."""
import ast
import re

import mindspore as ms
import numpy as np
import pytest

from conftest import run_script
from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.checkpoints.averaging import average_checkpoints, last_checkpoints
from mobilenetv3.errors import UserError
from mobilenetv3.models.factory import create_model

# Three checkpoints whose means are exact: weight, BN running mean and variance, and an integer step counter.
ENTRIES = {
    "features.0.0.weight": ([[1, 2], [4, 0]], [[2, 2], [8, 1]], [[3, 5], [0, 2]]),
    "features.0.1.moving_mean": ([0.5, -1], [1.5, 1], [1, 3]),
    "features.0.1.moving_variance": ([1, 1], [2, 4], [0, 1]),
    "opt.global_step": ([10], [20], [30]),
}
MEANS = {"features.0.0.weight": [[2, 3], [4, 1]], "features.0.1.moving_mean": [1, 1],
         "features.0.1.moving_variance": [1, 2]}


def write(path, entries: dict, meta: dict):
    tensors = {name: ms.Tensor(np.asarray(value, np.int32 if name == "opt.global_step" else np.float32))
               for name, value in entries.items()}
    checkpoint.save(path, tensors, meta)
    return path


def hand_made(tmp_path):
    return [write(tmp_path / f"m-{i + 1}_{10 * (i + 1)}.ckpt", {name: values[i] for name, values in ENTRIES.items()},
                  {"model": "m", "epoch": i + 1, "step": 10 * (i + 1), "classes": ["a", "b"]}) for i in range(3)]


def test_average_of_three_is_the_hand_computed_mean_with_the_last_counter_and_meta(tmp_path):
    inputs = hand_made(tmp_path)
    output = average_checkpoints(inputs, tmp_path / "avg.ckpt")
    params, meta = checkpoint.load(output)
    assert set(params) == set(ENTRIES)
    for name, mean in MEANS.items():
        assert params[name].dtype == ms.float32 and np.array_equal(params[name].asnumpy(), np.float32(mean)), name
    assert params["opt.global_step"].dtype == ms.int32 and params["opt.global_step"].asnumpy().tolist() == [30]
    assert meta == {"model": "m", "epoch": 3, "step": 30, "classes": ["a", "b"],
                    "averaged": [{"file": str(p), "epoch": i + 1, "step": 10 * (i + 1)} for i, p in enumerate(inputs)]}


def test_the_mean_is_taken_in_float64_then_rounded_once(tmp_path):
    values = [np.float32(0.1), np.float32(0.2), np.float32(0.7)]
    inputs = [write(tmp_path / f"{i}.ckpt", {"w": [v]}, {}) for i, v in enumerate(values)]
    params, _ = checkpoint.load(average_checkpoints(inputs, tmp_path / "avg.ckpt"))
    assert params["w"].asnumpy()[0] == np.float32(sum(np.float64(v) for v in values) / 3)


@pytest.mark.parametrize("change,message", [
    (lambda e: dict(e, **{"features.0.1.moving_mean": [1.0, 2.0, 3.0]}),
     r"checkpoint {bad}: parameter features\.0\.1\.moving_mean is float32\[3\] but float32\[2\] in {first}: average "
     r"checkpoints of one model"),
    (lambda e: {n: v for n, v in e.items() if n != "features.0.1.moving_variance"},
     r"checkpoint {bad} lacks parameter features\.0\.1\.moving_variance, which {first} has: average checkpoints of "
     r"one model and one run"),
    (lambda e: dict(e, **{"features.9.weight": [1.0]}),
     r"checkpoint {bad} has parameter features\.9\.weight, which {first} has not: average checkpoints of one model "
     r"and one run"),
], ids=["shape", "missing", "extra"])
def test_mismatched_names_or_shapes_are_one_error_naming_file_and_parameter(tmp_path, change, message):
    first, second, _ = hand_made(tmp_path)
    bad = write(tmp_path / "bad.ckpt", change({name: values[2] for name, values in ENTRIES.items()}), {})
    with pytest.raises(UserError, match="^" + message.format(bad=bad, first=first) + "$"):
        average_checkpoints([first, second, bad], tmp_path / "avg.ckpt")
    assert not (tmp_path / "avg.ckpt").exists()


def test_a_checkpoint_given_twice_or_a_copy_of_one_is_refused(tmp_path):
    first, second, _ = hand_made(tmp_path)
    (tmp_path / "sub").mkdir()
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(second.read_bytes())
    for again, how, earlier in ((first, "is the same file as", first),
                                (tmp_path / "sub" / ".." / first.name, "is the same file as", first),
                                (copy, "has the same content as", second)):
        with pytest.raises(UserError, match="^" + re.escape(f"checkpoint {again} {how} {earlier}: it would count twice "
                                                            "in the average; pass each checkpoint once") + "$"):
            average_checkpoints([first, second, again], tmp_path / "avg.ckpt")
    assert not (tmp_path / "avg.ckpt").exists()


def test_checkpoints_of_another_model_are_refused_even_with_the_same_shapes(tmp_path):
    first, second, third = hand_made(tmp_path)
    other = write(tmp_path / "other.ckpt", {name: values[2] for name, values in ENTRIES.items()},
                  {"model": "n", "epoch": 3, "step": 30})
    with pytest.raises(UserError, match="^" + re.escape(
            f"checkpoint {other} is for model 'n', but {first} for model 'm': average checkpoints of one model") + "$"):
        average_checkpoints([first, second, other], tmp_path / "avg.ckpt")
    assert not (tmp_path / "avg.ckpt").exists()


def test_refusals_before_reading(tmp_path):
    inputs = hand_made(tmp_path)
    with pytest.raises(UserError, match="at least two checkpoints, got 1"):
        average_checkpoints(inputs[:1], tmp_path / "avg.ckpt")
    with pytest.raises(UserError, match=f"--output {inputs[1]} is one of the inputs"):
        average_checkpoints(inputs, inputs[1])


def test_last_n_follows_the_order_the_run_wrote_them(tmp_path):
    # Epoch 10 was interrupted at step 57 (that checkpoint is named for the epoch it is in), then finished.
    for name in ("m-2_12.ckpt", "m-9_54.ckpt", "m-10_57.ckpt", "m-10_60.ckpt", ".m-11_66.123.partial.ckpt"):
        (tmp_path / name).touch()
    assert [p.name for p in last_checkpoints(tmp_path, 3)] == ["m-9_54.ckpt", "m-10_57.ckpt", "m-10_60.ckpt"]
    with pytest.raises(UserError, match=r"^--last 0: averaging needs at least two checkpoints; pass --last 2 or more$"):
        last_checkpoints(tmp_path, 0)
    with pytest.raises(UserError, match=rf"^--last 5: {tmp_path} holds 4 checkpoints named <model>-<epoch>_<step>"):
        last_checkpoints(tmp_path, 5)
    (tmp_path / "other-1_6.ckpt").touch()
    with pytest.raises(UserError, match=r"holds checkpoints of several models \(m, other\); pass the ones to "
                                        r"average with --inputs"):
        last_checkpoints(tmp_path, 2)


def run_folder(directory):
    """A run's folder with two checkpoints of MobileNetV3-Small for the 3 test classes: fresh weights, then
    all of them moved (weights x1.5, running means +1, variances x2), so their mean is neither."""
    net = create_model("mobilenet_v3_small", 3)
    meta = {"model": "mobilenet_v3_small", "num_classes": 3, "width": 1.0, "bn_eps": 1e-3, "bn_momentum": 0.9,
            "classes": ["class_0", "class_1", "class_2"]}
    first = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    moved = {name: value + 1 if name.endswith("moving_mean") else
             value * (2 if name.endswith("moving_variance") else 1.5) for name, value in first.items()}
    for epoch, values in ((1, first), (2, moved)):
        write(directory / f"mobilenet_v3_small-{epoch}_{6 * epoch}.ckpt", values,
              dict(meta, epoch=epoch, step=6 * epoch))
    return first, moved


def test_script_averages_the_last_checkpoints_of_a_run_and_eval_loads_it(image_folder, tmp_path):
    run = tmp_path / "run"
    first, moved = run_folder(run)
    inputs = checkpoint.list_checkpoints(run)
    output = tmp_path / "avg.ckpt"
    result = run_script("average_checkpoints", "--last", 2, "--ckpt_save_dir", run, "--output", output)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"averaged 2 checkpoints ({inputs[0]}, {inputs[1]}) into {output}"
    averaged, meta = checkpoint.load(output)
    assert set(averaged) == set(first)
    for name in first:  # x1.5 -> 1.25x, +1 -> +0.5, x2 -> 1.5x
        expected = ((first[name].astype(np.float64) + moved[name]) / 2).astype(np.float32)
        assert np.array_equal(averaged[name].asnumpy(), expected), name
    assert meta["epoch"] == 2 and [r["file"] for r in meta["averaged"]] == list(map(str, inputs))

    result = run_script("eval", "--device_target", "CPU", "--num_classes", 3, "--resize", 32, "--data_url",
                        image_folder, "--pretrained", output)
    assert result.returncode == 0, result.stderr
    metrics = ast.literal_eval(result.stdout.splitlines()[0])
    assert set(metrics) == {"Top_1_Accuracy", "Top_5_Accuracy"}
    assert result.stdout.splitlines()[1].endswith("images: 18")  # all of val/ (3 classes x 6)


def test_script_errors_are_one_line(tmp_path):
    result = run_script("average_checkpoints", "--last", 2, "--output", tmp_path / "avg.ckpt")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].endswith(
        "error: --last N needs --ckpt_save_dir DIR (the training run's folder)")
    result = run_script("average_checkpoints", "--inputs", tmp_path / "a.ckpt", tmp_path / "b.ckpt", "--output",
                        tmp_path / "avg.ckpt")
    assert result.returncode == 2 and result.stderr.strip() == f"error: checkpoint {tmp_path / 'a.ckpt'} not found"
