#!/usr/bin/env bash
# Builds and runs every test: the test suite (warnings are errors) and a short
# fuzzing run of every parser. The default preset first checks that no lower
# layer includes a higher one (scripts/check_layers.sh) and that every C++ file
# is as clang-format writes it (scripts/check_format.sh). Extra presets may be named: "asan" runs the
# suite under AddressSanitizer + UndefinedBehaviorSanitizer, "tsan" under
# ThreadSanitizer; "python" builds the Python package into .venv and runs
# its checks (ruff, mypy) and tests (pytest, real gloo ranks). Installs
# missing Debian packages and the pinned Python packages first.
#
#   scripts/test.sh                 # default suite + fuzz + python
#   scripts/test.sh default asan    # what CI adds
set -euo pipefail
cd "$(dirname "$0")/.."

presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(default fuzz python)
jobs=$(nproc)
fuzz_seconds=${CKPT_FUZZ_SECONDS:-20}

for preset in "${presets[@]}"; do
  echo "== ckpt tests: $preset =="
  case "$preset" in
    default|asan|tsan)
      scripts/deps.sh
      if [ "$preset" = default ]; then
        scripts/check_layers.sh
        scripts/deps.sh format
        scripts/check_format.sh
      fi
      cmake --preset "$preset" >/dev/null
      cmake --build --preset "$preset" -j "$jobs"
      ctest --preset "$preset" -j "$jobs"
      ;;
    fuzz)
      scripts/deps.sh fuzz
      cmake --preset fuzz >/dev/null
      cmake --build --preset fuzz -j "$jobs"
      for target in fuzz/*_fuzz.cc; do
        name=$(basename "$target" .cc)
        corpus=build/fuzz/corpus/$name
        mkdir -p "$corpus"
        echo "-- $name: ${fuzz_seconds}s"
        build/fuzz/fuzz/"$name" -max_total_time="$fuzz_seconds" -print_final_stats=0 \
          -artifact_prefix=build/fuzz/"$name"- "$corpus" "fuzz/corpus/$name" 2>&1 | tail -n 2
      done
      ;;
    python)
      scripts/deps.sh
      py=$(scripts/python_env.sh)
      "$py" -m ruff check
      "$py" -m ruff format --check
      "$py" -m mypy
      "$py" -m pytest -q -p no:cacheprovider tests/python
      ;;
    *) echo "test.sh: unknown preset '$preset'" >&2; exit 2 ;;
  esac
done
echo "== all tests passed =="
