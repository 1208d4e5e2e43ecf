#!/usr/bin/env bash
# Measures every target of docs/PERFORMANCE.md in one run and writes the
# results as JSON: raw I/O, sharded save/load/resharding/planning,
# consolidation, asynchronous saves, and — when python3-torch is installed —
# torch.save / torch.load of the same tensors. Each figure is a ratio against
# a reference measured in the same run (see the benchmarks' own tables).
#   bench/run_all.sh [--quick] [--out FILE]      (default FILE: bench-results.json)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0 out=bench-results.json
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    *) echo "usage: bench/run_all.sh [--quick] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
scripts/deps.sh
cmake --preset default >/dev/null
cmake --build --preset default -j "$(nproc)" --target ckpt_cli ckpt_io_bench ckpt_sharded_bench \
  ckpt_consolidate_bench ckpt_async_bench ckpt_convert_bench ckpt_scaling_bench ckpt_strided_bench >/dev/null
b=build/default/bench
gib=1 reps=3 saves=10
mib=1024
[ "$quick" = 1 ] && gib=0.25 reps=1 saves=4 mib=256
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() { echo; echo "== $*"; "$@" | tee -a "$log" | grep -v '^RESULT '; }
run "$b/ckpt_io_bench" --gib "$gib" --reps "$reps"
run "$b/ckpt_sharded_bench" --gib "$gib" --ranks 4 --reps "$reps"
run "$b/ckpt_consolidate_bench" build/default/ckpt --reps "$reps"
run "$b/ckpt_async_bench" --gib "$gib" --saves "$saves"
run "$b/ckpt_convert_bench" --mib "$mib" --runs "$reps"
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

echo
printf '%-12s %-62s %10s %10s %s\n' bench measure value target met
grep '^RESULT ' "$log" | sed 's/^RESULT //' | while IFS= read -r line; do
  bench=$(sed -E 's/.*"bench":"([^"]*)".*/\1/' <<<"$line")
  measure=$(sed -E 's/.*"measure":"([^"]*)".*/\1/' <<<"$line")
  value=$(sed -E 's/.*"value":([^,]*),.*/\1/' <<<"$line")
  target=$(sed -E 's/.*"target":"([^"]*)".*/\1/' <<<"$line")
  met=$(sed -E 's/.*"met":(true|false).*/\1/' <<<"$line")
  [ "$target" = "-" ] && met="-"
  printf '%-12s %-62s %10s %10s %s\n' "$bench" "$measure" "$value" "$target" "$met"
done
{
  printf '{"machine":{"cores":%s},"results":[\n' "$(nproc)"
  grep '^RESULT ' "$log" | sed 's/^RESULT //' | sed '$!s/$/,/'
  printf ']}\n'
} > "$out"
echo "results written to $out"
