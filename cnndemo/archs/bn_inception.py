"""BN-Inception (Inception v2), Ioffe & Szegedy 2015, written from a reference text's channel
table (GoogLeNetV2). That table differs from the paper's figure in a few widths (inception4c
and 4d's double 3x3, inception5b's double-3x3 reduce) and uses max pooling in every block.

Every convolution is conv + BatchNorm + ReLU. The conv layers keep their bias, as the
reference text writes them: BatchNorm makes the bias redundant, but keeping it gives that
table's parameter count (10,876,968; neither the paper nor the text prints a total) and lets
checkpoints trained from that text load unchanged (the module names follow the same layout:
``conv1.conv``, ``inception3a.branch2.1.bn``).

Each ReLU is its own ``nn.ReLU`` module, used once, so Captum's guided methods and DeepLift
see every non-linearity.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class BlockConfig(NamedTuple):
    """(in, 1x1, 3x3 reduce, 3x3, double-3x3 reduce, double-3x3, pool proj); 0 = no such branch."""

    cin: int
    c1x1: int
    c3x3_reduce: int
    c3x3: int
    cdbl_reduce: int
    cdbl: int
    pool_proj: int

    @property
    def is_reduction(self) -> bool:
        return self.c1x1 == 0 and self.pool_proj == 0

    @property
    def cout(self) -> int:
        pool = self.cin if self.is_reduction else self.pool_proj
        return self.c1x1 + self.c3x3 + self.cdbl + pool


# The table of the BN-Inception paper as corrected by the reference text (3c and 4e are the
# stride-2 reduction blocks whose pool branch is passed through).
BLOCKS: dict[str, BlockConfig] = {
    "inception3a": BlockConfig(192, 64, 64, 64, 64, 96, 32),
    "inception3b": BlockConfig(256, 64, 64, 96, 64, 96, 64),
    "inception3c": BlockConfig(320, 0, 128, 160, 64, 96, 0),
    "inception4a": BlockConfig(576, 224, 64, 96, 96, 128, 128),
    "inception4b": BlockConfig(576, 192, 96, 128, 96, 128, 128),
    "inception4c": BlockConfig(576, 160, 128, 160, 128, 128, 128),
    "inception4d": BlockConfig(576, 96, 128, 192, 160, 160, 128),
    "inception4e": BlockConfig(576, 0, 128, 192, 192, 256, 0),
    "inception5a": BlockConfig(1024, 352, 192, 320, 160, 224, 128),
    "inception5b": BlockConfig(1024, 352, 192, 320, 160, 224, 128),
}


class InceptionBlock(nn.Module):
    """Four branches: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | 3x3 max-pool -> 1x1."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.branch1 = ConvBNReLU(cfg.cin, cfg.c1x1, 1)
        self.branch2 = nn.Sequential(
            ConvBNReLU(cfg.cin, cfg.c3x3_reduce, 1),
            ConvBNReLU(cfg.c3x3_reduce, cfg.c3x3, 3, padding=1),
        )
        self.branch3 = nn.Sequential(
            ConvBNReLU(cfg.cin, cfg.cdbl_reduce, 1),
            ConvBNReLU(cfg.cdbl_reduce, cfg.cdbl, 3, padding=1),
            ConvBNReLU(cfg.cdbl, cfg.cdbl, 3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1),
            ConvBNReLU(cfg.cin, cfg.pool_proj, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class ReductionBlock(nn.Module):
    """Three stride-2 branches: 1x1 -> 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | 3x3/2 max-pool (passed through)."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.branch1 = nn.Sequential(
            ConvBNReLU(cfg.cin, cfg.c3x3_reduce, 1),
            ConvBNReLU(cfg.c3x3_reduce, cfg.c3x3, 3, stride=2, padding=1),
        )
        self.branch2 = nn.Sequential(
            ConvBNReLU(cfg.cin, cfg.cdbl_reduce, 1),
            ConvBNReLU(cfg.cdbl_reduce, cfg.cdbl, 3, padding=1),
            ConvBNReLU(cfg.cdbl, cfg.cdbl, 3, stride=2, padding=1),
        )
        self.branch3 = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class BNInception(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.4):
        super().__init__()
        self.conv1 = ConvBNReLU(3, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = ConvBNReLU(64, 64, 1)
        self.conv3 = ConvBNReLU(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name, cfg in BLOCKS.items():
            block = ReductionBlock(cfg) if cfg.is_reduction else InceptionBlock(cfg)
            self.add_module(name, block)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x 3 x 224 x 224
        x = self.maxpool1(self.conv1(x))
        # N x 64 x 56 x 56
        x = self.maxpool2(self.conv3(self.conv2(x)))
        # N x 192 x 28 x 28
        x = self.inception3a(x)
        # N x 256 x 28 x 28
        x = self.inception3b(x)
        # N x 320 x 28 x 28
        x = self.inception3c(x)
        # N x 576 x 14 x 14
        x = self.inception4a(x)
        x = self.inception4b(x)
        x = self.inception4c(x)
        x = self.inception4d(x)
        # N x 576 x 14 x 14
        x = self.inception4e(x)
        # N x 1024 x 7 x 7
        x = self.inception5a(x)
        x = self.inception5b(x)
        # N x 1024 x 7 x 7
        x = torch.flatten(self.avgpool(x), 1)
        # N x 1024
        return self.fc(self.dropout(x))


def bn_inception(*, num_classes: int = 1000) -> BNInception:
    """BN-Inception with random init, in eval mode."""
    return BNInception(num_classes=num_classes).eval()
