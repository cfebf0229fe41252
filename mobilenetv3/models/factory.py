"""Models by name, optionally with a checkpoint's weights: the one place that builds "the model this
checkpoint is for". The network (mobilenetv3.py) knows no files and checkpoint I/O (checkpoints/) loads
into a network it is given; this module sits on both.
"""
from typing import Optional

from ..checkpoints.files import load, load_weights
from ..checkpoints.meta import NETWORK_KEYS, check_model_matches
from ..errors import UserError
from .architectures import ARCHITECTURES, MODEL_DEFAULTS, list_models
from .mobilenetv3 import MobileNetV3

BUILD_KEYS = (*NETWORK_KEYS, "bn_momentum", "bn_eps")  # what building a checkpoint's model takes from its meta


def create_model(name: str, num_classes: Optional[int] = None, width: Optional[float] = None,
                 dropout_rate: float = MODEL_DEFAULTS["dropout_rate"], bn_momentum: Optional[float] = None,
                 bn_eps: Optional[float] = None, pretrained: Optional[str] = None,
                 drop_path_rate: float = 0.0) -> MobileNetV3:
    """Build a registered model by name; with `pretrained` (a checkpoint path), the model that checkpoint
    was saved for, its weights loaded with name and shape checks.

    Arguments left as None come from the checkpoint's meta (BatchNorm eps and momentum included: timm's
    weights need eps 1e-5), else from MODEL_DEFAULTS. A width, eps or momentum that contradicts the meta is
    an error. A num_classes other than the checkpoint's loads everything but the last Linear layer, which
    stays freshly initialised (fine-tuning), and says so (logged).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    loaded = load(pretrained) if pretrained else ({}, {})
    meta = loaded[1]
    check_model_matches(meta, pretrained, name)
    given = {"num_classes": num_classes, "width": width, "bn_momentum": bn_momentum, "bn_eps": bn_eps}
    settings = {}
    for key, value in given.items():
        saved = meta.get(key)
        if key != "num_classes" and None not in (value, saved) and value != saved:
            raise UserError(f"create_model({name!r}, {key}={value!r}): checkpoint {pretrained} was saved with "
                            f"{key} {saved!r}; leave {key} out to build the model it is for")
        settings[key] = next(v for v in (value, saved, MODEL_DEFAULTS[key]) if v is not None)
    net = MobileNetV3(ARCHITECTURES[name], dropout_rate=dropout_rate, drop_path_rate=drop_path_rate, **settings)
    if pretrained:
        load_weights(net, pretrained, new_classifier_ok=True, loaded=loaded)
    return net


def model_from_checkpoint(path, use_ema: bool = False, expected: Optional[dict] = None,
                          fallback: Optional[dict] = None):
    """The eval-mode model the checkpoint `path` was saved for, and its meta: what eval, infer and export run.

    The model, num_classes, width and BatchNorm's eps and momentum come from the meta, else from `fallback`
    (a checkpoint from elsewhere records none), else from MODEL_DEFAULTS. `expected` holds the ones the user
    insists on (flags), which must agree with the meta (one clear error otherwise). With `use_ema` the
    weights are the EMA ones, and the meta says so ("weights": "ema").
    """
    if not path:
        raise UserError("no checkpoint given: pass --pretrained CKPT")
    loaded = load(path)
    meta = loaded[1]
    check_model_matches(meta, path, **(expected or {}))
    settings = {key: meta.get(key, (fallback or {}).get(key, MODEL_DEFAULTS.get(key))) for key in BUILD_KEYS}
    if settings["model"] not in ARCHITECTURES:
        raise UserError(f"{path} is for model {settings['model']!r}, which this version does not know; known "
                        f"models: {', '.join(list_models())}")
    net = MobileNetV3(ARCHITECTURES[settings.pop("model")], **settings)
    load_weights(net, path, new_classifier_ok=False, use_ema=use_ema, loaded=loaded,
                 built_from_meta=all(key in meta for key in NETWORK_KEYS))
    net.set_train(False)
    return net, dict(meta, weights="ema") if use_ema else meta
