"""MobileNetV3-Small/Large for MindSpore: model, data, training, evaluation, inference and export."""
from .runtime import apply_cpu_defaults

apply_cpu_defaults()  # must run before the first MindSpore op

from .model import MobileNetV3, count_complexity, create_model, list_models  # noqa: E402

__all__ = ["MobileNetV3", "count_complexity", "create_model", "list_models"]
__version__ = "0.1.0"
