#!/usr/bin/env bash
# ckpt's Python package vs torch.distributed.checkpoint and safetensors (see bench/python_bench.py).
#   bench/python_bench.sh [--nproc N] [--size 1G|256M] [--reps 3] [--dir DIR] [--quick] [--json FILE] [...]
# --quick: 256 MiB, one repetition. Uses .venv/bin/python when present, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
args=()
for a in "$@"; do
  if [ "$a" = --quick ]; then args+=(--size 256M --reps 1); else args+=("$a"); fi
done
nproc=2
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = --nproc ] && nproc=${args[$((i + 1))]}
done
exec "$py" -m torch.distributed.run --standalone --nproc-per-node "$nproc" bench/python_bench.py "${args[@]}"
