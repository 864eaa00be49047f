"""EfficientNet-Lite0 for the PyTorch side of `just bench-precompute`: lukemelas'
`efficientnet_pytorch` layout (module names `_conv_stem`, `_blocks.N._expand_conv`, ...) with
EfficientNet-B0's stages, no squeeze-excitation, ReLU6, BatchNorm eps 1e-3 and TensorFlow
"SAME" padding computed from the input size (as `Conv2dDynamicSamePadding`). Written here
from the model's description (the PyPI `efficientnet-lite-pytorch` package is not needed for
timing); `forward` returns `(feature, logits)`.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# (repeats, kernel, stride, expand, in, out): EfficientNet-B0's blocks_args.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
EPS = 1e-3


class SameConv(nn.Conv2d):
    """A bias-free convolution with TF "SAME" padding (total `max((ceil(i / s) - 1) * s + k - i,
    0)` per axis, half before, the rest after)."""

    def forward(self, x):
        pads = []
        for i, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(i / s) - 1) * s + k - i, 0)
            pads.append((total // 2, total - total // 2))
        (t, b), (l, r) = pads
        if t or b or l or r:
            x = F.pad(x, [l, r, t, b])
        return super().forward(x)


class MBConv(nn.Module):
    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=EPS)
        else:
            self._expand_conv = None
        self._depthwise_conv = SameConv(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=EPS)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = x
        if self._expand_conv is not None:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class Lite0(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=EPS)
        blocks = []
        for repeats, k, s, e, cin, cout in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=EPS)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        f = x.mean((2, 3))
        return f, self._fc(f)
