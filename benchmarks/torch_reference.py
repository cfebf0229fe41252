"""A PyTorch MobileNetV3 with torchvision's exact layout, to check weight conversion without torchvision.

Parameter names and shapes are torchvision's (features.<i>.block.<j>..., classifier.0 / classifier.3),
built from the same block tables as mobilenetv3.models.architectures, so a state_dict of this model stands
in for torchvision's weights, and `to_timm_state_dict` renames it into timm's naming. torch is an optional
extra (pip install .[convert]); only this module and the .pth reader import it.
"""
import torch
from torch import nn

from mobilenetv3.deploy.convert import torchvision_to_timm
from mobilenetv3.models.architectures import ARCHITECTURES, STEM_CHANNELS, BlockConfig, make_divisible

ACTIVATIONS = {"RE": nn.ReLU, "HS": nn.Hardswish}
TORCH_BN_MOMENTUM = 0.01  # torchvision's value; MindSpore's equivalent is 0.99


class ConvBNAct(nn.Sequential):
    """Conv (no bias), BatchNorm, optional activation, as children 0, 1, 2."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, groups=1, activation=None, bn_eps=1e-3):
        layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=TORCH_BN_MOMENTUM)]
        if activation is not None:
            layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels):
        super().__init__()
        squeezed = make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        scale = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(scale))))


class InvertedResidual(nn.Module):
    def __init__(self, in_ch, row: BlockConfig, width: float, bn_eps: float):
        super().__init__()
        expanded, out = make_divisible(row.expanded * width), make_divisible(row.out * width)
        layers = []
        if expanded != in_ch:
            layers.append(ConvBNAct(in_ch, expanded, 1, activation=row.activation, bn_eps=bn_eps))
        layers.append(ConvBNAct(expanded, expanded, row.kernel, row.stride, expanded, row.activation, bn_eps))
        if row.use_se:
            layers.append(SqueezeExcitation(expanded))
        layers.append(ConvBNAct(expanded, out, 1, bn_eps=bn_eps))
        self.block = nn.Sequential(*layers)
        self.use_residual = row.stride == 1 and in_ch == out
        self.out_channels = out

    def forward(self, x):
        return self.block(x) + x if self.use_residual else self.block(x)


class TorchMobileNetV3(nn.Module):
    def __init__(self, model_name: str, num_classes=1000, width=1.0, bn_eps=1e-3, dropout_rate=0.2):
        super().__init__()
        arch = ARCHITECTURES[model_name]
        channels = make_divisible(STEM_CHANNELS * width)
        layers = [ConvBNAct(3, channels, 3, 2, activation="HS", bn_eps=bn_eps)]
        for row in arch.blocks:
            layers.append(InvertedResidual(channels, row, width, bn_eps))
            channels = layers[-1].out_channels
        layers.append(ConvBNAct(channels, 6 * channels, 1, activation="HS", bn_eps=bn_eps))
        self.features = nn.Sequential(*layers)
        hidden = make_divisible(arch.head_channels * width)
        self.classifier = nn.Sequential(nn.Linear(6 * channels, hidden), nn.Hardswish(), nn.Dropout(dropout_rate),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def randomize_(model: nn.Module, seed: int = 0, image_size: int = 64) -> nn.Module:
    """Give every weight and BatchNorm statistic distinct random values, so any mix-up changes the output.

    Convs before a BatchNorm get 0.3 of the He-normal scale, so their outputs have small variances and
    BatchNorm eps 1e-3 vs 1e-5 shifts the logits clearly; the others get He scale and random biases.
    Running statistics are measured on one random batch of `image_size` images (keeping activations
    near unit scale through all layers), then perturbed so they differ from any batch's; variances
    stay >= 0.01 so that float32 rounding does not blow up through near-constant channels.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std=1.0):
        return torch.randn(shape, generator=generator) * std

    def uniform(shape, low, high):
        return torch.rand(shape, generator=generator) * (high - low) + low

    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                he_std = (2.0 / module.weight[0].numel()) ** 0.5
                module.weight.copy_(normal(module.weight.shape, he_std * (0.3 if module.bias is None else 1.0)))
                if module.bias is not None:
                    module.bias.copy_(normal(module.bias.shape, 0.1))
        for bn in batch_norms:
            bn.weight.copy_(uniform(bn.weight.shape, 0.5, 1.5))
            bn.bias.copy_(normal(bn.bias.shape, 0.1))
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: after one batch the running stats are its stats
        was_training = model.training
        model.train()
        model(normal((4, 3, image_size, image_size)))
        model.train(was_training)
        for bn in batch_norms:
            bn.momentum = TORCH_BN_MOMENTUM
            bn.running_mean.add_(normal(bn.running_mean.shape, 0.1) * bn.running_var.sqrt())
            bn.running_var.mul_(uniform(bn.running_var.shape, 0.8, 1.25)).clamp_(min=0.01)
            bn.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=generator)))
    return model


def to_timm_state_dict(state_dict: dict, model_name: str) -> dict:
    """Rename a torchvision-layout state_dict into timm's naming (timm stores conv_head as a 1x1 conv)."""
    names = torchvision_to_timm(state_dict, model_name)
    missing = sorted(set(state_dict) - set(names))
    if missing:
        raise ValueError(f"no timm name for {', '.join(missing)}")
    renamed = {names[key]: value for key, value in state_dict.items()}
    renamed["conv_head.weight"] = renamed["conv_head.weight"][:, :, None, None]
    return renamed
