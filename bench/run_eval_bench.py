#!/usr/bin/env python3
"""`just bench-eval`: wall time and peak RSS of `posthoc eval` next to the same
computation in numpy (bench/eval_numpy.py), measured in one run, with a check that both
sides agree on every metric.

Cases:
  cifar     the default config's 13 [[eval.run]] settings (configs/cifar10-densenet100.toml)
            on the real cache out/cifar10-densenet100 when it exists, else on a synthetic
            cache of the CIFAR shape (m = 342, C = 10; 10,000 ID test + OOD sets of
            8,925 / 5,000 / 2,000 / 120 rows; 50,000 ID train rows for the statistics);
  imagenet  `--method dice --p 10,20,...,90` on a synthetic cache of the ImageNet shape
            (m = 2048, C = 1000; 50,000 ID test + 4 OOD sets of 10,000; 20,000 ID train).

Synthetic caches are generated once (bench/make_synthetic.py, then `posthoc cache
import-npy`) under .bench/ and reused while the generator, its arguments, the posthoc
version and the cache writer's sources (cache/src/{schema,writer,import}.rs) stay the same.

Each side runs as a child process, end to end (interpreter start and imports, cache read,
scores, metrics, JSON written); wall time from fork to exit, peak RSS and CPU time from
wait4(). Repetitions alternate which side goes first. The ratio is numpy / posthoc on the
best (fastest) repetition of each. Exit status 1 when a run fails or the two sides differ
by more than --tolerance on any metric, ID accuracy or resolved clip.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "bench")
CONFIG = "configs/cifar10-densenet100.toml"
REAL_CIFAR = "out/cifar10-densenet100"
METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out", "id_accuracy")
CIFAR_CLASSES = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck"
DICE_PS = "10,20,30,40,50,60,70,80,90"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


class RssSampler:
    """Samples VmRSS of a running process every `period` seconds (for --rss-timeline)."""

    def __init__(self, pid, period=0.02):
        import threading

        self.pid, self.period, self.samples = pid, period, []
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        path = f"/proc/{self.pid}/status"
        while not self._stop.is_set():
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            self.samples.append((time.perf_counter() - self.t0, int(line.split()[1]) * 1024))
                            break
            except OSError:
                return
            self._stop.wait(self.period)

    def stop(self):
        self._stop.set()
        self._thread.join()

    def peak_between(self, t0, t1):
        inside = [rss for t, rss in self.samples if t0 <= t < t1]
        return max(inside) if inside else None


def run_child(cmd, stdout_path, stderr_path, env=None, sample_rss=False):
    """Runs cmd; returns (exit code, wall s, peak RSS bytes, user+sys CPU s, RssSampler or None)."""
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env)
        sampler = RssSampler(p.pid) if sample_rss else None
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        if sampler:
            sampler.stop()
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, wall, ru.ru_maxrss * 1024, ru.ru_utime + ru.ru_stime, sampler


def ensure_synthetic(args, shape, posthoc_version):
    """The synthetic cache of `shape` under .bench/, generated when missing or stale."""
    base = os.path.join(args.bench_dir, f"{shape}" + ("" if args.scale == 1 else f"-x{args.scale:g}"))
    cache = os.path.join(base, "cache")
    stamp_path = os.path.join(base, "stamp.json")
    stamp = {
        "generator_sha256": sha256_of(os.path.join(HERE, "make_synthetic.py")),
        "shape": shape,
        "scale": args.scale,
        "seed": args.seed,
        "posthoc": posthoc_version,
        # The on-disk encoding is decided by these files: regenerate when they change.
        "cache_writer_sha256": {
            f: sha256_of(os.path.join(ROOT, "cache", "src", f))
            for f in ("schema.rs", "writer.rs", "import.rs")
            if os.path.exists(os.path.join(ROOT, "cache", "src", f))
        },
    }
    if os.path.exists(os.path.join(cache, "manifest.json")) and os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                log(f"[{shape}] reusing {cache}")
                return cache
    log(f"[{shape}] generating a synthetic cache in {base} (once)")
    shutil.rmtree(base, ignore_errors=True)
    npy = os.path.join(base, "npy")
    t = time.perf_counter()
    subprocess.run(
        [args.python, os.path.join(HERE, "make_synthetic.py"), "--shape", shape, "--out", npy,
         "--seed", str(args.seed), "--scale", str(args.scale)],
        check=True, cwd=ROOT,
    )
    imp = [args.posthoc, "cache", "import-npy", "--from", npy, "--out", cache,
           "--model-id", f"synthetic-{shape}-shape"]
    if shape == "cifar":
        imp += ["--class-names", CIFAR_CLASSES]
    subprocess.run(imp, check=True, cwd=ROOT)
    shutil.rmtree(npy)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f, indent=1)
    log(f"[{shape}] generated and imported in {time.perf_counter() - t:.1f}s")
    return cache


def cache_facts(cache):
    """(rows x m of the scored sets, raw f32 feature bytes of the scored sets, m, C, rows per set)."""
    with open(os.path.join(cache, "manifest.json")) as f:
        man = json.load(f)
    m, c = man["model"]["feature_dim"], man["model"]["num_classes"]
    rows = {e["set"]: (e["role"], e["rows"]) for e in man["files"] if e["role"] in ("id_test", "ood", "id_train")}
    scored = sum(n for role, n in rows.values() if role in ("id_test", "ood"))
    return scored, scored * m * 4, m, c, rows


def warm_page_cache(cache):
    for name in os.listdir(cache):
        path = os.path.join(cache, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def row_key(r):
    p = dict(r["params"])
    if "clip_percentile" in p:
        p.pop("clip")
    return (r["method"], tuple(sorted((k, round(float(v), 9)) for k, v in p.items())), r["ood_set"])


def compare(ours_path, numpy_path, tol):
    """Max abs difference over all rows; raises on a missing row or a difference > tol."""
    with open(ours_path) as f:
        ours = {row_key(r): r for r in json.load(f)}
    with open(numpy_path) as f:
        theirs = {row_key(r): r for r in json.load(f)}
    if ours.keys() != theirs.keys():
        only = sorted(set(ours) ^ set(theirs))[:5]
        raise ValueError(f"the two sides report different rows, e.g. {only}")
    worst, bad = 0.0, []
    for k, a in ours.items():
        b = theirs[k]
        pairs = [(m, a[m], b[m]) for m in METRICS]
        if "clip" in a["params"]:
            pairs.append(("clip", a["params"]["clip"], b["params"]["clip"]))
        for name, x, y in pairs:
            d = abs(float(x) - float(y))
            worst = max(worst, d)
            if not d <= tol:
                bad.append(f"{k} {name}: posthoc {x!r} numpy {y!r}")
    if bad:
        raise ValueError(f"{len(bad)} values differ by more than {tol:g}:\n  " + "\n  ".join(bad[:20]))
    return worst, len(ours)


def parse_posthoc_phases(stderr_path):
    """Cumulative elapsed_ms of the eval command's `cache read`, `scored` and `done` log lines."""
    out = {}
    with open(stderr_path, errors="replace") as f:
        for line in f:
            m = re.search(r"INFO (cache read|scored|done)\b.*elapsed_ms=(\d+)", line)
            if m:
                out[m.group(1)] = int(m.group(2)) / 1000
    return out


def parse_numpy_phases(stderr_path):
    with open(stderr_path, errors="replace") as f:
        for line in f:
            if line.startswith("eval_numpy phases (s):"):
                return {k: float(v) for k, v in (kv.split("=") for kv in line.split(":", 1)[1].split())}
    return {}


def run_case(args, name, cache, eval_args, reps, workdir):
    scored, raw, m, c, rows = cache_facts(cache)
    log(f"[{name}] cache {cache}: scored {scored} rows x {m}, C = {c}; load {os.getloadavg()[0]:.2f}")
    warm_page_cache(cache)
    ours_cmd = [args.posthoc, "eval", "--cache", cache] + eval_args
    np_cmd = [args.python, os.path.join(HERE, "eval_numpy.py"), "--cache", cache] + eval_args
    runs = {"numpy": [], "posthoc": []}
    worst = 0.0
    loads = [os.getloadavg()[0]]
    for rep in range(reps):
        order = ["numpy", "posthoc"] if rep % 2 == 0 else ["posthoc", "numpy"]
        outs = {}
        for side in order:
            json_path = os.path.join(workdir, f"{name}-{side}-{rep}.json")
            base = [*(ours_cmd if side == "posthoc" else np_cmd), "--json", json_path]
            so = os.path.join(workdir, f"{name}-{side}-{rep}.stdout")
            se = os.path.join(workdir, f"{name}-{side}-{rep}.stderr")
            code, wall, rss, cpu, sampler = run_child(base, so, se, sample_rss=args.rss_timeline and side == "posthoc")
            if code != 0:
                with open(se, errors="replace") as f:
                    tail = f.read()[-3000:]
                raise RuntimeError(f"[{name}] {side} failed (exit {code}): {' '.join(base)}\n{tail}")
            phases = parse_posthoc_phases(se) if side == "posthoc" else parse_numpy_phases(se)
            runs[side].append({"wall_s": wall, "peak_rss": rss, "cpu_s": cpu, "phases": phases})
            if sampler and phases:
                bounds = [0.0] + [phases[k] for k in ("cache read", "scored", "done") if k in phases] + [wall]
                names = ["until cache read", "scoring + metrics", "report", "exit"]
                peaks = {n: sampler.peak_between(a, b) for n, a, b in zip(names, bounds, bounds[1:])}
                runs[side][-1]["rss_by_phase"] = peaks
                log(f"[{name}] posthoc peak RSS by phase (sampled every 20 ms): "
                    + ", ".join(f"{n} {mib(v)}" for n, v in peaks.items() if v))
            outs[side] = json_path
            log(f"[{name}] rep {rep + 1}/{reps} {side:7s} {wall:8.3f}s  rss {rss / 2**20:7.1f} MiB  cpu {cpu:7.2f}s  {phases}")
            loads.append(os.getloadavg()[0])
        d, n = compare(outs["posthoc"], outs["numpy"], args.tolerance)
        worst = max(worst, d)
    best = {side: min(r, key=lambda x: x["wall_s"]) for side, r in runs.items()}
    result = {
        "case": name,
        "cache": cache,
        "shape": f"{scored} x {m}, C={c}",
        "rows": rows,
        "command_posthoc": " ".join(ours_cmd),
        "command_numpy": " ".join(np_cmd),
        "reps": reps,
        "numpy_s": best["numpy"]["wall_s"],
        "posthoc_s": best["posthoc"]["wall_s"],
        "ratio": best["numpy"]["wall_s"] / best["posthoc"]["wall_s"],
        "cpu_ratio": min(r["cpu_s"] for r in runs["numpy"]) / min(r["cpu_s"] for r in runs["posthoc"]),
        "posthoc_peak_rss": max(r["peak_rss"] for r in runs["posthoc"]),
        "numpy_peak_rss": max(r["peak_rss"] for r in runs["numpy"]),
        "raw_feature_bytes": raw,
        "rss_over_raw": max(r["peak_rss"] for r in runs["posthoc"]) / raw,
        "max_abs_diff": worst,
        "rows_compared": n,
        "loadavg_1m": loads,
        "runs": runs,
    }
    if name in args.recompute_check.split(","):
        json_path = os.path.join(workdir, f"{name}-numpy-recompute.json")
        se = os.path.join(workdir, f"{name}-numpy-recompute.stderr")
        code, wall, rss, _, _ = run_child(np_cmd + ["--stats", "recompute", "--json", json_path],
                                          os.devnull, se)
        if code != 0:
            raise RuntimeError(f"[{name}] numpy --stats recompute failed, see {se}")
        d, _ = compare(outs["posthoc"], json_path, args.tolerance)
        result["recompute_check"] = {"wall_s": wall, "max_abs_diff": d}
        log(f"[{name}] numpy with statistics recomputed from id_train: {wall:.3f}s, agrees (max diff {d:.2e})")
    return result


def mib(b):
    return f"{b / 2**20:.0f} MiB"


def print_table(results):
    head = ["case", "shape (scored rows x m)", "numpy s", "posthoc s", "ratio", "CPU-s ratio", "posthoc peak RSS",
            "raw feat bytes", "RSS/raw", "max |diff|"]
    rows = [[r["case"], r["shape"], f"{r['numpy_s']:.3f}", f"{r['posthoc_s']:.3f}", f"{r['ratio']:.1f}x", f"{r['cpu_ratio']:.1f}x",
             mib(r["posthoc_peak_rss"]), mib(r["raw_feature_bytes"]), f"{r['rss_over_raw']:.2f}",
             f"{r['max_abs_diff']:.1e}"] for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    print(line(head))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))
    for r in results:
        print(f"\n{r['case']}: best of {r['reps']}; all runs (s): numpy "
              + ", ".join(f"{x['wall_s']:.3f}" for x in r["runs"]["numpy"])
              + "; posthoc " + ", ".join(f"{x['wall_s']:.3f}" for x in r["runs"]["posthoc"]))
        bp = min(r["runs"]["posthoc"], key=lambda x: x["wall_s"])
        bn = min(r["runs"]["numpy"], key=lambda x: x["wall_s"])
        print(f"  posthoc phases (cumulative s): {bp['phases']}; cpu {bp['cpu_s']:.2f}s")
        print(f"  numpy phases (s): {bn['phases']}; cpu {bn['cpu_s']:.2f}s; peak RSS {mib(r['numpy_peak_rss'])}")
        print(f"  load average (1 min) during the case: {', '.join(f'{x:.2f}' for x in r['loadavg_1m'])}")
        print(f"  posthoc: {r['command_posthoc']}")


def write_results(path, version, results):
    """All measurements as JSON at `path`, with the posthoc version and the CPU count."""
    with open(path, "w") as f:
        json.dump({"posthoc": version, "cpus": os.cpu_count(), "results": results}, f, indent=1)
    print(f"\nall measurements: {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posthoc", required=True, help="the release posthoc binary")
    ap.add_argument("--python", default=sys.executable, help="interpreter with numpy, scikit-learn, pyarrow")
    ap.add_argument("--cases", default="cifar,imagenet")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the cifar case")
    ap.add_argument("--reps-imagenet", type=int, default=2, help="repetitions of the imagenet case")
    ap.add_argument("--bench-dir", default=os.path.join(ROOT, ".bench"))
    ap.add_argument("--scale", type=float, default=1.0, help="row-count factor of synthetic caches (trials)")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--synthetic-cifar", action="store_true", help=f"ignore a real {REAL_CIFAR}")
    ap.add_argument("--cifar-cache", help=f"use this cache for the cifar case (default: {REAL_CIFAR} if present)")
    ap.add_argument("--tolerance", type=float, default=1e-6)
    ap.add_argument("--recompute-check", default="cifar",
                    help="cases (comma separated, or 'none') that get one extra, untimed-for-the-ratio numpy run "
                         "with the statistics recomputed from id_train instead of read from the cache")
    ap.add_argument("--results", help="write all measurements as JSON here")
    ap.add_argument("--rss-timeline", action="store_true",
                    help="sample posthoc's RSS every 20 ms and report the peak of each logged phase")
    args = ap.parse_args()
    args.posthoc = os.path.abspath(args.posthoc)
    version = subprocess.run([args.posthoc, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    workdir = os.path.join(args.bench_dir, "runs")
    os.makedirs(workdir, exist_ok=True)
    log(f"{version}; {os.cpu_count()} CPUs; load average {os.getloadavg()}")

    results = []
    try:
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            if case == "cifar":
                real = os.path.abspath(args.cifar_cache) if args.cifar_cache else os.path.join(ROOT, REAL_CIFAR)
                if args.cifar_cache and not os.path.exists(os.path.join(real, "manifest.json")):
                    raise SystemExit(f"--cifar-cache {args.cifar_cache}: no manifest.json there")
                if not args.synthetic_cifar and os.path.exists(os.path.join(real, "manifest.json")):
                    cache = real
                    log(f"[cifar] using the cache {real}")
                else:
                    cache = ensure_synthetic(args, "cifar", version)
                results.append(run_case(args, "cifar", cache, ["--config", CONFIG], args.reps, workdir))
            elif case == "imagenet":
                cache = ensure_synthetic(args, "imagenet", version)
                results.append(run_case(args, "imagenet", cache, ["--method", "dice", "--p", DICE_PS],
                                        args.reps_imagenet, workdir))
            else:
                raise SystemExit(f"unknown case {case!r} (cifar, imagenet)")
    except (RuntimeError, ValueError) as e:
        print(f"bench-eval FAILED: {e}", file=sys.stderr)
        return 1
    print_table(results)
    write_results(args.results or os.path.join(args.bench_dir, "bench-eval-results.json"), version, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
