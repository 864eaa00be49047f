#!/usr/bin/env python3
"""The pytorch-ood 0.4.0 side of `just bench-zoo`: the 22 peer settings of
`posthoc-small/peers_columns.txt` from the fixture's features through pytorch-ood's
feature-level API (`fit_features` / `predict_features`, `Detector.score` for the logit
scores, `predict` on [n, m, 1, 1] maps for ASH / SCALE / ReAct), as the fixture was made
(README section 2: float64, Mahalanobis / RMD / NNGuide in float32), then the sklearn
metrics (FPR95 of `get_measures`, AUROC, AUPR-In, AUPR-Out) on 3 OOD sets. Writes one JSON
row per (setting, OOD set) to --out.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from pytorch_ood.detector import (ASH, DICE, GEN, KNN, RMD, SCALE, SHE, Entropy, Mahalanobis,
                                  MaxLogit, NNGuide, ReAct, ViM)

SETS = ["id_test", "ood_isun", "ood_tinyimagenet", "ood_mnist"]


def fpr95(id_scores, ood_scores):
    """`fpr_and_fdr_at_recall` of the DICE/ReAct code (`get_measures`), step for step: ID
    positive, descending stable order, the curve reversed from the last full-recall point,
    then the point nearest 95 % recall (its tie rule depends on that reversal)."""
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    s = np.r_[id_scores, ood_scores]
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    distinct = np.where(np.diff(s))[0]
    thr = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[thr]
    fps = 1 + thr - tps
    recall = tps / tps[-1]
    last = tps.searchsorted(tps[-1])
    sl = slice(last, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - 0.95))
    return fps[cutoff] / np.sum(1 - y)


def metrics(id_scores, ood_scores):
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    s = np.r_[id_scores, ood_scores]
    return {
        "fpr95": float(fpr95(id_scores, ood_scores)),
        "auroc": float(roc_auc_score(y, s)),
        "aupr_in": float(average_precision_score(y, s)),
        "aupr_out": float(average_precision_score(1 - y, -s)),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    npy = lambda n: np.load(os.path.join(args.fixture, n))
    w = torch.from_numpy(npy("fc_weight.npy")).double()
    b = torch.from_numpy(npy("fc_bias.npy")).double()
    train = torch.from_numpy(npy("id_train_feat.npy")).double()
    labels = torch.from_numpy(npy("id_train_labels.npy"))
    feats = {s: torch.from_numpy(npy(f"{s}_feat.npy")).double() for s in SETS}

    def head(x):
        x = x.flatten(1)
        return x @ w.to(x.dtype).T + b.to(x.dtype)

    ident = lambda x: x
    columns = [line.split(" ", 1) for line in open(os.path.join(args.fixture, "peers_columns.txt")).read().splitlines()]
    rows = []
    for method, params_text in columns:
        params = json.loads(params_text)
        f32 = method in ("mahalanobis", "rmd", "nnguide")
        if method == "maxlogit":
            score = lambda x: MaxLogit.score(head(x))
        elif method == "entropy":
            score = lambda x: Entropy.score(head(x))
        elif method == "gen":
            score = lambda x, g=params["gamma"], m=params["m"]: GEN.score(head(x), gamma=g, M=m)
        elif method.startswith("ash-"):
            d = ASH(backbone=ident, head=head, variant=method, percentile=params["p"] / 100)
            score = lambda x, d=d: d.predict(x[:, :, None, None])
        elif method == "scale":
            d = SCALE(backbone=ident, head=head, percentile=params["p"] / 100)
            score = lambda x, d=d: d.predict(x[:, :, None, None])
        elif method == "react":
            d = ReAct(backbone=ident, head=head, threshold=params["clip"])
            score = lambda x, d=d: d.predict(x[:, :, None, None])
        else:
            d = {
                "knn": lambda: KNN(None, k=params.get("k", 50), normalize=True),
                "vim": lambda: ViM(None, d=params.get("d", 64), w=w, b=b),
                "mahalanobis": lambda: Mahalanobis(None),
                "rmd": lambda: RMD(None),
                "she": lambda: SHE(encoder=ident, head=head),
                "dice": lambda: DICE(encoder=None, w=w, b=b, p=params.get("p", 90) / 100),
                "nnguide": lambda: NNGuide(encoder=ident, head=head, k=params.get("k", 10)),
            }[method]()
            d.fit_features(train.float() if f32 else train, labels)
            score = lambda x, d=d: d.predict_features(x.float() if f32 else x)
        scores = {s: -score(feats[s]).double().numpy() for s in SETS}
        for s in SETS[1:]:
            rows.append({"method": method, "params": params, "ood_set": s[4:], **metrics(scores["id_test"], scores[s])})
    with open(args.out, "w") as f:
        json.dump(rows, f)
    print(f"pytorch-ood: {len(columns)} settings x 3 OOD sets in {time.perf_counter() - start:.2f} s (after imports)")


if __name__ == "__main__":
    main()
