#!/usr/bin/env bash
# Submits a sharded precompute: an array of N shards (one GPU each), then the merge job,
# which runs only if every shard succeeded (--dependency=afterok). Prints both job ids.
#
#   POSTHOC_CONFIG=configs/x.toml POSTHOC_OUT=s3://bucket/run deploy/slurm/submit.sh 8
#
# POSTHOC_SLURM_GPU: the per-shard resource request (default --gres=gpu:1; empty for CPU
# nodes); POSTHOC_SLURM_ARGS: extra sbatch arguments (partition, account, time...).
set -euo pipefail
n="${1:?usage: submit.sh NUM_SHARDS}"
here="$(cd "$(dirname "$0")" && pwd)"
export POSTHOC_SHARDS="$n"
gpu="${POSTHOC_SLURM_GPU---gres=gpu:1}"
# shellcheck disable=SC2086
array=$(sbatch --parsable --array="0-$((n - 1))" $gpu ${POSTHOC_SLURM_ARGS:-} "$here/precompute.sbatch")
array="${array%%;*}"
# shellcheck disable=SC2086
merge=$(sbatch --parsable --dependency="afterok:$array" ${POSTHOC_SLURM_ARGS:-} "$here/merge.sbatch")
echo "array $array merge ${merge%%;*}"
