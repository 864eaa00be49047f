# posthoc task runner. `just --list` shows the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

config := "configs/cifar10-densenet100.toml"

default:
    @just --list

# Link checkpoints/ and datasets/ to ../shared/data when it exists.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    shared="$(cd .. && pwd)/shared/data"
    if [ ! -d "$shared" ]; then echo "no ../shared/data: put checkpoints and datasets in place by hand (see their READMEs)"; exit 0; fi
    mkdir -p checkpoints datasets
    ln -sfn "$shared/checkpoints/dice-densenet100" checkpoints/dice-densenet100
    ln -sfn "$shared/cifar10" datasets/cifar10
    ln -sfn "$shared/ood" datasets/ood
    # The ImageNet-style run (configs/imagenet-efficientnet-lite0.toml).
    ln -sfn "$shared/imagenet" datasets/imagenet
    ln -sfn "$shared/checkpoints/efficientnet-lite0" checkpoints/efficientnet-lite0
    echo "linked checkpoints/ and datasets/ to $shared"

# The test suite (what CI runs).
test:
    cargo nextest run --workspace --no-fail-fast

# Block GEMM of the scoring pass (gemm crate vs ndarray dot) and the pass's throughput.
bench-head:
    cargo bench -p posthoc --bench head_gemm

# DICE sweep p = 10..90 at m = 2048, C = 1000: one-pass band sweep vs a dense pass per mask.
bench-dice-sweep rows="8192":
    cargo bench -p posthoc --bench dice_sweep -- {{rows}}

# Build the release binary once for the recipes below.
build-release:
    cargo build --release -p posthoc

# Feature cache of the default config (resumable: re-run after an interruption).
precompute *ARGS: setup build-release
    "${CARGO_TARGET_DIR:-target}/release/posthoc" precompute --config {{config}} {{ARGS}}

# The papers' 13 settings on the default cache: tables on stdout, JSON/CSV/plots in out/.
eval *ARGS: build-release
    "${CARGO_TARGET_DIR:-target}/release/posthoc" eval --config {{config}} --json out/eval-cifar10-densenet100.json --csv out/eval-cifar10-densenet100.csv --plots out/plots-cifar10-densenet100 {{ARGS}}

# --- ImageNet-style run: EfficientNet-Lite0 on 1,300 ImageNet val images, DTD textures as OOD.
imagenet_config := "configs/imagenet-efficientnet-lite0.toml"

# Feature cache of the ImageNet config (resumable).
precompute-imagenet *ARGS: setup build-release
    "${CARGO_TARGET_DIR:-target}/release/posthoc" precompute --config {{imagenet_config}} {{ARGS}}

# Its evaluate sweep (the papers' ImageNet settings and the CIFAR ones): tables, JSON/CSV/plots.
eval-imagenet *ARGS: build-release
    "${CARGO_TARGET_DIR:-target}/release/posthoc" eval --config {{imagenet_config}} --json out/eval-imagenet-efficientnet-lite0.json --csv out/eval-imagenet-efficientnet-lite0.csv --plots out/plots-imagenet-efficientnet-lite0 {{ARGS}}

# Compile the GPU backends (not run in CI). tch: libtorch 2.9.0's headers, e.g.
# `pip install --no-deps torch==2.9.0` into a venv and LIBTORCH=<venv>/lib/python3.11/
# site-packages/torch (torch 2.15's headers need C++20, which torch-sys 0.22 does not use);
# without LIBTORCH, the torch of the python on PATH. cuda: needs network for burn-cuda's
# LLVM bundle (tracel-llvm-bundler downloads it at build time).
check-gpu:
    if [ -n "${LIBTORCH:-}" ]; then cargo check -p posthoc --features tch; else LIBTORCH_USE_PYTORCH=1 cargo check -p posthoc --features tch; fi
    cargo check -p posthoc --features cuda

# Forward throughput of our backbones (fused CPU engines; burn flex for DenseNet) next to
# PyTorch CPU (contiguous and channels_last, 2 threads) in one run: DenseNet-BC-100 at batch
# 64 and 128 (32 x 32), ResNet-50, MobileNet-v2 and EfficientNet-Lite0 at batch 32 and 64
# (224 x 224). Makes its own venv (.venv-bench-torch: torch from PyPI, several GB on first
# use) unless BENCH_TORCH_VENV=DIR names one with torch and torchvision. Extra arguments go
# to bench/run_forward_bench.py, e.g. `just bench-precompute --archs resnet50 --repeat-large 3`.
bench-precompute *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    ckpt="$(pwd)/../shared/data/checkpoints/dice-densenet100/cifar10/checkpoint_100.pth.tar"
    [ -f "$ckpt" ] || { echo "bench-precompute: $ckpt not found"; exit 1; }
    venv="${BENCH_TORCH_VENV:-.venv-bench-torch}"
    if [ ! -x "$venv/bin/python" ]; then
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q torch==2.15.0 torchvision==0.29.2 numpy
    fi
    cargo build --release -p posthoc -p posthoc-pipeline --example forward_speed
    echo "load: $(uptime)"
    python3 bench/run_forward_bench.py --python "$venv/bin/python" \
      --example "${CARGO_TARGET_DIR:-target}/release/examples/forward_speed" --checkpoint "$ckpt" {{ARGS}}

# Measured in one run, each next to the same computation in numpy: (a) the default config's 13
# settings on a CIFAR-size cache (the real out/cifar10-densenet100 if present, else synthetic),
# (b) a DICE p = 10..90 sweep on a synthetic ImageNet-size cache. Fails when the two sides
# disagree (> 1e-6). Synthetic caches are made once under .bench/. Extra arguments go to
# bench/run_eval_bench.py, e.g. `just bench-eval --cases cifar --reps 5`.
bench-eval *ARGS: bench-base
    #!/usr/bin/env bash
    set -euo pipefail
    echo "load: $(uptime)"
    .venv-bench/bin/python bench/run_eval_bench.py --posthoc .bench/bin/posthoc --python .venv-bench/bin/python {{ARGS}}

# Unleashing Mask: the pretrained cache (for the plain constraint and the comparison), the
# loss constraint, fine-tuning (ARGS go to `um train`, e.g. `--limit 5000 --epochs 1`,
# `--resume`), the fine-tuned network's cache, and both evaluated.
um um_config="configs/cifar10-densenet100-um.toml" *ARGS: setup build-release
    #!/usr/bin/env bash
    set -euo pipefail
    bin="${CARGO_TARGET_DIR:-target}/release/posthoc"
    "$bin" precompute --config {{config}}
    "$bin" um estimate --config {{um_config}}
    "$bin" um train --config {{um_config}} {{ARGS}}
    "$bin" precompute --config {{um_config}}
    echo "== pretrained ({{config}})"
    "$bin" eval --config {{um_config}} --cache "$(sed -n 's/^out = "\(.*\)"/\1/p' {{config}} | head -1)"
    echo "== fine-tuned ({{um_config}})"
    "$bin" eval --config {{um_config}}

# The numpy baseline's venv (.venv-bench) and the release binary copied to .bench/bin/posthoc
# (the target dir may be shared: the path this build produced, copied at once).
bench-base:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x .venv-bench/bin/python ]; then python3 -m venv .venv-bench; fi
    .venv-bench/bin/pip install --quiet numpy==2.4.6 scikit-learn==1.9.1 pyarrow==26.0.1
    bin=$(cargo build --release -p posthoc --message-format=json-render-diagnostics \
        | python3 -c 'import sys, json; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "posthoc"]')
    mkdir -p .bench/bin && cp "$bin" .bench/bin/posthoc

# --- python bench (issue 12) ---

# posthoc.evaluate from Python vs `posthoc eval --config` (the CLI) vs numpy, the default
# config's sweep on the posthoc-small fixture (imported) and a CIFAR-size cache (the real one
# if present, else bench-eval's synthetic one); bench/run_python_bench.py, e.g.
# `just bench-python --cases small --reps 3`. The package is `pip install`ed (a release
# build) into .venv-python-bench, or the venv named by POSTHOC_PYTHON_BENCH_VENV.
bench-python *ARGS: bench-base
    #!/usr/bin/env bash
    set -euo pipefail
    venv="${POSTHOC_PYTHON_BENCH_VENV:-$(pwd)/.venv-python-bench}"
    if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
    "$venv/bin/pip" install --quiet pandas==3.1.1 numpy==2.4.6
    "$venv/bin/pip" install --quiet ./python
    echo "load: $(uptime)"
    .venv-bench/bin/python bench/run_python_bench.py --posthoc .bench/bin/posthoc \
        --posthoc-python "$venv/bin/python" --numpy-python .venv-bench/bin/python {{ARGS}}

# --- end python bench ---

# --- method zoo (issue 9) ---

# Every method at its paper setting plus small sweeps on the default cache, one table.
eval-zoo *ARGS: build-release
    "${CARGO_TARGET_DIR:-target}/release/posthoc" eval --config configs/cifar10-densenet100-zoo.toml --json out/eval-zoo.json --csv out/eval-zoo.csv {{ARGS}}

# The zoo vs pytorch-ood 0.4.0 (22 peer settings x 3 OOD sets, whole processes, ratio
# printed) and the ImageNet-size KNN / NNGuide case (time, peak RSS). pytorch-ood gets its
# own venv (.venv-bench-ood); ZOO_TORCH_VENV=DIR reuses an existing one with torch and
# pytorch-ood 0.4.0. ARGS go to bench/run_zoo_bench.py, e.g. `--cases peers --reps 5`.
bench-zoo *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    venv="${ZOO_TORCH_VENV:-.venv-bench-ood}"
    if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
    "$venv/bin/python" -c 'import pytorch_ood, torch, sklearn' 2>/dev/null \
        || "$venv/bin/pip" install --quiet torch==2.15.0 pytorch-ood==0.4.0 scikit-learn==1.9.1 numpy==2.4.6
    if [ ! -x .venv-bench/bin/python ]; then python3 -m venv .venv-bench; fi
    .venv-bench/bin/python -c 'import numpy' 2>/dev/null || .venv-bench/bin/pip install --quiet numpy==2.4.6
    bin=$(cargo build --release -p posthoc --message-format=json-render-diagnostics \
        | python3 -c 'import sys, json; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "posthoc"]')
    mkdir -p .bench/bin && cp "$bin" .bench/bin/posthoc-zoo
    echo "load: $(uptime)"
    "$venv/bin/python" bench/run_zoo_bench.py --posthoc .bench/bin/posthoc-zoo --python "$venv/bin/python" --bench-python .venv-bench/bin/python {{ARGS}}

# --- scale (issue 11) ---
# Fuzz the cache reader (cache/fuzz: manifest parsing; a real small cache with one file
# replaced / overwritten / truncated, resealed or not, read whole) for SECONDS each with
# libFuzzer; needs a nightly toolchain and cargo-fuzz (installed here when absent).
fuzz seconds="60":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.1
    cd cache/fuzz
    mkdir -p corpus/manifest corpus/open_cache
    # Seeds for open_cache: every file x every mode, at a few offsets, with a few bytes.
    for f in 0 1 2 3 4 5 6; do for mode in 0 1 2 4 5 6; do for off in 0 4 200 4000; do
      python3 -c 'import sys, struct; f, m, o = map(int, sys.argv[1:]); sys.stdout.buffer.write(bytes([f, m]) + struct.pack("<I", o) + b"\xff\x00PAR1")' \
        "$f" "$mode" "$off" > "corpus/open_cache/seed-$f-$mode-$off"
    done; done; done
    for t in manifest open_cache; do
      cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time={{seconds}} -max_len=4096 -rss_limit_mb=2048 -timeout=10
    done

# ImageNet-size streaming: (a) finish a cache whose train split is ROWS x M (default
# 1,281,167 x 2048, C = 1000: ~10.5 GB of f32 on disk under .bench/scale, removed after),
# timed in its own process with its peak RSS (bound: 2 GiB); (b) `posthoc eval` of a
# 90,000 x 2048 cache (45k ID test + 45k OOD), peak RSS over the raw scored features
# (bound: 2x). Run it on a quiet machine; it writes ~11 GB.
bench-scale rows="1281167" m="2048" c="1000":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release -p posthoc-cache --example bench_scale
    cargo build --release -p posthoc
    t="${CARGO_TARGET_DIR:-target}/release"
    dir=.bench/scale; rm -rf "$dir"; mkdir -p "$dir"
    echo "load: $(uptime)"
    "$t/examples/bench_scale" write "$dir/train" {{rows}} {{m}} {{c}}
    "$t/examples/bench_scale" finish "$dir/train"
    rm -rf "$dir/train"
    "$t/examples/bench_scale" write "$dir/eval" 20000 {{m}} {{c}} 45000 45000
    "$t/examples/bench_scale" finish "$dir/eval"
    python3 - "$t/posthoc" "$dir/eval" {{m}} <<'PY'
    import resource, subprocess, sys, time
    bin, cache, m = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t0 = time.time()
    subprocess.run([bin, "eval", "--cache", cache, "--method", "dice,react,energy,msp", "--ood", "ood"],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    raw = 90000 * m * 4
    print(f"eval   90000 x {m}: {wall:.1f} s, peak RSS {rss / 2**20:.0f} MiB = {rss / raw:.2f}x the raw features ({raw / 2**20:.0f} MiB)")
    PY
    rm -rf "$dir"

# The two ways to read a cache from an object store, on a real S3 API (moto's server on
# 127.0.0.1) and a bucket-sized cache (the synthetic ImageNet-size one of bench-zoo,
# 90,000 scored rows x 2048, ~1.1 GB; made once under .bench/imagenet): the download
# cache that eval uses, cold and warm, against Parquet range reads of the scoring columns,
# then `posthoc eval` from s3:// cold and warm and from the local directory. The moto venv
# is .ci/run's (../posthoc-venv-moto) or POSTHOC_MOTO_PYTHON's.
bench-remote:
    #!/usr/bin/env bash
    set -euo pipefail
    py="${POSTHOC_MOTO_PYTHON:-$(cd .. && pwd)/posthoc-venv-moto/bin/python}"
    if [ ! -x "$py" ]; then
      python3 -m venv ../posthoc-venv-moto
      ../posthoc-venv-moto/bin/pip install -q 'moto[server]==5.2.5' PyYAML
      py="$(cd .. && pwd)/posthoc-venv-moto/bin/python"
    fi
    if [ ! -f .bench/imagenet/cache/manifest.json ]; then just bench-zoo --cases imagenet --reps 2; fi
    cargo build --release -p posthoc-cache --example remote_read
    cargo build --release -p posthoc
    t="${CARGO_TARGET_DIR:-target}/release"
    echo "load: $(uptime)"
    python3 bench/run_remote_bench.py --posthoc "$t/posthoc" --example "$t/examples/remote_read" \
      --moto-python "$py" --cache .bench/imagenet/cache
# --- end scale ---

# The Python module (python/) built into a venv (.venv-python, or an existing one named by
# POSTHOC_PYTHON_VENV) with `maturin develop` (editable: python/posthoc/_posthoc.abi3.so).
python-develop:
    #!/usr/bin/env bash
    set -euo pipefail
    venv="${POSTHOC_PYTHON_VENV:-$(pwd)/.venv-python}"
    if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
    "$venv/bin/pip" install --quiet maturin==1.16.0 pytest==9.2.0 pandas==3.1.1 numpy==2.4.6 pyarrow==26.0.1
    (cd python && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --quiet)

# The Python module's pytest suite against the CLI binary (python/tests/test_torch.py
# skips there: no torch in .venv-python; `just python-test-torch` runs it).
python-test *ARGS: python-develop
    #!/usr/bin/env bash
    set -euo pipefail
    venv="${POSTHOC_PYTHON_VENV:-$(pwd)/.venv-python}"
    bin=$(cargo build --workspace --bin posthoc --message-format=json-render-diagnostics \
        | python3 -c 'import sys, json; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "posthoc"]')
    # Any failure fails, and so does pytest's exit 5 (no tests collected).
    POSTHOC_BIN="$bin" "$venv/bin/python" -m pytest python/tests -q {{ARGS}}

# posthoc.torch's tests with a torch interpreter: POSTHOC_TORCH_PYTHON (an existing venv,
# only read: the module comes from python-develop on PYTHONPATH, and pytest, when that
# interpreter lacks it, from .venv-python-pytest), else .venv-python-torch with CPU torch.
python-test-torch *ARGS: python-develop
    #!/usr/bin/env bash
    set -euo pipefail
    py="${POSTHOC_TORCH_PYTHON:-}"
    if [ -z "$py" ]; then
        venv="$(pwd)/.venv-python-torch"
        if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
        "$venv/bin/pip" install --quiet --index-url https://download.pytorch.org/whl/cpu torch==2.15.0
        "$venv/bin/pip" install --quiet pytest==9.2.0 numpy==2.4.6 tqdm
        py="$venv/bin/python"
    fi
    "$py" -c 'import torch' || { echo "$py cannot import torch (POSTHOC_TORCH_PYTHON)" >&2; exit 1; }
    path="$(pwd)/python"
    if ! "$py" -c 'import pytest' 2>/dev/null; then
        extra="$(pwd)/.venv-python-pytest"
        [ -d "$extra/pytest" ] || "$py" -m pip install --quiet --target "$extra" pytest==9.2.0
        path="$path:$extra"
    fi
    # -rs shows skips: a skip here is a failure to notice (torch imported above).
    PYTHONPATH="$path" "$py" -m pytest python/tests/test_torch.py -q -rs -p no:cacheprovider {{ARGS}}

# The Slurm template on a real local single-node cluster (root; `scripts/slurm-local.sh
# install` first), alone and with its output (`just test` runs it too).
test-slurm:
    cargo nextest run --workspace -E 'binary(slurm_cluster)' --no-capture
