"""Residual: ResNet-50, its bottleneck blocks as a residual and a shortcut branch."""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from ..specs import BlockSpec, BranchSpec, ModelSpec
from .common import PAPERS, imagenet

_R50 = tvm.ResNet50_Weights.IMAGENET1K_V2


def _resnet50() -> nn.Module:
    return tvm.resnet50(weights=None)


def _bottleneck_blocks(layers: tuple[int, ...]) -> tuple[BlockSpec, ...]:
    out = []
    for li, n in enumerate(layers, start=1):
        for i in range(n):
            p = f"layer{li}.{i}"
            residual = BranchSpec(
                "residual",
                tuple(f"{p}.{m}" for m in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")),
                note="what the block adds to its input, before the final ReLU",
            )
            if i == 0:
                shortcut = BranchSpec("shortcut", (f"{p}.downsample",), note="projection shortcut")
            else:
                shortcut = BranchSpec("shortcut", (), taps=(), pre=nn.Identity(), note="identity")
            out.append(
                BlockSpec(p, p, "Bottleneck (residual + shortcut)", (residual, shortcut), "add_relu")
            )
    return tuple(out)


SPECS: tuple[ModelSpec, ...] = (
    imagenet(
        _R50,
        key="resnet50",
        name="ResNet-50",
        description="16 bottleneck blocks, each adding a learned residual to an identity or projection shortcut.",
        family="Residual",
        builder=_resnet50,
        paper=PAPERS["resnet"],
        blocks=_bottleneck_blocks((3, 4, 6, 3)),
        gradcam_layer="layer4",
        default_block="layer3.0",
        top_layers=("fc", "layer4.2"),
    ),
)
