"""Compact: SqueezeNet 1.0, its Fire modules as a shared squeeze and two expand branches."""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from ..specs import BlockSpec, BranchSpec, ModelSpec
from .common import PAPERS, imagenet

_SQ = tvm.SqueezeNet1_0_Weights.IMAGENET1K_V1


def _squeezenet1_0() -> nn.Module:
    return tvm.squeezenet1_0(weights=None)


def _fire_blocks() -> tuple[BlockSpec, ...]:
    # SqueezeNet 1.0: features index -> Fire number of the paper.
    fires = {3: 2, 4: 3, 5: 4, 7: 5, 8: 6, 9: 7, 10: 8, 12: 9}
    out = []
    for idx, n in fires.items():
        p = f"features.{idx}"
        out.append(
            BlockSpec(
                f"fire{n}",
                p,
                "Fire (squeeze, then 2 expand branches)",
                (
                    BranchSpec("expand1x1", (f"{p}.expand1x1", f"{p}.expand1x1_activation")),
                    BranchSpec("expand3x3", (f"{p}.expand3x3", f"{p}.expand3x3_activation")),
                ),
                shared=(f"{p}.squeeze", f"{p}.squeeze_activation"),
            )
        )
    return tuple(out)


SPECS: tuple[ModelSpec, ...] = (
    imagenet(
        _SQ,
        key="squeezenet1_0",
        name="SqueezeNet 1.0",
        description="AlexNet-level accuracy from 1.2M parameters: Fire modules squeeze, then expand 1x1 and 3x3.",
        family="Compact",
        builder=_squeezenet1_0,
        paper=PAPERS["squeezenet"],
        blocks=_fire_blocks(),
        gradcam_layer="features.12",
        default_block="fire5",
        top_layers=("classifier", "features.12"),
    ),
)
