#!/usr/bin/env python3
"""One timed side of `just bench-python`: `posthoc.evaluate` from Python, in one process.

Prints one JSON line to stdout: the import time of `posthoc` (and of pandas, unless
`--once`), the wall time of every call (`as_="records"` and `as_="pandas"`, alternating,
`--reps` each; `--once`: one records call), and writes the rows of the first call to
`--json` (the flattened records). Run with the interpreter of a
venv where the package is installed (a release build: `pip install ./python`).
"""

import argparse
import json
import sys
import time

T0 = time.perf_counter()
import posthoc  # noqa: E402

T_POSTHOC = time.perf_counter()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", required=True, help="write the first call's rows here")
    ap.add_argument("--once", action="store_true", help="one records call only (end-to-end runs)")
    args = ap.parse_args()
    t = time.perf_counter()
    if not args.once:
        import pandas  # noqa: F401
    import_pandas = time.perf_counter() - t
    calls = {"records": [], "pandas": []}
    for rep in range(1 if args.once else args.reps):
        for as_ in ["records"] if args.once else ["records", "pandas"]:
            t = time.perf_counter()
            out = posthoc.evaluate(args.cache, config=args.config, as_=as_)
            calls[as_].append(time.perf_counter() - t)
            if rep == 0 and as_ == "records":
                with open(args.json, "w") as f:
                    json.dump(out, f)
    print(json.dumps({
        "import_posthoc_s": T_POSTHOC - T0,
        "import_pandas_s": import_pandas,
        "calls_s": calls,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
