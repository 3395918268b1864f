"""VGG16 with batch norm (Simonyan & Zisserman 2015; BN as in torchvision's vgg16_bn), CIFAR-sized:
five 2x2 max-pools take 32x32 to 1x1, so one linear layer on the 512 features classifies (the
4096-wide ImageNet head would add 34M parameters for no gain at this size)."""

from __future__ import annotations

import torch
import torch.nn as nn

from c100.models.registry import register

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int = 100):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register
def vgg16(num_classes: int = 100) -> VGG:
    return VGG(VGG16, num_classes)
