#!/usr/bin/env python3
"""How far pytorch-ood 0.4.0's float32 ViM and RMD move on the `posthoc-small` fixture when
only the order of the ID-train rows changes (a different summation order, the same data),
next to the same formulas in float64 (numpy), which `posthoc eval` computes (faer, f64).

It backs the one documented deviation of `tests/parity_zoo.rs`: at ViM d = 128 and for RMD
the peers' float32 columns cannot be met at 1e-6 (or 1e-4) because float32 does not resolve
them: the covariance eigenvalues around ViM's d = 128 are ~1e-6 of the largest, below what
a float32 covariance of 2,000 rows resolves, and pytorch-ood's own AUROC changes with the
row order, while float64 does not. Run by `just bench-zoo` (interpreter with torch and
pytorch-ood 0.4.0, numpy, scikit-learn).
"""

import argparse
import os

import numpy as np
import torch
from pytorch_ood.detector import RMD, ViM
from sklearn.metrics import roc_auc_score

OOD = ["isun", "tinyimagenet", "mnist"]


def auroc(s_id, s_ood):
    """AUROC with OOD as the positive class and higher scores more OOD (pytorch-ood)."""
    y = np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))]
    return roc_auc_score(y, np.r_[s_id, s_ood])


def vim_float64(w, b, train, sets, dim):
    """ViM (pytorch-ood's reading: eigh of the MLE covariance centred at u = -pinv(W) b,
    alpha = mean max logit / mean residual norm, score = alpha |x_res| - logsumexp) in f64."""
    w, b, x = w.astype(np.float64), b.astype(np.float64), train.astype(np.float64)
    u = -(np.linalg.pinv(w) @ b)
    xc = x - u
    vals, vecs = np.linalg.eigh(xc.T @ xc / len(xc))
    null = vecs[:, : vecs.shape[1] - dim]
    alpha = (x @ w.T + b).max(1).mean() / np.linalg.norm(xc @ null, axis=1).mean()

    def score(f):
        f = f.astype(np.float64)
        z = f @ w.T + b
        zmax = z.max(1)
        return alpha * np.linalg.norm((f - u) @ null, axis=1) - (zmax + np.log(np.exp(z - zmax[:, None]).sum(1)))

    return [score(s) for s in sets], vals[::-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--seed", type=int, default=0, help="seed of the row permutation")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = lambda n: np.load(os.path.join(args.fixture, n))  # noqa: E731
    w, b = load("fc_weight.npy"), load("fc_bias.npy")
    train, labels = load("id_train_feat.npy"), load("id_train_labels.npy")
    sets = [load("id_test_feat.npy")] + [load(f"ood_{s}_feat.npy") for s in OOD]
    perm = np.random.default_rng(args.seed).permutation(len(train))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731

    def peer(make, order):
        det = make().fit_features(t(train[order]), t(labels[order]))
        return [det.predict_features(t(s)).numpy() for s in sets]

    print(f"AUROC on posthoc-small (ID test vs each OOD set); rows permuted with seed {args.seed}")
    print(f"{'detector':<14} {'reading':<28} " + " ".join(f"{s:>13}" for s in OOD))
    same = np.arange(len(train))
    for dim in (64, 128):
        make = lambda: ViM(None, d=dim, w=t(w), b=t(b))  # noqa: E731
        rows = {
            "pytorch-ood f32": peer(make, same),
            "pytorch-ood f32, permuted": peer(make, perm),
        }
        f64, vals = vim_float64(w, b, train, sets, dim)
        rows["float64"] = f64
        rows["float64, permuted"] = vim_float64(w, b, train[perm], sets, dim)[0]
        for name, s in rows.items():
            print(f"{'vim d=' + str(dim):<14} {name:<28} " + " ".join(f"{auroc(s[0], o):13.6f}" for o in s[1:]))
        print(f"{'':<14} eigenvalues {dim - 1}..{dim + 2} of {len(vals)}: "
              + ", ".join(f"{v:.3g}" for v in vals[dim - 2 : dim + 2]) + f" (largest {vals[0]:.3g})")
    for name, order in (("pytorch-ood f32", same), ("pytorch-ood f32, permuted", perm)):
        s = peer(lambda: RMD(None), order)
        print(f"{'rmd':<14} {name:<28} " + " ".join(f"{auroc(s[0], o):13.6f}" for o in s[1:]))


if __name__ == "__main__":
    main()
