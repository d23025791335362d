"""rtlkit's pre-activation WideResNet as a Backbone (CARTL Sec. 4 / Shafahi Fig. 2 numbering)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from rtlkit.core.errors import check
from rtlkit.core.models.backbone import Backbone, Head, Normalize


class BasicBlock(nn.Module):
    """Pre-activation WRN block: BN-ReLU-conv-BN-ReLU-conv plus shortcut.

    ``convex_sum`` turns the residual sum a + b into the convex combination (a + b) / 2
    (CARTL Sec. 5, NEFT; Cisse et al. 2017).
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.convex_sum = False

    def forward(self, x):
        o = torch.relu(self.bn1(x))
        short = x if self.equal else self.shortcut(o)
        out = self.conv2(torch.relu(self.bn2(self.conv1(o))))
        return 0.5 * (out + short) if self.convex_sum else out + short


class Stem(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)

    def forward(self, x):
        return self.conv(x)


class FinalBNReLU(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(x))


@dataclass(frozen=True)
class WRNSpec:
    """WRN-depth-width. ``stem_stride`` 2 downsamples early (cheap CPU runs on 28x28 inputs)."""
    depth: int = 34
    width: int = 10
    stem_stride: int = 1
    base: int = 16

    def __post_init__(self):
        check((self.depth - 4) % 6 == 0 and self.depth >= 10,
              f"WRN depth must be 6n+4 with n >= 1 (10, 16, 28, 34, ...), not {self.depth}")
        check(self.width >= 1, f"WRN width must be >= 1, not {self.width}")
        check(self.stem_stride in (1, 2), f"stem_stride must be 1 or 2, not {self.stem_stride}")

    @property
    def name(self) -> str:
        return f"wrn-{self.depth}-{self.width}" + ("-s2" if self.stem_stride == 2 else "")

    @property
    def n_blocks(self) -> int:
        return 3 * (self.depth - 4) // 6 + 2

    @property
    def widths(self) -> tuple[int, ...]:
        """The channel width after each block but the head (the first ``tap`` blocks end at ``widths[tap - 1]``)."""
        n = (self.depth - 4) // 6
        return tuple(self.base * self.width * m for m in (1, 2, 4) for _ in range(n)) + (4 * self.base * self.width,)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]



class WideResNet(Backbone):
    """WRN with an ordered block partition, numbered as in CARTL Sec. 4 / Shafahi Fig. 2.

    ``self.blocks`` holds, in forward order: every residual block (the stem convolution rides
    with the first one, so that fine-tuning "all" blocks trains every weight), then the final
    BN+ReLU, then the classifier head. WRN-34-10 has 3*5 residual blocks + 2 = 17 blocks;
    WRN-28-4 has 14. "The last k blocks" are ``blocks[-k:]``: k=1 is the classifier alone,
    k=2 adds the final BN, k=3 adds the last residual block, and so on.
    """

    def __init__(self, spec: WRNSpec, num_classes: int, in_channels: int = 3,
                 mean=(0.5,), std=(0.5,)):
        super().__init__()
        self.spec = spec
        self.normalize = Normalize.for_channels(mean, std, in_channels)
        n = (spec.depth - 4) // 6
        widths = [spec.base, spec.base * spec.width, 2 * spec.base * spec.width, 4 * spec.base * spec.width]
        blocks: list[nn.Module] = []
        cin = widths[0]
        for g in range(3):
            for i in range(n):
                stride = 2 if (g > 0 and i == 0) else 1
                blk = BasicBlock(cin, widths[g + 1], stride)
                if g == 0 and i == 0:
                    blk = nn.Sequential(Stem(in_channels, widths[0], spec.stem_stride), blk)
                blocks.append(blk)
                cin = widths[g + 1]
        blocks.append(FinalBNReLU(cin))
        blocks.append(Head(cin, num_classes))
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = cin
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
