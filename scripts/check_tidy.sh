#!/usr/bin/env bash
# Runs clang-tidy with the project's .clang-tidy (the function-size limit)
# over the library and CLI sources, or only the files given. Needs
# build/default/compile_commands.json (cmake --preset default); the Python
# extension (src/python/) is built elsewhere and is not checked.
#   scripts/check_tidy.sh [FILE...]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-tidy >/dev/null || { echo "check_tidy: clang-tidy is not installed (scripts/deps.sh tidy)" >&2; exit 2; }
[ -f build/default/compile_commands.json ] || cmake --preset default >/dev/null
if [ $# -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files 'src/*.cc' ':!src/python/*')
fi
failed=0
for f in "${files[@]}"; do
  # g++-only flags in the database are unknown to clang: ignored.
  if ! out=$(clang-tidy -quiet -p build/default --extra-arg=-Wno-unknown-warning-option "$f" 2>&1); then
    failed=1
  fi
  grep -E "warning:|error:|note: [0-9]+ lines" <<<"$out" || true
done
if [ "$failed" -ne 0 ]; then
  echo "check_tidy: functions over the limit (see above)" >&2
  exit 1
fi
echo "check_tidy: OK (${#files[@]} files)"
