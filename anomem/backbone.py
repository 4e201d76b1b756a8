"""ResNet encoder f = f(4) o ... o f(1) exposing every stage's feature map.

ResNet-18/34 use basic blocks, ResNet-50 bottleneck blocks (expansion 4), all at
any width (channels of the first stage; 64 is He et al.'s network).  The
``cifar`` stem is a 3x3 stride-1 convolution without max-pool, for 32x32
inputs; the ``imagenet`` stem is the 7x7 stride-2 convolution and 3x3 max-pool.

``padding`` is what every padded convolution reads beyond the border:
``zeros`` (He et al.'s network) or ``replicate`` (the edge pixel repeated,
``nn.Conv2d(padding_mode="replicate")``); the max-pool pads with -inf in both.
Zeros frame the image in black, so a constant image gives feature maps that
differ near the border; replicated edges keep them constant (and, since a
stride-2 convolution with padding 1 on an even side reads the padding on its
top and left only, zeros mark those two edges more than the others).

Example:
    >>> import torch
    >>> net = ResNet("resnet18", width=8)
    >>> [tuple(z.shape) for z in net(torch.zeros(2, 3, 32, 32))]
    [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]
"""

from __future__ import annotations

import torch
from torch import nn

_LAYOUT = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
           "resnet50": ("bottleneck", (3, 4, 6, 3))}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, padding: str = "zeros") -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False, padding_mode=padding)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, c_out, 3, 1, 1, bias=False, padding_mode=padding)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on the BatchNorm outputs, which no backward needs: the same values
        # without a second full-size map per operation.
        out = self.bn1(self.conv1(x)).relu_()
        return self.bn2(self.conv2(out)).add_(self.shortcut(x)).relu_()


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, padding: str = "zeros") -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False, padding_mode=padding)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x)).relu_()
        out = self.bn2(self.conv2(out)).relu_()
        return self.bn3(self.conv3(out)).add_(self.shortcut(x)).relu_()


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """ResNet encoder returning the list of the four stage outputs z(1..4).

    Args:
        arch: ``resnet18``, ``resnet34`` or ``resnet50``.
        width: channels of the first stage (stage s has ``width * 2^(s-1) * expansion``).
        stem: ``cifar`` or ``imagenet``.
        in_channels: channels of the input images.
        padding: ``zeros`` or ``replicate``, what the padded convolutions read beyond the border.
    """

    def __init__(self, arch: str = "resnet18", width: int = 64, stem: str = "cifar",
                 in_channels: int = 3, padding: str = "zeros") -> None:
        super().__init__()
        kind, depths = _LAYOUT[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False,
                                                padding_mode=padding),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False,
                                                padding_mode=padding),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        stages, c_in = [], width
        for i, depth in enumerate(depths):
            planes = width * 2 ** i
            blocks = []
            for j in range(depth):
                blocks.append(block(c_in, planes, 2 if (j == 0 and i > 0) else 1, padding))
                c_in = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.channels = tuple(width * 2 ** i * block.expansion for i in range(4))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, upto: int = 4) -> list[torch.Tensor]:
        """Feature maps of stages 1..``upto`` (later stages are not computed)."""
        out, z = [], self.stem(x)
        for stage in self.stages[:upto]:
            z = stage(z)
            out.append(z)
        return out
