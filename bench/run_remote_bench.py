#!/usr/bin/env python3
"""`just bench-remote`: the two ways to read a cache from an object store, measured on a
bucket-sized cache in one run (issue 11): the content-addressed download cache (what
`posthoc eval --cache s3://...` uses) against Parquet range reads, on a real S3 API
(moto's server on 127.0.0.1, started here; no WAN latency or bandwidth cap: loopback).

Steps: start the server, upload the cache with `posthoc cache copy`, then each in its own
process (peak RSS its own): `download` cold (empty POSTHOC_CACHE_DIR), `download` warm
(the same directory again), `range` (twice: it has no reuse), and a local read of the same
sets for reference; finally `posthoc eval --method energy` cold and warm from s3:// and
locally. Prints seconds, bytes fetched and peak RSS per case.

Usage: run_remote_bench.py --posthoc BIN --example REMOTE_READ --moto-python PY --cache DIR [--sets a,b]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd, env):
    """(seconds, peak RSS bytes, stdout) of one child, through a python wrapper that reports
    its own child's ru_maxrss (so every case's peak is its own)."""
    wrapper = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "dt = time.perf_counter() - t; sys.stderr.write(p.stderr); "
               "print(json.dumps({'rc': p.returncode, 's': dt, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, 'out': p.stdout}))")
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, capture_output=True, text=True)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if r["rc"] != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return r["s"], r["rss"], r["out"]


def mib(b):
    return f"{b / 2**20:.0f} MiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--posthoc", required=True)
    ap.add_argument("--example", required=True)
    ap.add_argument("--moto-python", required=True)
    ap.add_argument("--cache", required=True, help="a local cache to upload")
    ap.add_argument("--sets", default=None, help="sets to read (default: ID test and every OOD set)")
    args = ap.parse_args()
    manifest = json.load(open(os.path.join(args.cache, "manifest.json")))
    files = manifest["files"]
    if args.sets:
        sets = args.sets.split(",")
    else:
        sets = [set_of(f) for f in files if f["role"] in ("id_test", "ood")]
    total = sum(f["bytes"] for f in files)
    scored = sum(f["bytes"] for f in files if f["role"] in ("id_test", "ood") and set_of(f) in sets)
    print(f"cache {args.cache}: {len(files)} files, {mib(total)}; scored sets {','.join(sets)}: {mib(scored)} of files")

    server = subprocess.Popen([args.moto_python, os.path.join(ROOT, "scripts", "s3-test-server.py"), "bench"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(server.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="posthoc-bench-remote-") as tmp:
            env = dict(os.environ, AWS_ACCESS_KEY_ID=info["access_key_id"],
                       AWS_SECRET_ACCESS_KEY=info["secret_access_key"], AWS_REGION=info["region"],
                       AWS_ENDPOINT_URL=info["endpoint"], AWS_ALLOW_HTTP="true",
                       POSTHOC_CACHE_DIR=os.path.join(tmp, "dl"), POSTHOC_LOG="warn")
            url = "s3://bench/imagenet"
            s, _, _ = timed([args.posthoc, "cache", "copy", args.cache, url], env)
            print(f"upload (posthoc cache copy, verified): {s:.1f} s")
            rows = []
            local_env = dict(env, POSTHOC_CACHE_DIR=os.path.join(tmp, "unused"))
            for name, cmd, e in [
                ("download, cold", [args.example, "download", url, ",".join(sets)], env),
                ("download, warm", [args.example, "download", url, ",".join(sets)], env),
                ("range reads", [args.example, "range", url, ",".join(sets)], env),
                ("range reads, again", [args.example, "range", url, ",".join(sets)], env),
            ]:
                s, rss, out = timed(cmd, e)
                fetched = int(out.split(", ")[-1].split()[0])
                rows.append((name, s, fetched, rss))
            for name, s, fetched, rss in rows:
                print(f"  read {name:<20} {s:7.2f} s  fetched {mib(fetched):>9}  peak RSS {mib(rss)}")
            print("  posthoc eval --method energy (head, stats and every scored set):")
            subprocess.run(["rm", "-rf", os.path.join(tmp, "dl")], check=True)
            for name, loc, e in [("s3://, cold", url, env), ("s3://, warm", url, env),
                                 ("local directory", args.cache, local_env)]:
                s, rss, _ = timed([args.posthoc, "eval", "--cache", loc, "--method", "energy"], e)
                print(f"  eval {name:<20} {s:7.2f} s  peak RSS {mib(rss)}")
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    return 0


def set_of(entry):
    """The set a split file holds: `id_test.parquet` -> id_test, `ood-isun.parquet` -> isun."""
    name = entry["name"].removesuffix(".parquet")
    return name.removeprefix("ood-") if entry["role"] == "ood" else name


if __name__ == "__main__":
    sys.exit(main())
