"""Models by name, optionally with a checkpoint's weights: the one place that builds "the model this
checkpoint is for". The network (model.py) knows no files and checkpoint I/O (checkpoint.py) loads into
a network it is given; this module sits on both.
"""
from typing import Optional

from .checkpoint import MODEL_KEYS, check_model_flags, check_model_matches, load, load_weights
from .errors import UserError
from .model import ARCHITECTURES, MobileNetV3, list_models

# What a model is built with when neither the caller nor a checkpoint's meta says otherwise.
DEFAULTS = {"num_classes": 1000, "width": 1.0, "bn_momentum": 0.99, "bn_eps": 1e-3}


def create_model(name: str, num_classes: Optional[int] = None, width: Optional[float] = None,
                 dropout_rate: float = 0.2, bn_momentum: Optional[float] = None, bn_eps: Optional[float] = None,
                 pretrained: Optional[str] = None, drop_path_rate: float = 0.0) -> MobileNetV3:
    """Build a registered model by name; with `pretrained` (a checkpoint path), the model that checkpoint
    was saved for, its weights loaded with name and shape checks.

    Arguments left as None come from the checkpoint's meta (BatchNorm eps and momentum included: timm's
    weights need eps 1e-5), else from DEFAULTS. A width, eps or momentum that contradicts the meta is an
    error. A num_classes other than the checkpoint's loads everything but the last Linear layer, which
    stays freshly initialised (fine-tuning), and says so on stdout.
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
        settings[key] = next(v for v in (value, saved, DEFAULTS[key]) if v is not None)
    net = MobileNetV3(ARCHITECTURES[name], dropout_rate=dropout_rate, drop_path_rate=drop_path_rate, **settings)
    if pretrained:
        load_weights(net, pretrained, new_classifier_ok=True, loaded=loaded)
    return net


def model_from_checkpoint(config, path=None):
    """The eval-mode model a checkpoint was saved for, and its meta: what eval, infer and export run.

    The model, num_classes, width and BatchNorm's eps and momentum come from the meta, else from the config;
    --model, --num_classes or --width given as a flag must agree with the meta (one clear error otherwise).
    With config.use_ema the weights are the EMA ones, and the meta says so ("weights": "ema").
    """
    path = path or config.pretrained
    if not path:
        raise UserError("no checkpoint given: pass --pretrained CKPT")
    loaded = load(path)
    meta = loaded[1]
    check_model_flags(meta, path, config)
    model, num_classes, width, bn_momentum, bn_eps = (
        meta.get(key, getattr(config, key)) for key in (*MODEL_KEYS, "bn_momentum", "bn_eps"))
    net = MobileNetV3(ARCHITECTURES[model], num_classes, width, config.dropout_rate, bn_momentum, bn_eps)
    load_weights(net, path, new_classifier_ok=False, use_ema=config.use_ema, loaded=loaded)
    net.set_train(False)
    return net, dict(meta, weights="ema") if config.use_ema else meta
