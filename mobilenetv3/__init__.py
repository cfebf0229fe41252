"""MobileNetV3-Small/Large for MindSpore: model, data, training, evaluation, inference and export."""
from .distributed import apply_log_defaults, release_core_binding
from .runtime import apply_cpu_defaults

apply_cpu_defaults()  # must run before the first MindSpore op
apply_log_defaults()  # must run before MindSpore is imported
release_core_binding()  # best before MindSpore sizes its thread pools

__version__ = "0.1.0"
_MODEL_API = ("MobileNetV3", "count_complexity", "create_model", "list_models")
__all__ = list(_MODEL_API)


def __getattr__(name):
    # Imported on first use, so tools that need no MindSpore (data preparation) start at once.
    if name in _MODEL_API:
        from . import factory, model
        return getattr(factory if name == "create_model" else model, name)
    raise AttributeError(f"module 'mobilenetv3' has no attribute {name!r}")
