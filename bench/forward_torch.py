#!/usr/bin/env python3
"""PyTorch CPU baseline of `just bench-precompute`: forward throughput of one architecture,
contiguous (NCHW) and channels_last, in eval mode under `torch.inference_mode()`.

`--arch densenet-bc`: DenseNet-BC-100 on the DICE CIFAR-10 checkpoint (`--checkpoint`,
`bench/densenet_torch.py`), 32 x 32 inputs; `resnet50` / `mobilenet_v2`: torchvision's
networks with their default random initialisation; `efficientnet-lite0`:
`bench/lite0_torch.py` (random initialisation); 224 x 224 inputs. Weights do not change
the cost of a dense float32 forward, so random ones are fine for timing. Inputs are
torch.randn with a fixed seed.

Prints one JSON object per (layout, batch): {"layout", "batch", "best", "median"} in
images/s.
"""

import argparse
import json
import time

import torch


def build(arch, checkpoint):
    """The eval-mode network and its input size."""
    if arch == "densenet-bc":
        from densenet_torch import DenseNetBC

        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        model = DenseNetBC()
        model.load_state_dict(state, strict=True)
        return model.eval(), 32
    if arch == "efficientnet-lite0":
        from lite0_torch import Lite0

        return Lite0().eval(), 224
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None).eval(), 224


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="densenet-bc")
    ap.add_argument("--checkpoint")
    ap.add_argument("--batches", default="64,128")
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, size = build(args.arch, args.checkpoint)
    torch.manual_seed(0)
    for layout in ["contiguous", "channels_last"]:
        net = model.to(memory_format=torch.channels_last) if layout == "channels_last" else model
        for n in [int(b) for b in args.batches.split(",")]:
            x = torch.randn(n, 3, size, size)
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
