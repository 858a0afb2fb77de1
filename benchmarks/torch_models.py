"""The benchmark models written in plain PyTorch, with xpnn's parameter names, so that an
xpnn state dict loads into them unchanged (same initial values in both frameworks).

Only imported when PyTorch is installed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def mlp(sizes) -> nn.Sequential:
    """``Flatten -> Linear -> ReLU -> ... -> Linear`` named like xpnn's ``mnist_mlp``
    (``1.weight``, ``3.weight``, ...: index 0 is the Flatten)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ConvBNAct(nn.Module):
    """conv (no bias, "same" padding) -> BatchNorm -> LeakyReLU, as xpnn's ConvBNAct."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1,
                 negative_slope: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        return x + self.block(x)


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def mnist_cnn(width: int = 32) -> nn.Sequential:
    """The network of ``xpnn.models.mnist.mnist_cnn`` (same names)."""

    def residual(channels: int) -> Residual:
        half = channels // 2
        return Residual(nn.Sequential(ConvBNAct(channels, half, 1), ConvBNAct(half, channels, 3)))

    return nn.Sequential(
        ConvBNAct(1, width // 2, 3),
        ConvBNAct(width // 2, width, 3, stride=2),
        residual(width),
        ConvBNAct(width, 2 * width, 3, stride=2),
        residual(2 * width),
        GlobalAvgPool(),
        nn.Linear(2 * width, 10),
    )


class _Stem(nn.Module):
    def __init__(self, width: int, slope: float):
        super().__init__()
        self.conv1 = ConvBNAct(3, width, 3, negative_slope=slope)

    def forward(self, x):
        return self.conv1(x)


class _Block(nn.Module):
    def __init__(self, channels: int, slope: float):
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels // 2, 1, negative_slope=slope)
        self.conv2 = ConvBNAct(channels // 2, channels, 3, negative_slope=slope)

    def forward(self, x):
        return x + self.conv2(self.conv1(x))


class _Stage(nn.Module):
    def __init__(self, c_in: int, c_out: int, depth: int, slope: float):
        super().__init__()
        self.conv_down = ConvBNAct(c_in, c_out, 3, 2, negative_slope=slope)
        self.blocks = nn.Sequential(*[_Block(c_out, slope) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.conv_down(x))


class _Head(nn.Module):
    def __init__(self, features: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


class Darknet53(nn.Module):
    """Darknet53 with timm's (and xpnn's) parameter names."""

    def __init__(self, num_classes: int = 1000, negative_slope: float = 0.01,
                 depths=(1, 2, 8, 8, 4), widths=(64, 128, 256, 512, 1024), stem_width=32):
        super().__init__()
        self.stem = _Stem(stem_width, negative_slope)
        stages, channels = [], stem_width
        for depth, width in zip(depths, widths, strict=True):
            stages.append(_Stage(channels, width, depth, negative_slope))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = _Head(channels, num_classes)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def load_xpnn_state(net: nn.Module, state: dict, rename=None) -> nn.Module:
    """Copy an xpnn state dict (``{name: array}``) into ``net``; ``rename`` maps xpnn names
    to torch names. Every torch parameter and buffer must be covered (``num_batches_tracked``
    counters aside), so a naming mismatch fails loudly."""
    from xpnn.backends import to_numpy

    tensors = {}
    for name, value in state.items():
        target = rename(name) if rename else name
        tensors[target] = torch.from_numpy(np.array(to_numpy(value), copy=True))
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"state mismatch: missing {missing}, unexpected {unexpected}")
    return net
