#!/usr/bin/env python3
"""`just bench-precompute`: forward throughput of our DenseNet-BC-100 (the fused CPU engine
that `posthoc precompute` uses, and burn's flex backend) next to PyTorch CPU, contiguous
and channels_last, at batch 64 and 128, all in one run on the same machine.

Usage: run_forward_bench.py --python VENV_PYTHON --example PATH_TO_forward_speed --checkpoint CKPT
"""

import argparse
import json
import re
import subprocess
import sys


def ours(example, checkpoint, path, batches, repeat):
    out = subprocess.run([example, "--path", path, "--batches", batches, "--repeat", str(repeat),
                          "--checkpoint", checkpoint], check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        m = re.search(r"batch (\d+): best ([\d.]+) img/s, median ([\d.]+) img/s", line)
        if m:
            rows[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True)
    ap.add_argument("--example", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--batches", default="64,128")
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--skip-flex", action="store_true")
    args = ap.parse_args()
    torch_rows = {}
    out = subprocess.run([args.python, __file__.replace("run_forward_bench.py", "forward_torch.py"),
                          "--checkpoint", args.checkpoint, "--batches", args.batches,
                          "--repeat", str(args.repeat), "--threads", "2"],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        r = json.loads(line)
        torch_rows[(r["layout"], r["batch"])] = (r["best"], r["median"])
    engine = ours(args.example, args.checkpoint, "cpu", args.batches, args.repeat)
    flex = {} if args.skip_flex else ours(args.example, args.checkpoint, "burn", args.batches, 2)
    print(f"{'batch':>5}  {'PyTorch NCHW':>12}  {'PyTorch CL':>10}  {'posthoc cpu':>11}  {'burn flex':>9}"
          f"  {'cpu/NCHW':>8}  {'cpu/CL':>6}   (images/s, best of {args.repeat} batches, 2 threads)")
    for b in [int(x) for x in args.batches.split(",")]:
        nchw, cl = torch_rows[("contiguous", b)][0], torch_rows[("channels_last", b)][0]
        e = engine[b][0]
        f = flex.get(b, (float("nan"),))[0]
        print(f"{b:>5}  {nchw:>12.1f}  {cl:>10.1f}  {e:>11.1f}  {f:>9.1f}  {e / nchw:>7.2f}x  {e / cl:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
