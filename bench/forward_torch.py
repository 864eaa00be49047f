#!/usr/bin/env python3
"""PyTorch CPU baseline of `just bench-precompute`: DenseNet-BC-100 forward throughput on
the DICE CIFAR-10 checkpoint, contiguous (NCHW) and channels_last, in eval mode.

Prints one JSON object per (layout, batch): {"layout", "batch", "best", "median"} in
images/s. The network is written here from the DenseNet-BC description (Huang et al.;
`bench/densenet_torch.py`); the same uniform pseudo-random inputs as `forward_speed` are not needed
for timing, so the inputs are torch.randn with a fixed seed.
"""

import argparse
import json
import time

import torch

from densenet_torch import DenseNetBC


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
