"""The original homework's Keras ResNet18, layer for layer, so its 62.21% can be reproduced.

Differences from the standard CIFAR ResNet18 that it keeps on purpose:
- stem: 3x3 conv with 'valid' padding (32 -> 30 px), BN, ReLU, then a 2x2 max-pool, stride 1, 'same';
- every conv has a bias (Keras' default use_bias=True), and Keras' glorot-uniform initialisation;
- the shortcut is a 1x1 conv + BN only where the stride is 2, the identity elsewhere;
- Keras' 'same' padding: for stride 2 on an even size it pads 0 before and 1 after (PyTorch's
  padding=1 would pad 1 and 1), so it is reproduced with explicit asymmetric padding;
- Keras' BatchNormalization: momentum 0.99 (PyTorch momentum 0.01) and epsilon 1e-3.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from c100.models.registry import register


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after) along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = same_pad(x.shape[2], kh, sh)
        left, right = same_pad(x.shape[3], kw, sw)
        return super().forward(F.pad(x, (left, right, top, bottom)))


def keras_bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class KerasBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = SameConv(cin, cout, 3, stride=stride)
        self.bn1 = keras_bn(cout)
        self.conv2 = SameConv(cout, cout, 3)
        self.bn2 = keras_bn(cout)
        self.relu = nn.ReLU()  # a module, not F.relu, so hooks see it (benchmarks/archive/dead_units.py)
        self.shortcut = (nn.Sequential(SameConv(cin, cout, 1, stride=stride), keras_bn(cout))
                         if stride == 2 else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SeedResNet18(nn.Module):
    def __init__(self, num_classes: int = 100):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3)  # 'valid': 32 -> 30
        self.bn = keras_bn(64)
        self.relu = nn.ReLU()
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]:
            blocks.append(KerasBlock(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)  # Keras' glorot_uniform
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, stride=1)  # 2x2 'same', stride 1
        x = self.blocks(x)
        return self.fc(x.mean((2, 3)))


@register
def resnet18_seed(num_classes: int = 100) -> SeedResNet18:
    return SeedResNet18(num_classes)
