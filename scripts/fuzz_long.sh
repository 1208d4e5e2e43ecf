#!/usr/bin/env bash
# Runs every libFuzzer target for a long time (default: 1 hour each, one
# process per core), keeping the growing corpus in build/fuzz/corpus/ and any
# crashing input as build/fuzz/<target>-crash-*. A crash found here becomes a
# regression test: add its input to fuzz/corpus/<target>/ (the test command
# replays that corpus) and fix the parser.
#   scripts/fuzz_long.sh [SECONDS_PER_TARGET]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-3600}
scripts/deps.sh fuzz
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$(nproc)"
for target in fuzz/*_fuzz.cc; do
  name=$(basename "$target" .cc)
  corpus=build/fuzz/corpus/$name
  mkdir -p "$corpus"
  echo "== $name: ${seconds}s on $(nproc) workers"
  build/fuzz/fuzz/"$name" -max_total_time="$seconds" -workers="$(nproc)" -jobs="$(nproc)" \
    -print_final_stats=1 -artifact_prefix=build/fuzz/"$name"- "$corpus" "fuzz/corpus/$name"
done
