#!/usr/bin/env bash
# Fails when a C++ file differs from what clang-format (with the project's
# .clang-format) would write. Checks every file under src/, include/,
# tests/, fuzz/, bench/ and examples/, or only the files given.
#   scripts/check_format.sh [FILE...]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "check_format: clang-format is not installed (scripts/deps.sh format)" >&2; exit 2; }
if [ $# -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files 'src/*.cc' 'src/*.h' 'include/*.h' 'tests/*.cc' 'tests/*.h' 'fuzz/*.cc' \
    'bench/*.cc' 'bench/*.h' 'examples/*.cc')
fi
clang-format --dry-run -Werror "${files[@]}"
echo "check_format: OK (${#files[@]} files)"
