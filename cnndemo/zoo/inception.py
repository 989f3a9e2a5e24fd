"""Inception: GoogLeNet, BN-Inception (built here from its channel table) and Inception-v3;
each block's branches declared from the real module layout."""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from ..archs.bn_inception import BLOCKS as BN_BLOCKS
from ..archs.bn_inception import bn_inception
from ..specs import BlockSpec, BranchSpec, ModelSpec
from .common import PAPERS, imagenet

_G = tvm.GoogLeNet_Weights.IMAGENET1K_V1
_V3 = tvm.Inception_V3_Weights.IMAGENET1K_V1


# Keyword-only, eval mode, logits out. transform_input=True is what torchvision sets for the
# ported GoogLeNet / Inception-v3 weights: the first layer maps ImageNet-normalised input to
# the [-1, 1] range those weights expect.


def _googlenet() -> nn.Module:
    return tvm.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=True)


def _inception_v3() -> nn.Module:
    return tvm.inception_v3(weights=None, aux_logits=False, transform_input=True, init_weights=True)


_GOOGLENET_BLOCKS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
_NOTE_3X3B = (
    "torchvision's branch3 is the paper's 5x5 path, but torchvision builds it with a 3x3 "
    "kernel (a known upstream bug kept so the ported weights still load; pytorch/vision#906). "
    "It is labelled by the kernel it really has."
)


def _googlenet_blocks() -> tuple[BlockSpec, ...]:
    out = []
    for b in _GOOGLENET_BLOCKS:
        p = f"inception{b}"
        out.append(
            BlockSpec(
                name=p,
                path=p,
                kind="Inception (4 branches)",
                branches=(
                    BranchSpec("1x1", (f"{p}.branch1",)),
                    BranchSpec("3x3", (f"{p}.branch2",)),
                    BranchSpec("3x3b", (f"{p}.branch3",), note=_NOTE_3X3B),
                    BranchSpec("pool_proj", (f"{p}.branch4",)),
                ),
            )
        )
    return tuple(out)


def _bn_inception_blocks() -> tuple[BlockSpec, ...]:
    out = []
    for p, cfg in BN_BLOCKS.items():
        if cfg.is_reduction:
            kind = "reduction (3 branches, stride 2)"
            branches = (
                BranchSpec("3x3", (f"{p}.branch1",)),
                BranchSpec("double_3x3", (f"{p}.branch2",)),
                BranchSpec("pool", (f"{p}.branch3",), note="max-pool passed through, no projection"),
            )
        else:
            kind = "Inception (4 branches)"
            branches = (
                BranchSpec("1x1", (f"{p}.branch1",)),
                BranchSpec("3x3", (f"{p}.branch2",)),
                BranchSpec("double_3x3", (f"{p}.branch3",), note="two 3x3 convs in place of a 5x5"),
                BranchSpec("pool_proj", (f"{p}.branch4",)),
            )
        out.append(BlockSpec(p, p, kind, branches))
    return tuple(out)


def _avg_pool() -> nn.Module:
    # torchvision calls F.avg_pool2d(x, kernel_size=3, stride=1, padding=1) in these blocks.
    return nn.AvgPool2d(3, stride=1, padding=1)


def _max_pool_s2() -> nn.Module:
    # torchvision calls F.max_pool2d(x, kernel_size=3, stride=2) in Mixed_6a and Mixed_7a.
    return nn.MaxPool2d(3, stride=2)


def _seq(p: str, name: str, n: int) -> tuple[str, ...]:
    return tuple(f"{p}.{name}_{i}" for i in range(1, n + 1))


def _inception_v3_blocks() -> tuple[BlockSpec, ...]:
    out = []
    for b in ("5b", "5c", "5d"):
        p = f"Mixed_{b}"
        out.append(
            BlockSpec(
                p,
                p,
                "Inception-A (4 branches)",
                (
                    BranchSpec("1x1", (f"{p}.branch1x1",)),
                    BranchSpec("5x5", _seq(p, "branch5x5", 2)),
                    BranchSpec("double_3x3", _seq(p, "branch3x3dbl", 3)),
                    BranchSpec("pool_proj", (f"{p}.branch_pool",), pre=_avg_pool()),
                ),
            )
        )
    p = "Mixed_6a"
    out.append(
        BlockSpec(
            p,
            p,
            "Inception-B reduction (3 branches, stride 2)",
            (
                BranchSpec("3x3", (f"{p}.branch3x3",)),
                BranchSpec("double_3x3", _seq(p, "branch3x3dbl", 3)),
                BranchSpec("pool", (), taps=(), pre=_max_pool_s2(), note="functional max-pool"),
            ),
        )
    )
    for b in ("6b", "6c", "6d", "6e"):
        p = f"Mixed_{b}"
        out.append(
            BlockSpec(
                p,
                p,
                "Inception-C (4 branches, factorised 7x7)",
                (
                    BranchSpec("1x1", (f"{p}.branch1x1",)),
                    BranchSpec("7x7", _seq(p, "branch7x7", 3), note="7x7 factorised as 1x7 then 7x1"),
                    BranchSpec("double_7x7", _seq(p, "branch7x7dbl", 5)),
                    BranchSpec("pool_proj", (f"{p}.branch_pool",), pre=_avg_pool()),
                ),
            )
        )
    p = "Mixed_7a"
    out.append(
        BlockSpec(
            p,
            p,
            "Inception-D reduction (3 branches, stride 2)",
            (
                BranchSpec("3x3", _seq(p, "branch3x3", 2)),
                BranchSpec("7x7x3", _seq(p, "branch7x7x3", 4)),
                BranchSpec("pool", (), taps=(), pre=_max_pool_s2(), note="functional max-pool"),
            ),
        )
    )
    for b in ("7b", "7c"):
        p = f"Mixed_{b}"
        split = "its output is two sub-outputs concatenated: a 1x3 conv and a 3x1 conv in parallel"
        out.append(
            BlockSpec(
                p,
                p,
                "Inception-E (4 branches, split 3x3)",
                (
                    BranchSpec("1x1", (f"{p}.branch1x1",)),
                    BranchSpec(
                        "3x3",
                        (f"{p}.branch3x3_1", f"{p}.branch3x3_2a", f"{p}.branch3x3_2b"),
                        taps=(f"{p}.branch3x3_2a", f"{p}.branch3x3_2b"),
                        note=split,
                    ),
                    BranchSpec(
                        "double_3x3",
                        (
                            f"{p}.branch3x3dbl_1",
                            f"{p}.branch3x3dbl_2",
                            f"{p}.branch3x3dbl_3a",
                            f"{p}.branch3x3dbl_3b",
                        ),
                        taps=(f"{p}.branch3x3dbl_3a", f"{p}.branch3x3dbl_3b"),
                        note=split,
                    ),
                    BranchSpec("pool_proj", (f"{p}.branch_pool",), pre=_avg_pool()),
                ),
            )
        )
    return tuple(out)


SPECS: tuple[ModelSpec, ...] = (
    imagenet(
        _G,
        key="googlenet",
        name="GoogLeNet (Inception v1)",
        description="The 2014 ImageNet winner: nine Inception blocks of parallel 1x1, 3x3 and pooling paths.",
        family="Inception",
        builder=_googlenet,
        paper=PAPERS["googlenet"],
        blocks=_googlenet_blocks(),
        gradcam_layer="inception5b",
        default_block="inception4c",
        drop_keys=("aux1.", "aux2."),
        top_layers=("fc", "inception5b"),
        notes=(
            "Built without the two auxiliary classifiers (training-only heads).",
            _NOTE_3X3B,
        ),
    ),
    imagenet(
        _G, published=False, min_side=32,  # its own stem: GoogLeNet's min_size does not describe it
        key="bn_inception",
        name="BN-Inception (Inception v2)",
        description="GoogLeNet with BatchNorm after every conv and 5x5 paths replaced by two 3x3 convs.",
        family="Inception",
        builder=bn_inception,
        paper=PAPERS["bn"],
        blocks=_bn_inception_blocks(),
        gradcam_layer="inception5b",
        default_block="inception4c",
        top_layers=("fc", "inception5b"),
        notes=(
            "No public torchvision weights exist: architecture only until you load a checkpoint.",
            "Written from a reference text's channel table (GoogLeNetV2), which differs from the paper's "
            "figure in a few widths (inception4c's double 3x3: 128 where the paper has 160; inception4d's: "
            "160 for 192; inception5b's double-3x3 reduce: 160 for 192) and uses max pooling in every "
            "block. Its conv layers keep their bias, as that text writes them (BatchNorm makes it "
            "redundant): 10,876,968 parameters, the count of that table, not a figure the paper prints.",
            "Uses the ImageNet preprocessing of torchvision's GoogLeNet weights.",
        ),
    ),
    imagenet(
        _V3,
        key="inception_v3",
        name="Inception-v3",
        description="Factorised convolutions (1x7 + 7x1, split 3x3) and grid reductions, read at 299x299.",
        family="Inception",
        builder=_inception_v3,
        paper=PAPERS["v3"],
        blocks=_inception_v3_blocks(),
        gradcam_layer="Mixed_7c",
        default_block="Mixed_6c",
        drop_keys=("AuxLogits.",),
        top_layers=("fc", "Mixed_7c"),
        notes=(
            "Built without AuxLogits, the training-only auxiliary head; torchvision's "
            "num_params counts it, the parameter figures here do not.",
        ),
    ),
)
