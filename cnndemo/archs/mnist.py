"""The three small digit networks of the reference texts, on 1-channel inputs with 10 classes.

- ``MnistInception``: two conv stages, each followed by a four-branch Inception module
  (seed ``001``). The text's pool branch uses ``avg_pool2d(kernel 3, stride 3, padding 1)``,
  which shrinks the map and cannot be concatenated with the other branches; here it is
  stride 1 with padding 1, which keeps the size, so the module really outputs 88 channels.
- ``MnistResNet``: the same text's residual network (``relu(x + conv(relu(conv(x))))``).
- ``D2LGoogLeNet``: the d2l GoogLeNet (seeds ``002``/``003``): five stages, nine Inception
  blocks with the d2l channel table, read at 96 x 96 as the text does.

All ReLUs are ``nn.ReLU`` modules used once, so every attribution method sees them.
"""

from __future__ import annotations

import torch
from torch import nn


class MnistInceptionModule(nn.Module):
    """pool -> 1x1 24 | 1x1 16 | 1x1 16 -> 5x5 24 | 1x1 16 -> 3x3 24 -> 3x3 24 (88 channels out)."""

    out_channels = 88

    def __init__(self, cin: int):
        super().__init__()
        # Stride 1 (not the text's 3) so that the pool branch keeps the spatial size.
        self.branch_pool = nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1),
            nn.Conv2d(cin, 24, 1),
        )
        self.branch1x1 = nn.Conv2d(cin, 16, 1)
        self.branch5x5 = nn.Sequential(nn.Conv2d(cin, 16, 1), nn.Conv2d(16, 24, 5, padding=2))
        self.branch3x3 = nn.Sequential(
            nn.Conv2d(cin, 16, 1),
            nn.Conv2d(16, 24, 3, padding=1),
            nn.Conv2d(24, 24, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.branch_pool(x), self.branch1x1(x), self.branch5x5(x), self.branch3x3(x)], 1
        )


class MnistInception(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.relu1 = nn.ReLU()
        self.incept1 = MnistInceptionModule(10)
        self.conv2 = nn.Conv2d(88, 20, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.relu2 = nn.ReLU()
        self.incept2 = MnistInceptionModule(20)
        self.fc = nn.Linear(88 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x 1 x 28 x 28
        x = self.relu1(self.pool1(self.conv1(x)))
        # N x 10 x 12 x 12
        x = self.incept1(x)
        # N x 88 x 12 x 12
        x = self.relu2(self.pool2(self.conv2(x)))
        # N x 20 x 4 x 4
        x = self.incept2(x)
        # N x 88 x 4 x 4
        return self.fc(torch.flatten(x, 1))


class ResidualBlock(nn.Module):
    """relu(x + conv2(relu(conv1(x)))), both convs 3x3 with the same width."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(x + self.conv2(self.relu1(self.conv1(x))))


class MnistResNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.rblock1 = ResidualBlock(16)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.rblock2 = ResidualBlock(32)
        self.fc = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x 1 x 28 x 28
        x = self.rblock1(self.pool1(self.relu1(self.conv1(x))))
        # N x 16 x 12 x 12
        x = self.rblock2(self.pool2(self.relu2(self.conv2(x))))
        # N x 32 x 4 x 4
        return self.fc(torch.flatten(x, 1))


def _conv_relu(cin: int, cout: int, kernel: int, **kw) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, **kw), nn.ReLU())


class D2LInception(nn.Module):
    """d2l's block: c1 | c2[0] -> 3x3 c2[1] | c3[0] -> 5x5 c3[1] | 3x3 max-pool -> 1x1 c4."""

    def __init__(self, cin: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int):
        super().__init__()
        self.p1 = _conv_relu(cin, c1, 1)
        self.p2 = nn.Sequential(_conv_relu(cin, c2[0], 1), _conv_relu(c2[0], c2[1], 3, padding=1))
        self.p3 = nn.Sequential(_conv_relu(cin, c3[0], 1), _conv_relu(c3[0], c3[1], 5, padding=2))
        self.p4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _conv_relu(cin, c4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.p1(x), self.p2(x), self.p3(x), self.p4(x)], 1)


# (in, c1, (c2 reduce, c2), (c3 reduce, c3), c4) per block, as in d2l.
D2L_TABLE: dict[str, tuple] = {
    "b3.0": (192, 64, (96, 128), (16, 32), 32),
    "b3.1": (256, 128, (128, 192), (32, 96), 64),
    "b4.0": (480, 192, (96, 208), (16, 48), 64),
    "b4.1": (512, 160, (112, 224), (24, 64), 64),
    "b4.2": (512, 128, (128, 256), (24, 64), 64),
    "b4.3": (512, 112, (144, 288), (32, 64), 64),
    "b4.4": (528, 256, (160, 320), (32, 128), 128),
    "b5.0": (832, 256, (160, 320), (32, 128), 128),
    "b5.1": (832, 384, (192, 384), (48, 128), 128),
}


class D2LGoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        t = D2L_TABLE
        self.b1 = nn.Sequential(
            _conv_relu(in_channels, 64, 7, stride=2, padding=3), nn.MaxPool2d(3, 2, padding=1)
        )
        self.b2 = nn.Sequential(
            _conv_relu(64, 64, 1), _conv_relu(64, 192, 3, padding=1), nn.MaxPool2d(3, 2, padding=1)
        )
        self.b3 = nn.Sequential(
            D2LInception(*t["b3.0"]), D2LInception(*t["b3.1"]), nn.MaxPool2d(3, 2, padding=1)
        )
        self.b4 = nn.Sequential(
            *(D2LInception(*t[f"b4.{i}"]) for i in range(5)), nn.MaxPool2d(3, 2, padding=1)
        )
        self.b5 = nn.Sequential(
            D2LInception(*t["b5.0"]), D2LInception(*t["b5.1"]), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(1024, num_classes)
        # d2l's train_ch6 initialises with Xavier: without BatchNorm, this 22-layer stack does
        # not leave chance level from PyTorch's default init.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x 1 x 96 x 96
        x = self.b2(self.b1(x))
        # N x 192 x 12 x 12
        x = self.b3(x)
        # N x 480 x 6 x 6
        x = self.b4(x)
        # N x 832 x 3 x 3
        x = self.b5(x)
        # N x 1024
        return self.fc(x)


def mnist_inception(*, num_classes: int = 10) -> MnistInception:
    return MnistInception(num_classes).eval()


def mnist_resnet(*, num_classes: int = 10) -> MnistResNet:
    return MnistResNet(num_classes).eval()


def d2l_googlenet(*, num_classes: int = 10) -> D2LGoogLeNet:
    return D2LGoogLeNet(num_classes).eval()
