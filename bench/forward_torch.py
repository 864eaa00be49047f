#!/usr/bin/env python3
"""PyTorch CPU baseline of `just bench-precompute`: DenseNet-BC-100 forward throughput on
the DICE CIFAR-10 checkpoint, contiguous (NCHW) and channels_last, in eval mode.

Prints one JSON object per (layout, batch): {"layout", "batch", "best", "median"} in
images/s. The network is written here from the DenseNet-BC description (Huang et al.;
DICE's `DenseNet3` layout and parameter names, so the checkpoint's state dict loads with
strict=True); the same uniform pseudo-random inputs as `forward_speed` are not needed
for timing, so the inputs are torch.randn with a fixed seed.
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        inter = 4 * growth
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, inter, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter)
        self.conv2 = nn.Conv2d(inter, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class DenseBlock(nn.Module):
    def __init__(self, layers, cin, growth):
        super().__init__()
        self.layer = nn.Sequential(*[Bottleneck(cin + i * growth, growth) for i in range(layers)])

    def forward(self, x):
        return self.layer(x)


class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseNetBC(nn.Module):
    def __init__(self, depth=100, growth=12, reduction=0.5, classes=10):
        super().__init__()
        n = (depth - 4) // 6
        c = 2 * growth
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.block1 = DenseBlock(n, c, growth)
        c += n * growth
        self.trans1 = Transition(c, int(c * reduction))
        c = int(c * reduction)
        self.block2 = DenseBlock(n, c, growth)
        c += n * growth
        self.trans2 = Transition(c, int(c * reduction))
        c = int(c * reduction)
        self.block3 = DenseBlock(n, c, growth)
        c += n * growth
        self.bn1 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        out = self.trans2(self.block2(self.trans1(self.block1(self.conv1(x)))))
        out = F.relu(self.bn1(self.block3(out)))
        feat = F.avg_pool2d(out, 8).flatten(1)
        return feat, self.fc(feat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--batches", default="64,128")
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    model = DenseNetBC().eval()
    model.load_state_dict(state, strict=True)
    torch.manual_seed(0)
    for layout in ["contiguous", "channels_last"]:
        net = model.to(memory_format=torch.channels_last) if layout == "channels_last" else model
        for n in [int(b) for b in args.batches.split(",")]:
            x = torch.randn(n, 3, 32, 32)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                net(x)  # warm-up
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    net(x)
                    times.append(time.perf_counter() - t0)
            times.sort()
            print(json.dumps({"layout": layout, "batch": n, "best": n / times[0],
                              "median": n / times[len(times) // 2]}), flush=True)


if __name__ == "__main__":
    main()
