#!/usr/bin/env bash
# The accuracy cost of N:M 2:4 sparsity against unstructured pruning at the same 50% (Zhou et al. 2021, §3):
# LeNet-300-100 and vit_tiny on Fashion-MNIST, magnitude after training (pruned, then retrained the whole schedule
# from the trained weights) and SNIP at initialization, with and without --pattern 2:4, over seeds.
#   ROOT=runs_nm SEEDS="0 1 2" LENET_TRAIN=10ep VIT_TRAIN=3ep VIT_SEEDS="0" bash repro/nm_patterns.sh
# then: prunelab ls --root "$ROOT" (the pattern shows in the "what" column).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
ROOT="${ROOT:-runs_nm}"
DATA="${DATA:-/usr/share/datasets}"
run() { "$PY" -m prunelab run --dataset fashion_mnist --data-root "$DATA" --root "$ROOT" --device cpu --no-progress \
        --sparsity 0.5 "$@"; }
for seed in ${SEEDS:-0 1 2}; do
  for pattern in "" "--pattern 2:4"; do
    # shellcheck disable=SC2086 # the pattern flag is two words or none
    run --model lenet_300_100 --train "${LENET_TRAIN:-10ep}" --seed "$seed" --method magnitude --prune-at end $pattern
    # shellcheck disable=SC2086
    run --model lenet_300_100 --train "${LENET_TRAIN:-10ep}" --seed "$seed" --method snip --prune-at 0it $pattern
  done
done
for seed in ${VIT_SEEDS:-0}; do
  for pattern in "" "--pattern 2:4"; do
    # shellcheck disable=SC2086
    run --model vit_tiny --train "${VIT_TRAIN:-3ep}" --seed "$seed" --method magnitude --prune-at end $pattern
  done
done
