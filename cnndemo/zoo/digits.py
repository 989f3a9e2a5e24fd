"""Digits: the three MNIST networks trained here (weights in assets/weights)."""

from __future__ import annotations

from torch import nn

from ..archs.mnist import D2L_TABLE, d2l_googlenet, mnist_inception, mnist_resnet
from ..specs import BlockSpec, BranchSpec, ModelSpec
from .common import PAPERS, digit_net

def _mnist_inception_blocks() -> tuple[BlockSpec, ...]:
    return tuple(
        BlockSpec(
            p,
            p,
            "Inception (4 branches)",
            (
                BranchSpec("pool_proj", (f"{p}.branch_pool",), note="3x3 avg-pool at stride 1"),
                BranchSpec("1x1", (f"{p}.branch1x1",)),
                BranchSpec("5x5", (f"{p}.branch5x5",)),
                BranchSpec("double_3x3", (f"{p}.branch3x3",)),
            ),
        )
        for p in ("incept1", "incept2")
    )


def _mnist_resnet_blocks() -> tuple[BlockSpec, ...]:
    return tuple(
        BlockSpec(
            p,
            p,
            "residual block",
            (
                BranchSpec("residual", (f"{p}.conv1", f"{p}.relu1", f"{p}.conv2")),
                BranchSpec("shortcut", (), taps=(), pre=nn.Identity(), note="identity"),
            ),
            "add_relu",
        )
        for p in ("rblock1", "rblock2")
    )


def _d2l_blocks() -> tuple[BlockSpec, ...]:
    names = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
    return tuple(
        BlockSpec(
            f"inception{n}",
            path,
            "Inception (4 branches)",
            (
                BranchSpec("1x1", (f"{path}.p1",)),
                BranchSpec("3x3", (f"{path}.p2",)),
                BranchSpec("5x5", (f"{path}.p3",)),
                BranchSpec("pool_proj", (f"{path}.p4",)),
            ),
        )
        for n, path in zip(names, D2L_TABLE)
    )


SPECS: tuple[ModelSpec, ...] = (
    digit_net(
        "mnist_inception", 28,
        name="MNIST Inception net",
        description="Two convs, each followed by a four-branch Inception module; trained here on MNIST.",
        builder=mnist_inception,
        paper=PAPERS["mnist"],
        blocks=_mnist_inception_blocks(),
        gradcam_layer="incept2",
        default_block="incept1",
        notes=("Pool branch at stride 1 (the text's stride 3 cannot be concatenated).",),
    ),
    digit_net(
        "mnist_resnet", 28,
        name="MNIST residual net",
        description="Two convs, each followed by a residual block relu(x + F(x)); trained here on MNIST.",
        builder=mnist_resnet,
        paper=PAPERS["mnist"],
        blocks=_mnist_resnet_blocks(),
        gradcam_layer="rblock2",
        default_block="rblock1",
    ),
    digit_net(
        "d2l_googlenet", 96,
        name="d2l GoogLeNet (digits)",
        description="The d2l GoogLeNet: five stages, nine Inception blocks, 1 channel at 96x96; trained here.",
        builder=d2l_googlenet,
        paper=PAPERS["d2l"],
        blocks=_d2l_blocks(),
        gradcam_layer="b5.1",
        default_block="inception4c",
    ),
)
