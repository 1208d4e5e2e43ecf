#!/usr/bin/env bash
# Measures every target of docs/PERFORMANCE.md in one run and writes the
# results as JSON: raw I/O, sharded save/load/resharding/planning,
# consolidation, asynchronous saves, and — when python3-torch is installed —
# torch.save / torch.load of the same tensors. Each figure is a ratio against
# a reference measured in the same run (see the benchmarks' own tables).
# With --runs N every benchmark runs N times (interleaved: the whole list,
# then again) and each figure is reported as median [min, max] over the
# runs; a target is met when the median meets it. --check exits with 1 when
# any target is missed (a tool for people changing hot code: the shared
# machines that run the tests are too noisy for it to be a test).
#   bench/run_all.sh [--quick] [--runs N] [--check] [--out FILE]   (default FILE: bench-results.json)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0 out=bench-results.json runs=1 check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    --runs) runs=$2; shift ;;
    --check) check=1 ;;
    *) echo "usage: bench/run_all.sh [--quick] [--runs N] [--check] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
scripts/deps.sh
cmake --preset default >/dev/null
cmake --build --preset default -j "$(nproc)" --target ckpt_cli ckpt_io_bench ckpt_sharded_bench \
  ckpt_consolidate_bench ckpt_async_bench ckpt_convert_bench ckpt_scaling_bench ckpt_plan_bench \
  ckpt_strided_bench >/dev/null
b=build/default/bench
gib=1 reps=3 saves=10
mib=1024
[ "$quick" = 1 ] && gib=0.25 reps=1 saves=4 mib=256
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() { echo; echo "== $*"; "$@" | tee -a "$log" | grep -v '^RESULT '; }
for ((pass = 1; pass <= runs; pass++)); do
  [ "$runs" -gt 1 ] && { echo; echo "######## run $pass of $runs"; }
  run "$b/ckpt_io_bench" --gib "$gib" --reps "$reps"
  run "$b/ckpt_sharded_bench" --gib "$gib" --ranks 4 --reps "$reps"
  run "$b/ckpt_consolidate_bench" build/default/ckpt --reps "$reps"
  run "$b/ckpt_async_bench" --gib "$gib" --saves "$saves"
  run "$b/ckpt_convert_bench" --mib "$mib" --runs "$reps"
  run "$b/ckpt_plan_bench" --ranks "$( [ "$quick" = 1 ] && echo 64,256 || echo 64,256,1024 )" --reps "$reps"
  run "$b/ckpt_strided_bench" --mib "$( [ "$quick" = 1 ] && echo 64 || echo 256 )" --reps "$reps"
  run "$b/ckpt_scaling_bench" --scale "$( [ "$quick" = 1 ] && echo 0.25 || echo 1 )"
  if python3 -c 'import torch' 2>/dev/null; then
    run python3 bench/torch_reference.py --gib "$gib" --reps "$reps"
  else
    echo; echo "== torch.save / torch.load: skipped (python3-torch is not installed)"
  fi
  # The Python package against torch.distributed.checkpoint and safetensors
  # (needs the .venv that scripts/python_env.sh makes).
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import ckpt, torch' 2>/dev/null; then
    if [ "$quick" = 1 ]; then run bench/python_bench.sh --quick; else run bench/python_bench.sh --size 1G --reps "$reps"; fi
  else
    echo; echo "== Python package vs DCP: skipped (run scripts/python_env.sh first)"
  fi
done

echo
summary=(python3 bench/summarize.py --out "$out" --cores "$(nproc)")
[ "$check" = 1 ] && summary+=(--check)
"${summary[@]}" < "$log"
