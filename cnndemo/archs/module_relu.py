"""A copy of a network in which every non-linearity is its own ``nn.Module``, used once.

Captum's Guided Backprop, Deconvolution and Guided Grad-CAM override the gradient of
``nn.ReLU`` modules only, and DeepLift's rules attach to modules as well. torchvision calls
``F.relu`` inside GoogLeNet's and Inception-v3's ``BasicConv2d`` (so those methods silently
become plain gradients), reuses one ``self.relu`` three times in ResNet's ``Bottleneck`` (so
DeepLift's multipliers are wrong), and calls ``F.max_pool2d`` in Inception-v3's reduction
blocks. ``with_module_relus`` rewrites exactly those places in a copy; the forward function
stays the same (same ops, same order), so the logits are bit-identical.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

_tv_googlenet = importlib.import_module("torchvision.models.googlenet")
_tv_inception = importlib.import_module("torchvision.models.inception")
_tv_resnet = importlib.import_module("torchvision.models.resnet")


class ConvBNModuleReLU(nn.Module):
    """torchvision's BasicConv2d (conv -> bn -> F.relu) with the ReLU as a module."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class BottleneckUniqueReLU(nn.Module):
    """torchvision's Bottleneck with three ReLU modules instead of one reused three times."""

    def __init__(self, b: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = b.conv1, b.bn1, nn.ReLU()
        self.conv2, self.bn2, self.relu2 = b.conv2, b.bn2, nn.ReLU()
        self.conv3, self.bn3 = b.conv3, b.bn3
        self.downsample = b.downsample
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class InceptionBModulePool(_tv_inception.InceptionB):
    """Inception-v3's B block (Mixed_6a) with its pool branch as an nn.MaxPool2d module."""

    def _forward(self, x):
        branch3x3 = self.branch3x3(x)
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [branch3x3, dbl, self.pool(x)]


class InceptionDModulePool(_tv_inception.InceptionD):
    """Inception-v3's D block (Mixed_7a) with its pool branch as an nn.MaxPool2d module."""

    def _forward(self, x):
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for conv in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return [branch3x3, b7, self.pool(x)]


def _swap_class(m: nn.Module, cls: type) -> nn.Module:
    m.__class__ = cls
    m.pool = nn.MaxPool2d(3, stride=2)
    return m


def _replacement(m: nn.Module) -> nn.Module | None:
    if isinstance(m, (_tv_googlenet.BasicConv2d, _tv_inception.BasicConv2d)):
        return ConvBNModuleReLU(m.conv, m.bn)
    if isinstance(m, _tv_resnet.Bottleneck):
        return BottleneckUniqueReLU(m)
    if type(m) is _tv_inception.InceptionB:
        return _swap_class(m, InceptionBModulePool)
    if type(m) is _tv_inception.InceptionD:
        return _swap_class(m, InceptionDModulePool)
    return None


def with_module_relus(model: nn.Module) -> nn.Module:
    """Rewrite ``model`` (a copy you own) in place; return it."""
    for name, child in list(model.named_children()):
        new = _replacement(child)
        if new is not None and new is not child:
            setattr(model, name, new)
            child = new
        with_module_relus(child)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False  # in-place ReLUs break Captum's backward hooks
    return model
