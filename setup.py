from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="mobilenetv3-mindspore",
    version="0.1.0",
    description="MobileNetV3-Small/Large for MindSpore: train with mpirun, evaluate, infer, export",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",  # mindspore 2.10.0 publishes wheels for CPython 3.10-3.12 only
    packages=find_packages(include=["mobilenetv3", "mobilenetv3.*"]),
    package_data={"mobilenetv3": ["data/imagenet1k_classes.tsv", "native/csrc/*.cc", "serving/page.html"]},  # the .cc files are built on first use
    install_requires=Path("requirements.txt").read_text().split(),
    extras_require={
        # torch 2.13.0 is the CPU build; a bare "torch" would pull a multi-GB CUDA build.
        "convert": ["torch==2.13.0"],
        "onnx": ["onnx", "onnxruntime"],
        # --backend openvino on an exported .onnx; a checkpoint is exported to ONNX first, which needs .[onnx]
        "openvino": ["openvino"],
        "plot": ["matplotlib"],
        "tensorboard": ["tensorboardX"],  # train.py --tensorboard DIR
        "serve": ["starlette", "uvicorn", "python-multipart"],
        # httpx2: Starlette's test client; pytest-xdist: the suite on every core (scripts/test.sh), whose
        # --dist loadgroup pytest 9.2 breaks (tests/conftest.py)
        "dev": ["pytest<9.2", "pytest-xdist", "torch==2.13.0", "onnx", "onnxruntime", "openvino", "matplotlib", "tensorboardX", "starlette",
                "uvicorn", "python-multipart", "httpx2"],
    },
)
