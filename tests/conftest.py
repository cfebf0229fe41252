"""Shared fixtures: CPU device, tiny synthetic image folders, small configs; which tests pytest-xdist must
keep on one worker."""
import fcntl
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilenetv3 import cli, log

cli.apply_process_defaults()  # as every script does, before MindSpore starts
log.configure()  # the scripts' logging: the training run's lines on stdout (capsys sees them), the rest on stderr

import mindspore as ms  # noqa: E402

from mobilenetv3.config import build_config  # noqa: E402
from mobilenetv3.training.trainer import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/ (the harness and the PyTorch twin) is not installed
sys.path.insert(0, str(REPO / "scripts"))  # fashion_mnist.py, the demo's data writer, lives beside its script
ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)

# Tests that start mpirun or msrun jobs (several MindSpore processes, a scheduler port, network namespaces)
# run one at a time, on one pytest-xdist worker (--dist loadgroup), beside the other worker's lighter tests.
ONE_JOB_AT_A_TIME = pytest.mark.xdist_group("launched_jobs")
# PATH as this interpreter's environment, activated, has it: scripts/test.sh runs .venv/bin/python without
# putting .venv/bin on PATH, where msrun (installed with mindspore) lives and whose "python" msrun starts.
ACTIVATED_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
MSRUN = shutil.which("msrun", path=ACTIVATED_PATH)

# The seed README's step line, widths included: "Epoch:[ 90/ 120], step:[    1/ 2502], ...".
STEP_LINE = re.compile(r"^Epoch:\[[ \d]{2}\d/[ \d]{3}\d\], step:\[[ \d]{4}\d/[ \d]{4}\d\], loss:\[\d+\.\d{3}/\d+\.\d{3}\], "
                       r"time:\d+\.\d{3} ms, lr:\d+\.\d{5}$")
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


def reference_eval_input(paths, resize=32) -> np.ndarray:
    """Images as evaluation must give them to the network (float32 NCHW), made without the package's
    pipeline: Pillow decoding, MindSpore's Resize (shorter side resize / 0.875) and CenterCrop, the
    ImageNet mean and std applied here."""
    from mindspore.dataset import vision
    from mindspore.dataset.transforms import Compose
    ops = Compose([vision.Resize(int(resize / 0.875)), vision.CenterCrop(resize)])
    images = np.stack([ops(np.asarray(Image.open(path).convert("RGB"))) for path in paths]) / 255
    normalised = (images - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return normalised.transpose(0, 3, 1, 2).astype(np.float32)


def openvino_computes_bf16() -> bool:
    """Whether OpenVINO's CPU plugin lists BF16 here, asked as the package's OpenVINO starts: without MindSpore's
    oneDNN cap (cpu_info.onednn_uncapped), which the plugin takes when it loads."""
    import openvino
    from mobilenetv3.native.cpu_info import onednn_uncapped
    with onednn_uncapped():
        return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def write_image_folder(root: Path, per_class: dict, size=(40, 48), seed=0, colours=COLOURS):
    """root/<split>/class_<c>/<i>.jpg: noisy images of one colour per class (easy to learn)."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for c, colour in enumerate(colours):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(rng.normal(0, 40, (*size, 3)) + colour, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)
    return root


def made_once(tmp_path_factory, name: str, make) -> Path:
    """`make(folder)` -> a path in that empty folder, run once per test run: with pytest-xdist the first worker
    to ask makes it in the run's shared temporary folder while the others wait for it. What it makes is
    read-only to its users (copy it before writing beside it)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # each worker's basetemp is a folder of the run's
    folder, made = base / name, base / f"{name}.made"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            made.write_text(str(Path(make(folder)).relative_to(folder)))
        return folder / made.read_text()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return made_once(tmp_path_factory, "images", lambda folder: write_image_folder(folder, {"train": 16, "val": 6}))


@pytest.fixture(scope="session")
def trained_once(image_folder, tmp_path_factory):
    """Two epochs at BN momentum 0.5 (settled statistics), so the probabilities differ between images."""
    return made_once(tmp_path_factory, "trained_once", lambda folder: train(build_config(overrides=dict(
        device_target="CPU", data_url=str(image_folder), num_classes=3, batch_size=8, epoch_size=2, resize=32,
        num_parallel_workers=2, bn_momentum=0.5, max_lr=0.02, decay_epoch=2, dataset_sink_mode=False,
        log_interval=100, ckpt_save_dir=str(folder)))))


@pytest.fixture(scope="module")
def trained(trained_once, tmp_path_factory):
    """trained_once's checkpoint in a copy of its run folder for each test module, which may write beside it."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(trained_once.parent, folder)
    return folder / trained_once.name


@pytest.fixture(scope="session")  # its users copy the checkpoint before writing beside it
def trained_longer(image_folder, tmp_path_factory):
    """The test suite's tiny training run, for 6 epochs instead of 2: after 2 one class's activations are
    tens of times larger than the others', so one int8 range per tensor (set by that class) rounds the
    others' features to almost nothing and their top-1 to chance; a trained model has no such gap."""
    return made_once(tmp_path_factory, "trained_longer", lambda folder: train(build_config(overrides=dict(
        device_target="CPU", data_url=str(image_folder), num_classes=3, batch_size=8, epoch_size=6, resize=32,
        num_parallel_workers=2, bn_momentum=0.9, max_lr=0.05, decay_epoch=6, dataset_sink_mode=False,
        log_interval=100, ckpt_save_dir=str(folder)))))


@pytest.fixture
def small_config(image_folder, tmp_path):
    """A config that trains MobileNetV3-Small on the synthetic folder in seconds."""
    from mobilenetv3.config import build_config

    def make(**overrides):
        values = dict(device_target="CPU", data_url=str(image_folder), num_classes=3, batch_size=8, epoch_size=2,
                      resize=32, num_parallel_workers=2, bn_momentum=0.9, ckpt_save_dir=str(tmp_path / "ckpt"),
                      max_lr=0.05, lr_base_size=8, decay_epoch=2, dataset_sink_mode=False, log_interval=1)
        values.update(overrides)
        return build_config(overrides=values)
    return make


def script_main(name, folder="scripts"):
    """<folder>/<name>.py's main function, loaded without running the script."""
    import runpy
    return runpy.run_path(str(REPO / folder / f"{name}.py"), run_name=f"{name}_script")["main"]


def run_main(name, *args, folder="scripts"):
    """Run <folder>/<name>.py's main(argv) in this process through cli.run_cli, as `python <name>.py args`
    runs it but without a new interpreter and MindSpore start-up: a CompletedProcess with the exit status
    and what it printed (its log records included). For what only a fresh process shows (imports, the
    environment, signals) use run_script."""
    import contextlib
    import io
    import subprocess
    main = script_main(name, folder)
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = list(map(str, args))
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            cli.run_cli(main, argv)
            status = 0
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return subprocess.CompletedProcess([name, *argv], status, stdout.getvalue(), stderr.getvalue())


def run_script(name, *args, cwd=None, timeout=600, env=None, folder="scripts"):
    """Run <folder>/<name>.py in a fresh interpreter; returns the CompletedProcess (text)."""
    import subprocess
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, str(REPO / folder / f"{name}.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the tests marked slow (minutes each)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes minutes; skipped unless --runslow is given")
    if getattr(config.option, "dist", "no") == "loadgroup" and pytest.version_tuple >= (9, 2):
        # pytest 9.2 keeps node ids where pytest-xdist (3.8) cannot mark their group: every group would be
        # split over the workers, its module fixtures made on each and the launched jobs run side by side.
        raise pytest.UsageError(f"pytest {pytest.__version__} breaks pytest-xdist's --dist loadgroup: "
                                "pip install 'pytest<9.2' (the dev extra asks for it)")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the groups
def pytest_collection_modifyitems(config, items):
    share_module_fixtures(items)
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def share_module_fixtures(items):
    """For pytest-xdist's --dist loadgroup: the tests of a module that share a module-scoped fixture (a training
    run, an export, a server) run on one worker, which makes the fixture once; other tests go wherever a worker
    is free. The largest units first, so that none is left to run alone at the end: the launched jobs, then
    the modules' groups, then single tests (a stable sort: collection order within each)."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        if item.get_closest_marker("xdist_group") is None and fixtures is not None and any(
                definitions[-1].scope == "module" for definitions in fixtures.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))

    def unit(item):
        group = item.get_closest_marker("xdist_group")
        return 2 if group is None else 0 if group.args == ONE_JOB_AT_A_TIME.args else 1
    items.sort(key=unit)

