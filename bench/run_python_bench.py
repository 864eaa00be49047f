#!/usr/bin/env python3
"""`just bench-python`: `posthoc.evaluate` from Python next to `posthoc eval --config` (the
CLI) and the numpy baseline (bench/eval_numpy.py) on the same cache, measured in one run.

Every case runs the default config's [[eval.run]] sweep (configs/cifar10-densenet100.toml)
on a cache:
  small  ../shared/fixtures/posthoc-small imported by `posthoc cache import-npy` into
         .bench/posthoc-small/cache (real features; 2,000 ID-train, 1,000 ID-test and
         3 x 500 OOD rows);
  cifar  out/cifar10-densenet100 when `just precompute` made it (or --cifar-cache DIR),
         else the synthetic cache of the CIFAR shape that `just bench-eval` uses.

Sides, each as child processes (interpreter start and imports included), repetitions
alternating the order: the CLI (`posthoc eval --cache C --config X --json F`), Python end to
end (bench/evaluate_python.py --once: import posthoc, one `posthoc.evaluate`, rows to a
file) and numpy. Then one Python process times `--reps` warm calls in process (`as_=
"records"` and `as_="pandas"`), which is compared with the CLI's own elapsed time (its
`done` log line: config, cache open and read, scores, metrics, tables, JSON), so that
"binding overhead" = best Python call - best CLI internal time. Checks: the Python rows
equal the CLI's exactly (same order, every metric), the CLI's agree with numpy's within
--tolerance. Best repetition of each side; ratios from those.
"""

import argparse
import json
import os
import subprocess
import sys
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run_eval_bench import (  # noqa: E402
    CIFAR_CLASSES, CONFIG, METRICS, REAL_CIFAR, ROOT, compare, ensure_synthetic, log,
    parse_posthoc_phases, run_child, warm_page_cache, write_results,
)

SMALL = os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "posthoc-small")


def small_cache(args):
    """posthoc-small imported once into .bench/posthoc-small/cache."""
    cache = os.path.join(args.bench_dir, "posthoc-small", "cache")
    if not os.path.exists(os.path.join(cache, "manifest.json")):
        if not os.path.isdir(SMALL):
            raise SystemExit(f"case small: {SMALL} not found")
        subprocess.run(["rm", "-rf", cache], check=True)
        subprocess.run([args.posthoc, "cache", "import-npy", "--from", SMALL, "--out", cache,
                        "--model-id", "densenet-bc-100-cifar10-dice", "--class-names", CIFAR_CLASSES],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        log(f"[small] imported {SMALL} into {cache}")
    return cache


def cifar_cache(args, version):
    real = os.path.abspath(args.cifar_cache) if args.cifar_cache else os.path.join(ROOT, REAL_CIFAR)
    if os.path.exists(os.path.join(real, "manifest.json")):
        return real, "real"
    if args.cifar_cache:
        raise SystemExit(f"--cifar-cache {args.cifar_cache}: no manifest.json there")
    ns = SimpleNamespace(bench_dir=args.bench_dir, scale=1.0, seed=20240601,
                         python=args.numpy_python, posthoc=args.posthoc)
    return ensure_synthetic(ns, "cifar", version), "synthetic"


def same_rows(py_path, cli_path):
    """The Python records equal the CLI's --json rows, in order, on every metric."""
    with open(py_path) as f:
        got = json.load(f)
    with open(cli_path) as f:
        want = json.load(f)
    if len(got) != len(want) or not want:
        raise ValueError(f"python gave {len(got)} rows, the CLI {len(want)}")
    for g, w in zip(got, want):
        for k in ["method", "ood_set", "n_id", "n_ood", "convention", *METRICS]:
            if g[k] != w[k]:
                raise ValueError(f"python row differs from the CLI's on {k}: {g} vs {w}")
        if {k: g[k] for k in w["params"]} != w["params"]:
            raise ValueError(f"python params differ: {g} vs {w}")
    return len(want)


def run_case(args, name, cache, kind):
    log(f"[{name}] cache {cache} ({kind}); load {os.getloadavg()[0]:.2f}")
    warm_page_cache(cache)
    work = os.path.join(args.bench_dir, "runs-python")
    os.makedirs(work, exist_ok=True)
    ev = ["--cache", cache, "--config", CONFIG]
    sides = {
        "cli": lambda j: [args.posthoc, "eval", *ev, "--json", j],
        "python": lambda j: [args.posthoc_python, os.path.join(HERE, "evaluate_python.py"), *ev, "--once", "--json", j],
        "numpy": lambda j: [args.numpy_python, os.path.join(HERE, "eval_numpy.py"), *ev, "--json", j],
    }
    runs = {s: [] for s in sides}
    internal = []
    for rep in range(args.reps):
        order = list(sides) if rep % 2 == 0 else list(reversed(sides))
        paths = {}
        for side in order:
            j = os.path.join(work, f"{name}-{side}-{rep}.json")
            se = os.path.join(work, f"{name}-{side}-{rep}.stderr")
            code, wall, _, _, _ = run_child(sides[side](j), os.devnull, se)
            if code != 0:
                with open(se, errors="replace") as f:
                    raise RuntimeError(f"[{name}] {side} failed (exit {code}):\n{f.read()[-3000:]}")
            runs[side].append(wall)
            if side == "cli":
                internal.append(parse_posthoc_phases(se).get("done"))
            paths[side] = j
        n = same_rows(paths["python"], paths["cli"])
        worst, _ = compare(paths["cli"], paths["numpy"], args.tolerance)
        log(f"[{name}] rep {rep + 1}/{args.reps}: " + ", ".join(f"{s} {runs[s][-1]:.3f}s" for s in sides)
            + f"; {n} rows equal, numpy max |diff| {worst:.1e}")
    if None in internal:
        raise RuntimeError(f"[{name}] the CLI printed no `done elapsed_ms` log line (POSTHOC_LOG below info?)")
    j = os.path.join(work, f"{name}-inprocess.json")
    out = subprocess.run([args.posthoc_python, os.path.join(HERE, "evaluate_python.py"), *ev,
                          "--reps", str(args.reps), "--json", j], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"[{name}] in-process python failed:\n{out.stderr[-3000:]}")
    inproc = json.loads(out.stdout)
    same_rows(j, paths["cli"])
    best = {s: min(v) for s, v in runs.items()}
    return {
        "case": name, "cache": cache, "kind": kind, "reps": args.reps,
        "cli_s": best["cli"], "cli_internal_s": min(internal), "python_s": best["python"],
        "numpy_s": best["numpy"], "call_records_s": min(inproc["calls_s"]["records"]),
        "call_pandas_s": min(inproc["calls_s"]["pandas"]), "import_posthoc_s": inproc["import_posthoc_s"],
        "import_pandas_s": inproc["import_pandas_s"], "runs": runs, "cli_internal": internal,
        "calls": inproc["calls_s"], "load_1m": os.getloadavg()[0],
    }


def print_results(results):
    ms = lambda s: f"{1000 * s:.1f} ms"  # noqa: E731
    for r in results:
        print(f"== {r['case']}: the default config's sweep on {r['cache']} ({r['kind']}); best of {r['reps']}, "
              f"load {r['load_1m']:.2f}")
        print(f"  in process: posthoc.evaluate (records) {ms(r['call_records_s'])}, (pandas) {ms(r['call_pandas_s'])}"
              f" vs the CLI's own elapsed time {ms(r['cli_internal_s'])}: binding overhead "
              f"{ms(r['call_records_s'] - r['cli_internal_s'])} (records), "
              f"{ms(r['call_pandas_s'] - r['cli_internal_s'])} (pandas); ratio "
              f"{r['call_records_s'] / r['cli_internal_s']:.2f}x")
        print(f"  imports: posthoc {ms(r['import_posthoc_s'])}, pandas {ms(r['import_pandas_s'])}")
        print(f"  end to end (child processes): CLI {r['cli_s']:.3f} s, Python {r['python_s']:.3f} s "
              f"(= {r['python_s'] / r['cli_s']:.2f}x the CLI), numpy {r['numpy_s']:.3f} s")
        print(f"  ratios vs numpy: Python {r['numpy_s'] / r['python_s']:.1f}x faster, "
              f"CLI {r['numpy_s'] / r['cli_s']:.1f}x faster")
        print("  all runs (s): " + "; ".join(f"{s} " + ", ".join(f"{x:.3f}" for x in v) for s, v in r["runs"].items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posthoc", required=True, help="the release posthoc binary")
    ap.add_argument("--posthoc-python", required=True, help="interpreter with the posthoc package (release) and pandas")
    ap.add_argument("--numpy-python", required=True, help="interpreter with numpy, scikit-learn, pyarrow")
    ap.add_argument("--cases", default="small,cifar")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cifar-cache", help=f"the cache of the cifar case (default: {REAL_CIFAR}, else synthetic)")
    ap.add_argument("--bench-dir", default=os.path.join(ROOT, ".bench"))
    ap.add_argument("--tolerance", type=float, default=1e-6)
    ap.add_argument("--results", help="write all measurements as JSON here")
    args = ap.parse_args()
    args.posthoc = os.path.abspath(args.posthoc)
    version = subprocess.run([args.posthoc, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    log(f"{version}; {os.cpu_count()} CPUs; load average {os.getloadavg()}")
    results = []
    try:
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            if case == "small":
                results.append(run_case(args, "small", small_cache(args), "posthoc-small fixture via import-npy"))
            elif case == "cifar":
                cache, kind = cifar_cache(args, version)
                results.append(run_case(args, "cifar", cache, kind))
            else:
                raise SystemExit(f"unknown case {case!r} (small, cifar)")
    except (RuntimeError, ValueError) as e:
        print(f"bench-python FAILED: {e}", file=sys.stderr)
        return 1
    print_results(results)
    write_results(args.results or os.path.join(args.bench_dir, "bench-python-results.json"), version, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
