#!/usr/bin/env bash
# `ckpt consolidate` under mpirun -np 2 produces a directory that verifies
# and holds the same tensors as one produced by a single process.
set -euo pipefail
ckpt=$1
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"  # OpenMPI's own allocations
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$ckpt" sample "$dir/sharded" --ranks 4 --hidden 64 --layers 3 >/dev/null
mpirun --allow-run-as-root --oversubscribe -np 2 --mca btl self,vader \
  --mca btl_vader_single_copy_mechanism none \
  "$ckpt" consolidate "$dir/sharded" "$dir/mpi" --max-shard-size 64KiB
"$ckpt" consolidate "$dir/sharded" "$dir/single" --max-shard-size 64KiB >/dev/null
"$ckpt" verify "$dir/mpi"
for f in "$dir"/single/*.safetensors; do
  cmp "$f" "$dir/mpi/$(basename "$f")"
done
cmp "$dir/single/model.safetensors.index.json" "$dir/mpi/model.safetensors.index.json"
echo "mpi consolidation identical to single-process consolidation"
