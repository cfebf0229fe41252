"""MobileNetV3-Small/Large for MindSpore: model, data, training, evaluation, inference and export.

    import mobilenetv3
    net = mobilenetv3.create_model("mobilenet_v3_small", num_classes=10)
    classify = mobilenetv3.Classifier("small.ckpt")   # a trained or exported model file
    classify(Image.open("cat.jpg"))                   # [("tabby", 0.62), ("tiger cat", 0.21), ...]

Importing the package changes nothing in the process (no environment variable, affinity or log level) and
starts no MindSpore; the scripts' defaults are cli.apply_process_defaults(). docs/architecture.md maps the
folders.
"""
import importlib
import sys
import types
import warnings

__version__ = "0.1.0"
_API = {"MobileNetV3": "models.mobilenetv3", "count_complexity": "models.mobilenetv3",
        "create_model": "models.factory", "list_models": "models.architectures", "Classifier": "deploy.inference"}
__all__ = list(_API)

# Modules that moved when the package was grouped into folders, for user code that imports them by their old
# path: each resolves, on first use, to where its names live now.
_MOVED = {"model": ("models.mobilenetv3", "models.architectures"), "factory": ("models.factory",)}


def __getattr__(name):
    # Imported on first use, so tools that need no MindSpore (data preparation) start at once.
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _MovedModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):  # what the import system asks of any module
            raise AttributeError(name)
        targets = [f"{__name__}.{target}" for target in _MOVED[self.__name__.rpartition(".")[2]]]
        warnings.warn(f"{self.__name__} is now {' and '.join(targets)}", DeprecationWarning, stacklevel=2)
        for target in targets:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"{self.__name__} (now {' and '.join(targets)}) has no attribute {name!r}")


for _old in _MOVED:
    sys.modules.setdefault(f"{__name__}.{_old}", _MovedModule(f"{__name__}.{_old}"))
