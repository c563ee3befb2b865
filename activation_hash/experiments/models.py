"""Networks of the experiments, built with our drop-in ReLU (codes come from the fused kernel).

- :class:`MLP`: Flatten, then per hidden layer Linear -> [BatchNorm1d] -> ReLU -> [Dropout]
  (the paper's recipe is Dense -> BN -> ReLU), then a Linear output.
- :class:`SmallCNN`: two (conv3x3 -> [BN] -> ReLU -> maxpool) blocks, then Linear.
- :class:`VGG`: VGG-style stacks of conv3x3 -> [BN] -> ReLU with max pools, a hidden FC layer.
- :class:`ResNet`: CIFAR-style ResNet of basic blocks (two conv3x3 + identity/1x1 shortcut).

:func:`build_model` makes any of them from a name or a config dict.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from activation_hash import ReLU  # the top-level name: survives the nn split
from activation_hash.validation import check_float

__all__ = ["MLP", "SmallCNN", "VGG", "ResNet", "build_model", "ARCHS"]


def _prod(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


class MLP(nn.Sequential):
    """Multi-layer perceptron on flattened inputs ``[B, *in_shape] -> [B, n_classes]``.

    Args:
        width: units per hidden layer (an int, repeated ``depth`` times, or a list).
        depth: number of hidden layers (ignored when ``width`` is a list).
        batch_norm: BatchNorm1d between Linear and ReLU; dropout: rate after each ReLU.
    """

    def __init__(self, in_shape, n_classes: int, width: int | Sequence[int] = 32, depth: int = 1,
                 batch_norm: bool = False, dropout: float = 0.0):
        widths = [int(width)] * int(depth) if isinstance(width, (int, float)) else [int(w) for w in width]
        if not widths or min(widths) < 1:
            raise ValueError(f"MLP needs at least one hidden layer of width >= 1, got {widths}")
        dropout = check_float(dropout, "dropout", min=0.0, max=1.0, max_open=True)
        layers: list[nn.Module] = [nn.Flatten()]
        prev = _prod(in_shape if not isinstance(in_shape, int) else (in_shape,))
        for w in widths:
            layers.append(nn.Linear(prev, w))
            if batch_norm:
                layers.append(nn.BatchNorm1d(w))
            layers.append(ReLU())
            if dropout:
                layers.append(nn.Dropout(float(dropout)))
            prev = w
        layers.append(nn.Linear(prev, int(n_classes)))
        super().__init__(*layers)


def _conv_block(cin: int, cout: int, batch_norm: bool) -> list[nn.Module]:
    out: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        out.append(nn.BatchNorm2d(cout))
    out.append(ReLU())
    return out


class SmallCNN(nn.Sequential):
    """Two conv blocks (3x3, ``channels``) each followed by 2x2 max pooling, then Linear."""

    def __init__(self, in_shape, n_classes: int, channels: Sequence[int] = (16, 32),
                 batch_norm: bool = False, dropout: float = 0.0):
        c, h, w = _image_shape(in_shape)
        layers: list[nn.Module] = []
        for ch in channels:
            layers += _conv_block(c, int(ch), batch_norm)
            layers.append(nn.MaxPool2d(2) if min(h, w) >= 2 else nn.Identity())
            if min(h, w) >= 2:
                h, w = h // 2, w // 2
            c = int(ch)
        layers.append(nn.Flatten())
        if dropout:
            layers.append(nn.Dropout(float(dropout)))
        layers.append(nn.Linear(c * h * w, int(n_classes)))
        super().__init__(*layers)


class VGG(nn.Module):
    """VGG-style: ``cfg`` lists conv widths, ``"M"`` a 2x2 max pool; then FC(hidden) -> ReLU."""

    def __init__(self, in_shape, n_classes: int, cfg: Sequence = (32, 32, "M", 64, 64, "M", 128, "M"),
                 hidden: int = 128, batch_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        c, h, w = _image_shape(in_shape)
        layers: list[nn.Module] = []
        for v in cfg:
            if v == "M":
                if min(h, w) >= 2:
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
            else:
                layers += _conv_block(c, int(v), batch_norm)
                c = int(v)
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(c * h * w, int(hidden))]
        if batch_norm:
            head.append(nn.BatchNorm1d(int(hidden)))
        head.append(ReLU())
        if dropout:
            head.append(nn.Dropout(float(dropout)))
        head.append(nn.Linear(int(hidden), int(n_classes)))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, batch_norm: bool = True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn1 = norm(cout)
        self.relu1 = ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=not batch_norm)
        self.bn2 = norm(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=not batch_norm), norm(cout))
        self.relu2 = ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: stem conv3x3 -> stages of ``blocks`` basic blocks (stride 2 between
    stages) -> global average pool -> Linear."""

    def __init__(self, in_shape, n_classes: int, widths: Sequence[int] = (16, 32, 64),
                 blocks: int = 1, batch_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        c, _, _ = _image_shape(in_shape)
        self.stem = nn.Sequential(*_conv_block(c, int(widths[0]), batch_norm))
        stages, cin = [], int(widths[0])
        for i, w in enumerate(widths):
            for b in range(int(blocks)):
                stages.append(BasicBlock(cin, int(w), 2 if (i > 0 and b == 0) else 1, batch_norm))
                cin = int(w)
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(float(dropout)) if dropout else nn.Identity()
        self.fc = nn.Linear(cin, int(n_classes))

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.pool(self.stages(self.stem(x))), 1)))


def _image_shape(in_shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in in_shape)
    if len(shape) != 3:
        raise ValueError(f"convolutional models need image inputs [C, H, W], got input shape {shape}")
    return shape  # type: ignore[return-value]


ARCHS = {"mlp": MLP, "cnn": SmallCNN, "vgg": VGG, "resnet": ResNet}


def build_model(spec: str | dict, in_shape, n_classes: int) -> nn.Module:
    """Build a model from a name (``"mlp"``, ``"cnn"``, ``"vgg"``, ``"resnet"``) or a dict
    ``{"arch": name, **kwargs}`` (kwargs of that class, e.g. ``width``, ``depth``,
    ``batch_norm``, ``dropout``). Parameters are drawn from torch's global RNG (seed it first).
    """
    if isinstance(spec, str):
        spec = {"arch": spec}
    if not isinstance(spec, dict):
        raise TypeError(f"model spec must be a name or a dict, got {type(spec).__name__}")
    spec = dict(spec)
    arch = spec.pop("arch", "mlp")
    if arch not in ARCHS:
        raise ValueError(f"unknown model arch {arch!r}; expected one of {sorted(ARCHS)}")
    spec = {k: v for k, v in spec.items() if v is not None}
    try:
        return ARCHS[arch](tuple(in_shape), int(n_classes), **spec)
    except TypeError as e:
        raise TypeError(f"bad options for model {arch!r}: {e}") from None
