"""DenseNet-BC as DICE's `DenseNet3` lays it out (parameter names match its checkpoint,
so `load_state_dict(strict=True)` works), for the PyTorch side of the benchmarks and of
the UM parity fixture. `conv` and `linear` build the layers (default `nn.Conv2d` /
`nn.Linear`; the UM fixture passes masked ones). `forward` returns `(feature, logits)`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    def __init__(self, cin, growth, conv=nn.Conv2d):
        super().__init__()
        inter = 4 * growth
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv(cin, inter, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter)
        self.conv2 = conv(inter, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class DenseBlock(nn.Module):
    def __init__(self, layers, cin, growth, conv=nn.Conv2d):
        super().__init__()
        self.layer = nn.Sequential(*[Bottleneck(cin + i * growth, growth, conv) for i in range(layers)])

    def forward(self, x):
        return self.layer(x)


class Transition(nn.Module):
    def __init__(self, cin, cout, conv=nn.Conv2d):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseNetBC(nn.Module):
    """Depth 100, growth 12, reduction 0.5 by default: the DICE CIFAR checkpoints."""

    def __init__(self, depth=100, growth=12, reduction=0.5, classes=10, conv=nn.Conv2d, linear=nn.Linear):
        super().__init__()
        n = (depth - 4) // 6
        c = 2 * growth
        self.conv1 = conv(3, c, 3, padding=1, bias=False)
        self.block1 = DenseBlock(n, c, growth, conv)
        c += n * growth
        self.trans1 = Transition(c, int(c * reduction), conv)
        c = int(c * reduction)
        self.block2 = DenseBlock(n, c, growth, conv)
        c += n * growth
        self.trans2 = Transition(c, int(c * reduction), conv)
        c = int(c * reduction)
        self.block3 = DenseBlock(n, c, growth, conv)
        c += n * growth
        self.bn1 = nn.BatchNorm2d(c)
        self.fc = linear(c, classes)

    def forward(self, x):
        out = self.trans2(self.block2(self.trans1(self.block1(self.conv1(x)))))
        out = F.relu(self.bn1(self.block3(out)))
        feat = F.avg_pool2d(out, 8).flatten(1)
        return feat, self.fc(feat)
