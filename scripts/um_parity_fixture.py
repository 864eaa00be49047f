#!/usr/bin/env python3
"""PyTorch reference for `pipeline/tests/um_parity.rs`: training steps of DenseNet-BC-100 on
the DICE CIFAR-10 checkpoint, as `posthoc um train` computes them.

Writes `pipeline/tests/fixtures/um_parity.safetensors` (a few tensors after each step, f32:
`um1.*` after UM step 1, `um2.*` after UM step 2, `umap.*` scores after the UMAP step)
whose `__metadata__` holds the losses and per-tensor statistics of every tensor (JSON).

Usage (from the repository root, with ../shared present):
    python3 scripts/um_parity_fixture.py [--shared ../shared] [--out pipeline/tests/fixtures/um_parity.safetensors]

Needs torch, numpy, pillow and safetensors. Deterministic on CPU (float32, 1 thread).

Cases (8 images: the first 8 of cifar10/test-lossless-first1000/index.csv, no augmentation,
no dropout, `model.train()` BatchNorm, normalisation of DICE's test transform):
- `um`: every parameter trained (affine BatchNorm, learnable gamma/beta), SGD lr 0.1,
  momentum 0.9, weight decay 1e-4. Step 1 with UM = 0 (plain cross-entropy); step 2 with
  UM = CE(step 2) + 0.25 is not known in advance, so step 2 uses UM = 1.0, which lies above
  the batch CE after step 1 (checked): the gradient is reversed.
- `umap`: weights frozen, BatchNorm gamma/beta frozen at the checkpoint's values, a score per
  conv/linear weight, mask = top 80% of |score| per layer (GetSubnet semantics), straight-
  through gradient to the scores; one SGD step (lr 0.1, momentum 0.9, weight decay 1e-4) of
  the scores with UM = 0. Scores are a closed formula both sides compute exactly:
  `s[i] = (-1)^i * ((i * 2654435761 mod 2^24) + 1) / 2^24 * float32(1 / sqrt(fan_in))`.
"""

import argparse
import csv
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.numpy import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from densenet_torch import DenseNetBC  # noqa: E402

MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], dtype=np.float32)


class GetSubnet(torch.autograd.Function):
    """Top-k mask of |scores| (k = kept fraction), identity gradient."""

    @staticmethod
    def forward(ctx, scores, k):
        out = scores.clone()
        _, idx = scores.flatten().sort()
        j = int((1 - k) * scores.numel())
        flat = out.flatten()
        flat[idx[:j]] = 0
        flat[idx[j:]] = 1
        return flat.view_as(scores)

    @staticmethod
    def backward(ctx, g):
        return g, None


class MaskedConv(nn.Conv2d):
    def forward(self, x):
        if hasattr(self, "scores"):
            w = self.weight * GetSubnet.apply(self.scores.abs(), self.keep)
        else:
            w = self.weight
        return F.conv2d(x, w, None, self.stride, self.padding)


class MaskedLinear(nn.Linear):
    def forward(self, x):
        if hasattr(self, "scores"):
            w = self.weight * GetSubnet.apply(self.scores.abs(), self.keep)
        else:
            w = self.weight
        return F.linear(x, w, self.bias)


def densenet():
    """The DICE layout with masked conv/linear layers; `forward` returns the logits."""
    net = DenseNetBC(conv=MaskedConv, linear=MaskedLinear)
    plain_forward = net.forward
    net.forward = lambda x: plain_forward(x)[1]
    return net


def formula_scores(shape):
    n = int(np.prod(shape))
    fan_in = int(np.prod(shape[1:]))
    i = np.arange(n, dtype=np.uint64)
    k = (i * np.uint64(2654435761)) % np.uint64(1 << 24)
    mag = (k + np.uint64(1)).astype(np.float32) / np.float32(1 << 24)
    bound = np.float32(1.0 / math.sqrt(fan_in))
    sign = np.where(i % 2 == 0, np.float32(1), np.float32(-1)).astype(np.float32)
    return (sign * (mag * bound)).astype(np.float32).reshape(shape)


def um_loss(logits, labels, um, beta=1.0):
    ce = F.cross_entropy(logits, labels)
    return (beta * ce - um).abs() + um, ce


def stats(t):
    a = t.detach().double().numpy().ravel()
    return [float(a.sum()), float(np.abs(a).sum()), float(np.abs(a).max()) if a.size else 0.0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="pipeline/tests/fixtures/um_parity.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    data = os.path.join(args.shared, "data")
    ckpt = torch.load(
        os.path.join(data, "checkpoints/dice-densenet100/cifar10/checkpoint_100.pth.tar"),
        map_location="cpu",
        weights_only=True,
    )["state_dict"]
    root = os.path.join(data, "cifar10/test-lossless-first1000")
    with open(os.path.join(root, "index.csv")) as f:
        rows = list(csv.DictReader(f))[:8]
    pixels = np.stack([np.asarray(Image.open(os.path.join(root, r["path"])).convert("RGB")) for r in rows])
    x = ((pixels.astype(np.float32) / np.float32(255) - MEAN) / STD).transpose(0, 3, 1, 2).copy()
    x = torch.from_numpy(x)
    y = torch.tensor([int(r["label"]) for r in rows])

    out, meta = {}, {"images": [r["path"] for r in rows], "labels": y.tolist()}

    # --- UM: all parameters, affine BatchNorm -------------------------------------------
    model = densenet()
    model.load_state_dict(ckpt)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    losses = []
    kept = [
        "conv1.weight",
        "block1.layer.0.conv1.weight",
        "block1.layer.0.bn1.weight",
        "block1.layer.0.bn1.bias",
        "block1.layer.0.bn1.running_mean",
        "block1.layer.0.bn1.running_var",
        "block2.layer.7.conv2.weight",
        "bn1.weight",
        "bn1.running_var",
        "fc.weight",
        "fc.bias",
    ]
    for step, um in enumerate((0.0, 1.0), start=1):
        opt.zero_grad()
        loss, ce = um_loss(model(x), y, um)
        loss.backward()
        opt.step()
        losses.append({"um": um, "loss": loss.item(), "cross_entropy": ce.item()})
        sd = model.state_dict()
        for k in kept:
            out[f"um{step}.{k}"] = sd[k].detach().numpy().astype(np.float32)
    assert losses[1]["cross_entropy"] < 1.0, "step 2 must lie below its constraint"
    sd = model.state_dict()
    meta["um"] = {
        "steps": losses,
        "stats": {k: stats(v) for k, v in sd.items() if not k.endswith("num_batches_tracked")},
        "delta_norm": {
            k: float((sd[k].double() - ckpt[k].double()).norm())
            for k in sd
            if not k.endswith("num_batches_tracked")
        },
    }

    # --- UMAP: scores over frozen weights, frozen affine BatchNorm ----------------------
    model = densenet()
    model.load_state_dict(ckpt)
    for p in model.parameters():
        p.requires_grad_(False)
    scores = []
    for name, m in model.named_modules():
        if isinstance(m, (MaskedConv, MaskedLinear)):
            m.scores = nn.Parameter(torch.from_numpy(formula_scores(tuple(m.weight.shape))))
            m.keep = 0.8
            scores.append((name, m.scores))
    model.train()
    opt = torch.optim.SGD([s for _, s in scores], lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt.zero_grad()
    loss, ce = um_loss(model(x), y, 0.0)
    loss.backward()
    opt.step()
    sd = model.state_dict()
    meta["umap"] = {
        "steps": [{"um": 0.0, "loss": loss.item(), "cross_entropy": ce.item()}],
        "keep": 0.8,
        "stats": {f"{n}.scores": stats(s) for n, s in scores},
        "delta_norm": {
            f"{n}.scores": float((s.detach().double() - torch.from_numpy(formula_scores(tuple(s.shape))).double()).norm())
            for n, s in scores
        },
        "weights_unchanged": all(torch.equal(sd[k], ckpt[k]) for k in ckpt if k.endswith(".weight") and "bn" not in k),
        "running_var_stats": {k: stats(v) for k, v in sd.items() if k.endswith("running_var")},
    }
    for n in ["conv1", "block3.layer.15.conv2", "fc"]:
        out[f"umap.{n}.scores"] = dict(scores)[n].detach().numpy().astype(np.float32)

    meta["torch"] = torch.__version__
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, args.out, metadata={"reference": json.dumps(meta)})
    print(json.dumps({"um": meta["um"]["steps"], "umap": meta["umap"]["steps"]}, indent=1))
    print("wrote", args.out, os.path.getsize(args.out), "bytes")


if __name__ == "__main__":
    main()
