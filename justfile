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
