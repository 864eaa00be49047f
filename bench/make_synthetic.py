#!/usr/bin/env python3
"""Synthetic penultimate features in the `posthoc cache import-npy` layout.

Writes, for a shape preset, a folder with `fc_weight.npy` (f32 C x m), `fc_bias.npy`
(f32 C) and per set `<prefix>_feat.npy` (f32 n x m), `<prefix>_logits.npy` (f32 n x C,
`h @ W.T + b` evaluated in float32), `<prefix>_files.txt` (one made-up path per row) and,
for `id_train` / `id_test`, `<prefix>_labels.npy` (int64). OOD prefixes are `ood_<name>`.

Structure (fixed seed, so every run writes the same bytes):
- features are non-negative with a heavy tail: every unit carries a small log-normal
  background (median ~0.01), a share of exact zeros (post-ReLU), and each class has its
  own ~8% of units that fire strongly for its samples, plus ~5% generic units that fire
  for every image. Some ID rows also carry a weaker copy of a second class (confusions).
  For the CIFAR preset the defaults give about the statistics of the real DenseNet-BC-100
  fixture (../shared/fixtures/posthoc-small: 1.7% zeros, median 0.007, p90 0.40).
- the head is "trained-like": W[c] follows the centred class prototypes plus noise, so
  the ID accuracy is high but not perfect, and scaled so that the top-1 vs top-2 logit
  margins look like the real fixture's (CIFAR preset: median ~8, max ~30; real: 7 and 25).
  Much larger margins would make MSP saturate to exactly 1.0 even in float64, and such
  ties make AUPR depend on the last bit of the scores;
- each OOD set is shifted in its own way: weaker, mixed class evidence (two random
  classes), a global scale, and sparse abnormally large activations (the pattern ReAct
  clips), so that the scores separate ID from OOD imperfectly (AUROC well below 1).

Usage: make_synthetic.py --shape cifar|imagenet --out DIR [--seed N] [--scale F]
(`--scale` multiplies every row count, for quick trials).
"""

import argparse
import os
import sys
import time

import numpy as np

# m, C, share of exact zeros, head (signal, noise), sets as (prefix, rows), OOD shifts.
# OOD shift: (class evidence strength, global scale, spike probability, spike size)
SHAPES = {
    "cifar": {
        "m": 342,
        "classes": 10,
        "zeros": 0.02,
        "head": (0.10, 0.15),
        "sets": [
            ("id_train", 50000),
            ("id_test", 10000),
            ("ood_isun", 8925),
            ("ood_tinyimagenet", 5000),
            ("ood_mnist", 2000),
            ("ood_dtd", 120),
        ],
        "ood": {
            "isun": (0.75, 1.0, 0.010, 1.5),
            "tinyimagenet": (0.9, 1.05, 0.006, 1.2),
            "mnist": (0.5, 0.8, 0.004, 1.0),
            "dtd": (0.7, 0.9, 0.015, 1.8),
        },
    },
    "imagenet": {
        "m": 2048,
        "classes": 1000,
        "zeros": 0.25,
        "head": (0.02, 0.04),
        "sets": [
            ("id_train", 20000),
            ("id_test", 50000),
            ("ood_inaturalist", 10000),
            ("ood_sun", 10000),
            ("ood_places", 10000),
            ("ood_textures", 10000),
        ],
        "ood": {
            "inaturalist": (0.8, 1.0, 0.008, 1.5),
            "sun": (0.9, 1.05, 0.006, 1.2),
            "places": (1.0, 1.05, 0.005, 1.2),
            "textures": (0.7, 0.95, 0.012, 1.8),
        },
    },
}

CHUNK = 4096
BACKGROUND_LOG_MEDIAN = np.log(0.01)
BACKGROUND_LOG_SD = 1.5
CLASS_UNITS = 0.08
GENERIC_UNITS = 0.05
CONFUSION_RATE = 0.12
GAIN_SD = 0.15
UNIT_NOISE_SD = 0.35


def model(rng, m, c, head):
    """Class prototypes P (C x m, >= 0), the generic units' levels g (m), head W, b.
    `head` = (signal, noise): W = signal * standardised centred prototypes + N(0, noise)."""
    k = max(2, int(round(CLASS_UNITS * m)))
    proto = np.zeros((c, m), dtype=np.float32)
    for cls in range(c):
        units = rng.choice(m, size=k, replace=False)
        proto[cls, units] = rng.lognormal(np.log(0.8), 0.5, size=k)
    generic = np.zeros(m, dtype=np.float32)
    g_units = rng.choice(m, size=max(1, int(round(GENERIC_UNITS * m))), replace=False)
    generic[g_units] = rng.lognormal(np.log(0.3), 0.5, size=g_units.size)
    centred = proto - proto.mean(axis=0, keepdims=True)
    w = head[0] * centred / centred.std() + rng.normal(0, head[1], (c, m))
    w = w.astype(np.float32)
    b = rng.normal(0, 0.3, c).astype(np.float32)
    return proto, generic, w, b


def feature_rows(rng, n, proto, generic, zeros, ood=None):
    """n rows of features; labels for ID rows (None for OOD)."""
    c, m = proto.shape
    h = rng.standard_normal((n, m), dtype=np.float32)
    h *= BACKGROUND_LOG_SD
    h += BACKGROUND_LOG_MEDIAN
    np.exp(h, out=h)
    h[rng.random((n, m), dtype=np.float32) < zeros] = 0.0
    noise = rng.standard_normal((n, m), dtype=np.float32)
    noise *= UNIT_NOISE_SD
    np.exp(noise, out=noise)  # per-unit multiplicative noise, log-normal
    gain = rng.lognormal(0.0, GAIN_SD, size=(n, 1)).astype(np.float32)
    if ood is None:
        labels = rng.integers(0, c, size=n)
        signal = proto[labels]
        confused = rng.random(n) < CONFUSION_RATE
        other = rng.integers(0, c, size=n)
        mix = rng.uniform(0.3, 0.9, size=n).astype(np.float32)
        signal[confused] += mix[confused, None] * proto[other[confused]]
    else:
        strength, scale, spike_p, spike_size = ood
        labels = None
        a, b = rng.integers(0, c, size=n), rng.integers(0, c, size=n)
        ua = rng.uniform(0.2, 1.0, size=(n, 1)).astype(np.float32) * strength
        ub = rng.uniform(0.0, 0.8, size=(n, 1)).astype(np.float32) * strength
        signal = ua * proto[a] + ub * proto[b]
        gain *= scale
    signal += generic
    signal *= noise
    signal *= gain
    h += signal
    if ood is not None:
        spikes = rng.random((n, m), dtype=np.float32) < ood[2]
        h[spikes] += ood[3] * rng.lognormal(0.0, 0.5, size=int(spikes.sum())).astype(np.float32)
    return h, labels


def write_set(out, prefix, rows, rng, proto, generic, w, b, zeros, ood):
    m, c = proto.shape[1], proto.shape[0]
    feat = np.lib.format.open_memmap(os.path.join(out, f"{prefix}_feat.npy"), "w+", np.float32, (rows, m))
    logits = np.lib.format.open_memmap(os.path.join(out, f"{prefix}_logits.npy"), "w+", np.float32, (rows, c))
    labels = np.empty(rows, dtype=np.int64) if ood is None else None
    wt = np.ascontiguousarray(w.T)
    for s in range(0, rows, CHUNK):
        n = min(CHUNK, rows - s)
        h, y = feature_rows(rng, n, proto, generic, zeros, ood)
        feat[s : s + n] = h
        logits[s : s + n] = h @ wt + b  # float32, as a network's head would
        if labels is not None:
            labels[s : s + n] = y
    feat.flush()
    logits.flush()
    del feat, logits
    if labels is not None:
        np.save(os.path.join(out, f"{prefix}_labels.npy"), labels)
    name = prefix.removeprefix("ood_")
    with open(os.path.join(out, f"{prefix}_files.txt"), "w") as f:
        f.write("".join(f"{name}/{i:07d}.png\n" for i in range(rows)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every row count")
    args = ap.parse_args()
    spec = SHAPES[args.shape]
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    proto, generic, w, b = model(rng, spec["m"], spec["classes"], spec["head"])
    np.save(os.path.join(args.out, "fc_weight.npy"), w)
    np.save(os.path.join(args.out, "fc_bias.npy"), b)
    for i, (prefix, rows) in enumerate(spec["sets"]):
        t = time.perf_counter()
        rows = max(1, int(round(rows * args.scale)))
        ood = spec["ood"].get(prefix.removeprefix("ood_")) if prefix.startswith("ood_") else None
        # One stream per set, so a set's rows do not depend on the others' sizes.
        set_rng = np.random.default_rng([args.seed, i])
        write_set(args.out, prefix, rows, set_rng, proto, generic, w, b, spec["zeros"], ood)
        print(f"{prefix}: {rows} x {spec['m']} in {time.perf_counter() - t:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
