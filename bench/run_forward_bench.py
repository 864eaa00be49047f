#!/usr/bin/env python3
"""`just bench-precompute`: forward throughput of our backbones (the fused CPU engines that
`posthoc precompute` uses by default, and burn's flex backend) next to PyTorch CPU,
contiguous and channels_last (torch.set_num_threads(2)), all in one run on the same machine.

Per architecture: DenseNet-BC-100 on the DICE CIFAR-10 checkpoint at 32 x 32 (batch 64 and
128), ResNet-50, MobileNet-v2 and EfficientNet-Lite0 at 224 x 224 (batch 32 and 64; random
weights on both sides, see forward_torch.py). Prints images/s (best of the repeats) and our
engine's ratio to each PyTorch layout.

Usage: run_forward_bench.py --python VENV_PYTHON --example PATH_TO_forward_speed
       --checkpoint DENSENET_CKPT [--archs a,b] [--repeat N] [--repeat-large N] [--flex]
"""

import argparse
import json
import re
import subprocess
import sys

ARCHS = ["densenet-bc", "resnet50", "mobilenet_v2", "efficientnet-lite0"]


def ours(example, arch, checkpoint, path, batches, repeat):
    cmd = [example, "--arch", arch, "--path", path, "--batches", batches, "--repeat", str(repeat),
           "--threads", "2"]
    if arch == "densenet-bc":
        cmd += ["--checkpoint", checkpoint]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        m = re.search(r"batch (\d+): best ([\d.]+) img/s, median ([\d.]+) img/s", line)
        if m:
            rows[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    return rows


def torch_side(python, arch, checkpoint, batches, repeat):
    cmd = [python, __file__.replace("run_forward_bench.py", "forward_torch.py"), "--arch", arch,
           "--batches", batches, "--repeat", str(repeat), "--threads", "2"]
    if arch == "densenet-bc":
        cmd += ["--checkpoint", checkpoint]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        r = json.loads(line)
        rows[(r["layout"], r["batch"])] = (r["best"], r["median"])
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True)
    ap.add_argument("--example", required=True)
    ap.add_argument("--checkpoint", required=True, help="DenseNet-BC-100 CIFAR-10 checkpoint")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--repeat", type=int, default=6, help="timed batches, DenseNet-BC")
    ap.add_argument("--repeat-large", type=int, default=2, help="timed batches, 224 x 224 nets")
    ap.add_argument("--flex", action="store_true",
                    help="also time burn flex on the 224 x 224 nets (minutes each)")
    ap.add_argument("--skip-flex", action="store_true", help="no burn flex at all")
    args = ap.parse_args()
    print(f"{'arch':<18} {'batch':>5}  {'PyTorch NCHW':>12}  {'PyTorch CL':>10}  {'posthoc cpu':>11}"
          f"  {'burn flex':>9}  {'cpu/NCHW':>8}  {'cpu/CL':>6}   (images/s, best of the repeats, 2 threads)",
          flush=True)
    for arch in args.archs.split(","):
        small = arch == "densenet-bc"
        batches = "64,128" if small else "32,64"
        repeat = args.repeat if small else args.repeat_large
        t = torch_side(args.python, arch, args.checkpoint, batches, repeat)
        engine = ours(args.example, arch, args.checkpoint, "cpu", batches, repeat)
        flex = {}
        if not args.skip_flex and (small or args.flex):
            flex = ours(args.example, arch, args.checkpoint, "burn", batches.split(",")[0] if not small else batches, 1 if not small else 2)
        for b in [int(x) for x in batches.split(",")]:
            nchw, cl = t[("contiguous", b)][0], t[("channels_last", b)][0]
            e = engine[b][0]
            f = flex.get(b, (float("nan"),))[0]
            print(f"{arch:<18} {b:>5}  {nchw:>12.1f}  {cl:>10.1f}  {e:>11.1f}  {f:>9.1f}"
                  f"  {e / nchw:>7.2f}x  {e / cl:>5.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
