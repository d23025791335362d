"""torchvision's ResNet-18/34/50 as a Backbone, with torchvision's parameter names per block."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from rtlkit.core.errors import check, check_int
from rtlkit.core.models.backbone import Backbone, Head, Normalize


# --------------------------------------------------------------------------- torchvision's ResNets

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_RESNET_LAYERS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


@dataclass(frozen=True)
class ResNetSpec:
    """torchvision's ResNet-``depth`` (18, 34, 50; He et al. 2016, v1.5: the bottleneck's stride on
    its 3x3 conv). ``width`` is the first stage's width (torchvision: 64; smaller for tests only,
    since no released weights fit it); ``small_input`` replaces the ImageNet stem (7x7 stride-2 conv
    + max-pool) by a 3x3 stride-1 conv, as CIFAR ResNets do (released ImageNet weights then do not
    fit the stem). Partition: the stem rides with layer1's first block, then every basic or
    bottleneck block of layer1-layer4 is one block, then pool + fc (``n_blocks`` = blocks + 1)."""
    depth: int = 50
    width: int = 64
    small_input: bool = False

    def __post_init__(self):
        check(self.depth in _RESNET_LAYERS, f"ResNet depth must be one of {sorted(_RESNET_LAYERS)} (torchvision's "
              f"resnet18/34/50), not {self.depth!r}")
        check_int("ResNet width", self.width, 1)

    @property
    def name(self) -> str:
        return f"resnet-{self.depth}" + (f"-w{self.width}" if self.width != 64 else "") + \
            ("-small" if self.small_input else "")

    @property
    def kind(self) -> str:
        return _RESNET_LAYERS[self.depth][0]

    @property
    def layers(self) -> tuple[int, ...]:
        return _RESNET_LAYERS[self.depth][1]

    @property
    def n_blocks(self) -> int:
        return sum(self.layers) + 1

    @property
    def widths(self) -> tuple[int, ...]:
        e = 4 if self.kind == "bottleneck" else 1
        return tuple(self.width * 2 ** g * e for g, n in enumerate(self.layers) for _ in range(n))

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


class ResNetStem(nn.Module):
    """torchvision's stem (conv1, bn1, ReLU, 3x3 stride-2 max-pool), or with ``small`` a 3x3
    stride-1 conv, BN and ReLU; the parameter names are torchvision's."""

    def __init__(self, cin: int, cout: int, small: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3 if small else 7, 1 if small else 2, 1 if small else 3, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.pool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        return self.pool(torch.relu(self.bn1(self.conv1(x))))


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNetBasic(nn.Module):
    """torchvision's BasicBlock (post-activation: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut));
    ``convex_sum`` (NEFT) makes the sum before the last ReLU (a + b) / 2."""
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)
        self.convex_sum = False

    def residual(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        out, short = self.residual(x), x if self.downsample is None else self.downsample(x)
        return torch.relu(0.5 * (out + short) if self.convex_sum else out + short)


class ResNetBottleneck(ResNetBasic):
    """torchvision's Bottleneck (1x1, 3x3 with the stride, 1x1 to 4 x planes), with ``convex_sum``."""
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _downsample(cin, planes * 4, stride)
        self.convex_sum = False

    def residual(self, x):
        o = torch.relu(self.bn1(self.conv1(x)))
        return self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(o)))))


class ResNet(Backbone):
    """torchvision's ResNet-18/34/50 as a :class:`Backbone` (:class:`ResNetSpec` gives the
    partition). No final BN block: the post-activation blocks end in their own ReLU."""

    def __init__(self, spec: ResNetSpec, num_classes: int, in_channels: int = 3, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.spec = spec
        self.normalize = Normalize.for_channels(mean, std, in_channels)
        block = ResNetBottleneck if spec.kind == "bottleneck" else ResNetBasic
        blocks: list[nn.Module] = []
        cin = spec.width
        for g, n in enumerate(spec.layers):
            for i in range(n):
                blk = block(cin, spec.width * 2 ** g, 2 if (g > 0 and i == 0) else 1)
                if g == 0 and i == 0:
                    blk = nn.Sequential(ResNetStem(in_channels, spec.width, spec.small_input), blk)
                blocks.append(blk)
                cin = spec.width * 2 ** g * block.expansion
        blocks.append(Head(cin, num_classes))
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = cin
        for m in self.modules():   # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
