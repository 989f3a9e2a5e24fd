"""Plain: VGG-16, one path per stage (shown stage by stage)."""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from ..specs import BlockSpec, BranchSpec, ModelSpec
from .common import PAPERS, imagenet

_VGG = tvm.VGG16_Weights.IMAGENET1K_V1


def _vgg16() -> nn.Module:
    return tvm.vgg16(weights=None)


def _vgg_stages() -> tuple[BlockSpec, ...]:
    # VGG-16 ("D"): pools close the five conv stages at these features indices.
    pools = (4, 9, 16, 23, 30)
    out, start = [], 0
    for n, end in enumerate(pools, start=1):
        mods = tuple(f"features.{i}" for i in range(start, end + 1))
        out.append(
            BlockSpec(
                f"stage{n}",
                f"features.{end}",
                "plain conv stage (no branches)",
                (BranchSpec("output", mods),),
                "single",
            )
        )
        start = end + 1
    return tuple(out)


SPECS: tuple[ModelSpec, ...] = (
    imagenet(
        _VGG,
        key="vgg16",
        name="VGG-16",
        description="Thirteen 3x3 convs in five plain stages: deep, simple, and very large.",
        family="Plain",
        builder=_vgg16,
        paper=PAPERS["vgg"],
        blocks=_vgg_stages(),
        gradcam_layer="features.29",
        default_block="stage4",
        top_layers=("classifier",),
        notes=("VGG-16 has no parallel branches: the branch views show its five conv stages.",),
    ),
)
