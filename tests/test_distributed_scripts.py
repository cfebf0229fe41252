"""The headline commands under mpirun on CPU: scripts/train.py and scripts/eval.py with 2 ranks."""
import ast
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ONE_JOB_AT_A_TIME, REPO, STEP_LINE, write_image_folder

MPIRUN = shutil.which("mpirun")
pytestmark = [pytest.mark.skipif(MPIRUN is None, reason="mpirun (OpenMPI) is not installed"), ONE_JOB_AT_A_TIME]
COMMON = ["--device_target", "CPU", "--num_classes", 3, "--resize", 32, "--num_parallel_workers", 1]


def run(script, *args, ranks=2):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "MS_"))}
    launcher = [MPIRUN, "--allow-run-as-root", "--bind-to", "none", "--oversubscribe", "-n", str(ranks)] if ranks else []
    command = [*launcher, sys.executable, str(REPO / "scripts" / f"{script}.py"), *map(str, COMMON), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def uneven_folder(tmp_path_factory):
    # 7 val images per class: 21 in all, not divisible by 2 ranks.
    return write_image_folder(tmp_path_factory.mktemp("uneven"), {"train": 8, "val": 7}, seed=3)


def test_mpirun_train_then_eval_equals_one_process(uneven_folder, tmp_path):
    trained = run("train", "--data_url", uneven_folder, "--batch_size", 4, "--epoch_size", 1, "--bn_momentum", 0.9,
                  "--ckpt_save_dir", tmp_path, "--dataset_sink_mode", "false")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    lines = [line for line in trained.stdout.splitlines() if line.startswith("Epoch:[")]
    # 24 images, 2 ranks x batch 4: 3 steps, logged once (rank 0 only).
    assert [line[:36] for line in lines] == [f"Epoch:[  1/   1], step:[    {s}/    3]" for s in (1, 2, 3)]
    assert all(STEP_LINE.match(line) for line in lines)
    # One checkpoint and one run record, written by rank 0 alone; the step log once in train.log.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "mobilenet_v3_small-1_3.ckpt", "run.yaml",
                                                          "train.log"]
    assert [line for line in (tmp_path / "train.log").read_text().splitlines() if line.startswith("Epoch:[")] == lines
    assert "# world size: 2" in (tmp_path / "run.yaml").read_text()
    ckpt = tmp_path / "mobilenet_v3_small-1_3.ckpt"

    # The same images flat, labelled by a CSV file: evaluated on 2 ranks as the class folders on 1.
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["filename,class"]
    for path in sorted((uneven_folder / "val").glob("*/*.jpg")):
        shutil.copy(path, flat / f"{path.parent.name}_{path.name}")
        rows.append(f"{path.parent.name}_{path.name},{path.parent.name}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    results = {}
    for ranks, data in ((0, [uneven_folder]), (2, [uneven_folder]), ("2 flat", [flat, "--val_labels", tmp_path / "labels.csv"])):
        saved = tmp_path / f"metrics {ranks}.json"
        done = run("eval", "--data_url", *data, "--pretrained", ckpt, "--batch_size", 4, "--json", saved,
                   ranks=int(str(ranks)[0]))
        assert done.returncode == 0, done.stderr[-3000:]
        lines = done.stdout.splitlines()
        metrics = [line for line in lines if line.startswith("{'Top_1_Accuracy'")]
        assert len(metrics) == 1, done.stdout  # printed by rank 0 only
        results[ranks] = (ast.literal_eval(metrics[0]), [line for line in lines if line.startswith("loss:")],
                          json.loads(saved.read_text()))
    for ranks in (2, "2 flat"):
        assert results[ranks][0] == results[0][0]  # exactly, floats included
        assert results[ranks][1][0].endswith("images: 21")
        one, many = results[0][2], results[ranks][2]
        assert (many["per_class"], many["confusion_matrix"]) == (one["per_class"], one["confusion_matrix"])
    assert set(results[0][0]) == {"Top_1_Accuracy", "Top_5_Accuracy"}
    assert [c["images"] for c in results[0][2]["per_class"]] == [7, 7, 7]
