#!/usr/bin/env python3
"""The numpy baseline of `posthoc eval`: the same sweep on the same Parquet cache.

Reads the cache with pyarrow, computes every score in float64 with vectorised numpy
(row blocks through BLAS matrix products, no Python loop over samples), computes the
metrics with scikit-learn (`roc_auc_score`, `average_precision_score`) and FPR95 the way
HIMPLoS' `get_measures` does, and prints one JSON row per (setting, OOD set) plus the
average over OOD sets, in the shape of `posthoc eval --json`.

Definitions: ../shared/docs/methods.md. Settings come from `--config` (its
`[[eval.run]]` sweeps, expanded like posthoc: cartesian product of p, clip, temperature,
p_a, p_w, defaults for what a run leaves out) or from `--method` and the parameter flags.

Statistics (`--stats`):
  cache      (default) mu and mu_c from the cache's stats.parquet, percentile clips from
             activation_percentiles.parquet (`value_f32`: np.percentile of the float32
             train activations), i.e. exactly what posthoc reads;
  recompute  everything from the id_train split, as the reference code does: mu and mu_c
             with np.mean(..., dtype=float64), clips with np.percentile of the float32
             activations.

Work shared between settings, as a competent script would: the plain logits are computed
once per set and give MSP, MaxLogit, energy at any T and DICE p = 0; each (head, clip) pair
is one pass over the features.

Phase timings go to stderr; `--json FILE` writes the rows there instead of stdout.
"""

import argparse
import json
import os
import sys
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402

T_IMPORTS = time.perf_counter()

BLOCK_ROWS = 8192
COS_EPS = 1e-8


# --------------------------------------------------------------------------- settings

TAKES = {
    "msp": set(),
    "maxlogit": set(),
    "energy": {"temperature"},
    "temp-msp": {"temperature"},
    "react": {"clip"},
    "dice": {"p"},
    "dice-react": {"p", "clip"},
    "line": {"clip", "p_a", "p_w"},
    "himplos": {"p", "clip", "temperature"},
}

DEFAULTS = {
    "energy": {"temperature": [1.0]},
    "temp-msp": {"temperature": [1000.0]},
    "react": {"clip": ["p90"]},
    "dice": {"p": [90.0]},
    "dice-react": {"p": [90.0], "clip": ["p90"]},
    "line": {"clip": [1.0], "p_a": [90.0], "p_w": [90.0]},
    "himplos": {"p": [60.0], "clip": [1.6], "temperature": [1.0]},
}

ORDER = ["p", "clip", "temperature", "p_a", "p_w"]


def parse_clip(v):
    """A clip value: a number, or 'pNN' = that percentile of ID-train activations."""
    if isinstance(v, str):
        v = v.strip()
        if v.lower().startswith("p"):
            return ("pct", float(v[1:]))
        return ("value", float(v))
    return ("value", float(v))


def expand(method, given):
    """Cartesian product of one method's parameter lists (p, clip, T, p_a, p_w)."""
    method = method.strip().lower().replace("_", "-")
    if method not in TAKES:
        raise SystemExit(f"unknown method {method!r}")
    lists = []
    for key in ORDER:
        if key not in TAKES[method]:
            lists.append([None])
        elif given.get(key):
            lists.append(given[key])
        else:
            lists.append(DEFAULTS[method][key])
    out = [{"method": method}]
    for key, values in zip(ORDER, lists):
        nxt = []
        for s in out:
            for v in values:
                t = dict(s)
                if v is not None:
                    t[key] = parse_clip(v) if key == "clip" else float(v)
                nxt.append(t)
        out = nxt
    return out


def as_list(v):
    if v is None:
        return None
    return v if isinstance(v, list) else [v]


def settings_from_config(path):
    import tomllib

    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    out = []
    for run in cfg.get("eval", {}).get("run", []):
        given = {k: as_list(run.get(k)) for k in ORDER}
        out.extend(expand(run["method"], given))
    return out, cfg


def settings_from_flags(args):
    def lst(s):
        return None if s is None else [x.strip() for x in s.split(",")]

    given = {
        "p": lst(args.p),
        "clip": lst(args.clip),
        "temperature": lst(args.temperature),
        "p_a": lst(args.p_a),
        "p_w": lst(args.p_w),
    }
    out = []
    for m in args.method.split(","):
        out.extend(expand(m, given))
    return out


# --------------------------------------------------------------------------- cache I/O


def fsl_to_numpy(column, width, dtype):
    """A (chunked) fixed-size-list column as an (n, width) numpy array."""
    chunks = column.chunks
    if len(chunks) == 1:
        return chunks[0].flatten().to_numpy().reshape(-1, width)
    out = np.empty((len(column), width), dtype=dtype)
    row = 0
    for ch in chunks:
        n = len(ch)
        out[row : row + n] = ch.flatten().to_numpy().reshape(n, width)
        row += n
    return out


class Cache:
    def __init__(self, path):
        self.dir = path
        with open(os.path.join(path, "manifest.json")) as f:
            self.manifest = json.load(f)
        self.m = self.manifest["model"]["feature_dim"]
        self.c = self.manifest["model"]["num_classes"]
        self.files = {}
        for e in self.manifest["files"]:
            if e["role"] in ("id_train", "id_test", "ood"):
                self.files[e["set"]] = e

    def sets(self, role):
        return [e["set"] for e in self.manifest["files"] if e["role"] == role]

    def read_split(self, name, labels=False):
        e = self.files[name]
        cols = ["feature", "label"] if labels else ["feature"]
        t = pq.read_table(os.path.join(self.dir, e["name"]), columns=cols)
        feats = fsl_to_numpy(t.column("feature"), self.m, np.float32)
        lab = t.column("label").to_numpy().astype(np.int64) if labels else None
        return feats, lab

    def head(self):
        t = pq.read_table(os.path.join(self.dir, "head.parquet"))
        order = np.argsort(t.column("class").to_numpy())
        w = fsl_to_numpy(t.column("weight"), self.m, np.float32)[order]
        b = t.column("bias").to_numpy()[order]
        return w, b

    def stats(self):
        """mu (m), mu_c (C x m) from stats.parquet; row class -1 is all rows."""
        t = pq.read_table(os.path.join(self.dir, "stats.parquet"), columns=["class", "mean"])
        cls = t.column("class").to_numpy()
        mean = fsl_to_numpy(t.column("mean"), self.m, np.float64)
        mu = mean[cls == -1][0]
        idx = np.argsort(cls)
        cls, mean = cls[idx], mean[idx]
        return mu, mean[cls >= 0]

    def percentile_grid(self):
        t = pq.read_table(os.path.join(self.dir, "activation_percentiles.parquet"))
        return t.column("q").to_numpy(), t.column("value_f32").to_numpy()


class Stats:
    """mu, mu_c and ID-train activation percentiles, from the cache or recomputed."""

    def __init__(self, cache, mode):
        self.cache, self.mode = cache, mode
        self._train = None
        if mode == "cache":
            self.mu, self.class_means = cache.stats()
            self.grid_q, self.grid_v = cache.percentile_grid()
        else:
            train, labels = self.train()
            self.mu = train.mean(axis=0, dtype=np.float64)
            order = np.argsort(labels, kind="stable")
            counts = np.bincount(labels, minlength=cache.c)
            starts = np.r_[0, np.cumsum(counts)[:-1]]
            sums = np.zeros((cache.c, cache.m))
            nz = counts > 0
            sums[nz] = np.add.reduceat(train[order].astype(np.float64), starts[nz], axis=0)
            self.class_means = sums / np.maximum(counts, 1)[:, None]

    def train(self):
        if self._train is None:
            name = self.cache.sets("id_train")[0]
            self._train = self.cache.read_split(name, labels=True)
        return self._train

    def activation_percentile(self, q):
        """np.percentile of all float32 ID-train activations, as a Python float."""
        if self.mode == "cache":
            k = np.nonzero(np.isclose(self.grid_q, q, rtol=0, atol=1e-9))[0]
            if len(k):
                return float(self.grid_v[k[0]])
        return float(np.percentile(self.train()[0], q))


# --------------------------------------------------------------------------- scores


def energy(z, t=1.0):
    """T * logsumexp(z / T), row-wise, shifted by max z."""
    zmax = z.max(axis=1)
    s = zmax / t
    return t * (s + np.log(np.exp(z / t - s[:, None]).sum(axis=1)))


def max_softmax(z, t=1.0):
    zmax = z.max(axis=1)
    return 1.0 / np.exp((z - zmax[:, None]) / t).sum(axis=1)


def logit_score(kind, t, z):
    if kind == "msp":
        return max_softmax(z, 1.0)
    if kind == "maxlogit":
        return z.max(axis=1)
    if kind == "energy":
        return energy(z, t)
    if kind == "temp-msp":
        return max_softmax(z, t)
    raise ValueError(kind)


def linear_pass(feats, w, b, clip, scores):
    """For row blocks: x = min(h, clip) in f64, z = x W^T + b, the requested scores and
    argmax z. Returns ({score key: values}, predicted)."""
    n = feats.shape[0]
    out = {k: np.empty(n) for k in scores}
    pred = np.empty(n, dtype=np.int64)
    wt = np.ascontiguousarray(w.T)
    for s in range(0, n, BLOCK_ROWS):
        x = feats[s : s + BLOCK_ROWS].astype(np.float64)
        if clip is not None:
            np.minimum(x, clip, out=x)
        z = x @ wt
        z += b
        for k in scores:
            out[k][s : s + BLOCK_ROWS] = logit_score(k[0], k[1], z)
        pred[s : s + BLOCK_ROWS] = z.argmax(axis=1)
    return out, pred


def dice_heads(w, mu, ps):
    """DICE: V = mu * W, M = V > percentile(V, p); p = 0 is the plain head."""
    v = mu[None, :] * w
    heads = {}
    for p in ps:
        if p == 0:
            heads[p] = w
        else:
            heads[p] = w * (v > np.percentile(v, p))
    return heads


def line_masks(w, class_means, p_a, p_w):
    """LINe: S = mu_c * W; A[c] = S[c] > pct(S[c], p_a);
    B[c] = |S[c]|[None, :] * W > pct(that, p_w) (over all C*m entries)."""
    s = class_means * w
    a = s > np.percentile(s, p_a, axis=1, keepdims=True)
    abs_s = np.abs(s)
    c = w.shape[0]
    b = np.empty((c,) + w.shape, dtype=bool)
    step = max(1, (1 << 24) // w.size)  # classes per batch: at most ~16M products
    for c0 in range(0, c, step):
        prod = abs_s[c0 : c0 + step, None, :] * w[None, :, :]
        t = np.percentile(prod.reshape(prod.shape[0], -1), p_w, axis=1)
        b[c0 : c0 + step] = prod > t[:, None, None]
    return a, b


def line_scores(feats, w, b, clip, a, bmask):
    """LINe: h' = min(h, clip), k = argmax(W h' + b), z = (W*B[k]) (h'*A[k]) + b, energy."""
    _, k = linear_pass(feats, w, b, clip, [])
    n = feats.shape[0]
    score, pred = np.empty(n), np.empty(n, dtype=np.int64)
    for c in np.unique(k):
        rows = np.nonzero(k == c)[0]
        x = np.minimum(feats[rows].astype(np.float64), clip) * a[c]
        z = x @ (w * bmask[c]).T + b
        score[rows] = energy(z, 1.0)
        pred[rows] = z.argmax(axis=1)
    return score, pred


def himplos_scores(feats, w, b, k, clip, t, p, class_means):
    """HIMPLoS: Mh = W >= rowwise pct(W, p); k = argmax of the plain head; g = min(h*Mh[k], clip);
    z = (W g + b) * cos(h, mu_k); T * logsumexp(z / T)."""
    mh = w >= np.percentile(w, p, axis=1, keepdims=True)
    proto_norm = np.maximum(np.linalg.norm(class_means, axis=1), COS_EPS)
    wt = np.ascontiguousarray(w.T)
    n = feats.shape[0]
    score, pred = np.empty(n), np.empty(n, dtype=np.int64)
    for s in range(0, n, BLOCK_ROWS):
        h = feats[s : s + BLOCK_ROWS].astype(np.float64)
        kk = k[s : s + BLOCK_ROWS]
        g = np.minimum(h * mh[kk], clip)
        cos = np.einsum("ij,ij->i", h, class_means[kk]) / (
            np.maximum(np.linalg.norm(h, axis=1), COS_EPS) * proto_norm[kk]
        )
        z = (g @ wt + b) * cos[:, None]
        score[s : s + BLOCK_ROWS] = energy(z, t)
        pred[s : s + BLOCK_ROWS] = z.argmax(axis=1)
    return score, pred


# --------------------------------------------------------------------------- metrics


def fpr_at_95_tpr(labels, scores, recall_level=0.95):
    """FPR at 95% TPR as HIMPLoS' get_measures (Hendrycks et al.) computes it."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    s, y = scores[order], labels[order].astype(bool)
    distinct = np.nonzero(np.diff(s))[0]
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y, dtype=np.float64)[idx]
    fps = 1 + idx - tps
    recall = tps / tps[-1]
    last = tps.searchsorted(tps[-1])
    sl = slice(last, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return fps[cutoff] / np.sum(~y)


def metrics(s_in, s_out):
    scores = np.concatenate([s_in, s_out])
    labels = np.zeros(scores.size, dtype=np.int32)
    labels[: s_in.size] = 1
    return {
        "fpr95": float(fpr_at_95_tpr(labels, scores)),
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr_in": float(average_precision_score(labels, scores)),
        "aupr_out": float(average_precision_score(1 - labels, -scores)),
    }


# --------------------------------------------------------------------------- driver


def params_json(s, clip_value):
    out = {}
    if "p" in s:
        out["p"] = s["p"]
    if "clip" in s:
        kind, v = s["clip"]
        out["clip"] = clip_value
        if kind == "pct":
            out["clip_percentile"] = v
    if "temperature" in s:
        out["temperature"] = s["temperature"]
    if "p_a" in s:
        out["p_a"] = s["p_a"]
    if "p_w" in s:
        out["p_w"] = s["p_w"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--config")
    ap.add_argument("--method")
    ap.add_argument("--p")
    ap.add_argument("--clip")
    ap.add_argument("--temperature")
    ap.add_argument("--p-a", dest="p_a")
    ap.add_argument("--p-w", dest="p_w")
    ap.add_argument("--ood", help="OOD sets, comma separated (default: the config's, else all)")
    ap.add_argument("--stats", choices=["cache", "recompute"], default="cache")
    ap.add_argument("--json", help="write the rows here (default: stdout)")
    args = ap.parse_args()

    cfg = {}
    if args.method:
        settings = settings_from_flags(args)
    elif args.config:
        settings, cfg = settings_from_config(args.config)
    else:
        raise SystemExit("give --method or --config")
    if not settings:
        raise SystemExit("no settings")

    phases = {"imports": T_IMPORTS - T0}
    t = time.perf_counter()
    cache = Cache(args.cache)
    ood_names = (
        args.ood.split(",") if args.ood else cfg.get("eval", {}).get("ood") or cache.sets("ood")
    )
    id_name = cache.sets("id_test")[0]
    w32, b32 = cache.head()
    w, b = w32.astype(np.float64), b32.astype(np.float64)
    stats = Stats(cache, args.stats)
    id_feats, id_labels = cache.read_split(id_name, labels=True)
    sets = [(id_name, id_feats)] + [(n, cache.read_split(n)[0]) for n in ood_names]
    phases["read"] = time.perf_counter() - t

    t = time.perf_counter()
    # Resolve clips; group settings into passes.
    clips = []
    for s in settings:
        if "clip" in s:
            kind, v = s["clip"]
            clips.append(stats.activation_percentile(v) if kind == "pct" else v)
        else:
            clips.append(None)
    dice_ps = sorted({s["p"] for s in settings if s["method"] in ("dice", "dice-react")})
    heads = {("plain",): w}
    if dice_ps:
        for p, wm in dice_heads(w, stats.mu, dice_ps).items():
            heads[("dice", p)] = w if p == 0 else wm
    line_cache, linear = {}, {}
    for s, c in zip(settings, clips):
        m = s["method"]
        if m in ("msp", "maxlogit", "energy", "temp-msp", "react"):
            head = ("plain",)
        elif m in ("dice", "dice-react"):
            head = ("plain",) if s["p"] == 0 else ("dice", s["p"])
        else:
            if m == "line" and (s["p_a"], s["p_w"]) not in line_cache:
                line_cache[(s["p_a"], s["p_w"])] = line_masks(w, stats.class_means, s["p_a"], s["p_w"])
            continue
        kind = {"react": "energy", "dice": "energy", "dice-react": "energy"}.get(m, m)
        temp = s.get("temperature", 1.0)
        linear.setdefault((head, c if m in ("react", "dice-react") else None), set()).add((kind, temp))
    need_plain_pred = any(s["method"] == "himplos" for s in settings)
    if need_plain_pred:
        linear.setdefault((("plain",), None), set())
    phases["masks"] = time.perf_counter() - t

    t = time.perf_counter()
    results = []  # per set: {pass key: (scores dict, pred)}
    for _, feats in sets:
        done = {}
        for (head, clip), kinds in linear.items():
            done[(head, clip)] = linear_pass(feats, heads[head], b, clip, sorted(kinds))
        results.append(done)
    per_setting = []  # (scores per set, id pred)
    for s, c in zip(settings, clips):
        m = s["method"]
        if m == "line":
            a, bm = line_cache[(s["p_a"], s["p_w"])]
            got = [line_scores(f, w, b, c, a, bm) for _, f in sets]
        elif m == "himplos":
            got = [
                himplos_scores(f, w, b, r[(("plain",), None)][1], c, s["temperature"], s["p"], stats.class_means)
                for (_, f), r in zip(sets, results)
            ]
        else:
            head = ("plain",) if m in ("msp", "maxlogit", "energy", "temp-msp", "react") or s.get("p") == 0 else ("dice", s["p"])
            key = (head, c if m in ("react", "dice-react") else None)
            kind = {"react": "energy", "dice": "energy", "dice-react": "energy"}.get(m, m)
            sk = (kind, s.get("temperature", 1.0))
            got = [(r[key][0][sk], r[key][1]) for r in results]
        per_setting.append(got)
    phases["score"] = time.perf_counter() - t

    t = time.perf_counter()
    rows = []
    for s, c, got in zip(settings, clips, per_setting):
        s_id, pred_id = got[0]
        acc = float(np.mean(pred_id == id_labels))
        params = params_json(s, c)
        per = []
        for (name, feats), (s_out, _) in zip(sets[1:], got[1:]):
            r = {"method": s["method"], "params": params, "id_set": id_name, "ood_set": name,
                 "n_id": int(s_id.size), "n_ood": int(s_out.size)}
            r.update(metrics(s_id, s_out))
            r["id_accuracy"] = acc
            r["convention"] = "sklearn"
            per.append(r)
        avg = dict(per[0])
        avg["ood_set"] = "average"
        avg["n_ood"] = sum(r["n_ood"] for r in per)
        for k in ("fpr95", "auroc", "aupr_in", "aupr_out"):
            avg[k] = sum(r[k] for r in per) / len(per)
        rows.extend(per)
        rows.append(avg)
    phases["metrics"] = time.perf_counter() - t

    text = json.dumps(rows, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    else:
        print(text)
    phases["total"] = time.perf_counter() - T0
    print("eval_numpy phases (s): " + " ".join(f"{k}={v:.3f}" for k, v in phases.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
