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

# Compile the GPU backends (needs the CUDA toolkit and network for burn-cuda's LLVM
# bundle; libtorch from `pip install torch==2.9.0` for tch). Not run in CI.
check-gpu:
    cargo check -p posthoc --features cuda
    LIBTORCH_USE_PYTORCH=1 cargo check -p posthoc --features tch

# Forward throughput of our DenseNet (fused CPU engine; burn flex) next to PyTorch CPU
# (contiguous and channels_last) at batch 64 and 128, in one run; makes its own venv
# (.venv-bench-torch: torch from PyPI, several GB on first use).
bench-precompute:
    #!/usr/bin/env bash
    set -euo pipefail
    ckpt="$(pwd)/../shared/data/checkpoints/dice-densenet100/cifar10/checkpoint_100.pth.tar"
    [ -f "$ckpt" ] || { echo "bench-precompute: $ckpt not found"; exit 1; }
    if [ ! -x .venv-bench-torch/bin/python ]; then
      python3 -m venv .venv-bench-torch
      .venv-bench-torch/bin/pip install -q torch==2.15.0 numpy
    fi
    cargo build --release -p posthoc-pipeline --example forward_speed
    python3 bench/run_forward_bench.py --python .venv-bench-torch/bin/python \
      --example "${CARGO_TARGET_DIR:-target}/release/examples/forward_speed" --checkpoint "$ckpt"

# Measured in one run, each next to the same computation in numpy: (a) the default config's 13
# settings on a CIFAR-size cache (the real out/cifar10-densenet100 if present, else synthetic),
# (b) a DICE p = 10..90 sweep on a synthetic ImageNet-size cache. Fails when the two sides
# disagree (> 1e-6). Synthetic caches are made once under .bench/. Extra arguments go to
# bench/run_eval_bench.py, e.g. `just bench-eval --cases cifar --reps 5`.
bench-eval *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x .venv-bench/bin/python ]; then python3 -m venv .venv-bench; fi
    .venv-bench/bin/pip install --quiet numpy==2.4.6 scikit-learn==1.9.1 pyarrow==26.0.1
    # The path of the binary this build produced (the target dir may be shared), copied at once.
    bin=$(cargo build --release -p posthoc --message-format=json-render-diagnostics \
        | python3 -c 'import sys, json; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "posthoc"]')
    mkdir -p .bench/bin && cp "$bin" .bench/bin/posthoc
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

# The Python module (python/): a venv (.venv-python, or an existing one named by
# POSTHOC_PYTHON_VENV), `maturin develop` into it, then pytest against the CLI binary.
python-test *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    venv="${POSTHOC_PYTHON_VENV:-$(pwd)/.venv-python}"
    if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
    "$venv/bin/pip" install --quiet maturin==1.16.0 pytest==9.2.0 pandas==3.1.1 numpy==2.4.6 pyarrow==26.0.1
    bin=$(cargo build -p posthoc --bin posthoc --message-format=json-render-diagnostics \
        | python3 -c 'import sys, json; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "posthoc"]')
    (cd python && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --quiet)
    # Any failure fails, and so does pytest's exit 5 (no tests collected).
    POSTHOC_BIN="$bin" "$venv/bin/python" -m pytest python/tests -q {{ARGS}}
