#!/usr/bin/env bash
# Runs `ckpt demo` small: once with thread ranks (the crash is a real SIGKILL
# of a child process), once as two MPI jobs (train on 4 ranks, resume on 2).
#   demo_test.sh CKPT_BINARY [mpi]
set -euo pipefail
bin=$1 mode=${2:-threads}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
small=(--layers 2 --hidden 64 --intermediate 160 --vocab 512 --steps 7 --save-every 3)
if [ "$mode" = mpi ]; then
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
  export TSAN_OPTIONS="${TSAN_OPTIONS:+$TSAN_OPTIONS:}ignore_noninstrumented_modules=1"
  mpi=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader --mca btl_vader_single_copy_mechanism none)
  "${mpi[@]}" -np 4 "$bin" demo --mpi --phase train --dir "$dir/run" "${small[@]}"
  "${mpi[@]}" -np 2 "$bin" demo --mpi --phase resume --dir "$dir/run" "${small[@]}" --json > "$dir/out.json"
else
  "$bin" demo "${small[@]}" --json --dir "$dir/json" > "$dir/out.json"
  # stdout is exactly one JSON document (nothing after it).
  python3 -c 'import json, sys; json.load(sys.stdin)' < "$dir/out.json"
  # --dir keeps everything: the export verifies with the CLI.
  "$bin" demo "${small[@]}" --dir "$dir/kept" > "$dir/table.txt"
  grep -q "bit-exact against an uninterrupted run" "$dir/table.txt"
  test -L "$dir/kept/checkpoints/LATEST"
fi
# Each checkpoint holds what a training loop saves: RNG state per global rank
# (4 ranks trained step 3, 2 resumed and saved step 7), and the final one its
# Hugging Face export where NeMo puts it, which verifies.
ckpts=$(ls -d "$dir"/*/checkpoints | tail -n 1)
for r in 0 1 2 3; do test -s "$ckpts/epoch_0_step_3/rng/rng_global_rank_$r.state"; done
for r in 0 1; do test -s "$ckpts/epoch_0_step_7/rng/rng_global_rank_$r.state"; done
test ! -e "$ckpts/epoch_0_step_7/rng/rng_global_rank_2.state"
test -s "$ckpts/epoch_0_step_7/model/consolidated/model.safetensors.index.json"
test -s "$ckpts/epoch_0_step_7/model/consolidated/config.json"
test ! -e "$ckpts/epoch_0_step_3/model/consolidated"
"$bin" verify "$ckpts/epoch_0_step_7/model/consolidated" > /dev/null
grep -q '"bit_exact": true' "$dir/out.json"
grep -q '"resumed_from": "epoch_0_step_3"' "$dir/out.json"
grep -q '"crashed_at_step": 6' "$dir/out.json"
echo "demo ($mode): OK"
