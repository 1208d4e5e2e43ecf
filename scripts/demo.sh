#!/usr/bin/env bash
# Builds ckpt and runs its main job. Installs missing Debian packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake --preset default >/dev/null
cmake --build --preset default -j "$(nproc)" --target ckpt_cli
bin=build/default/ckpt

"$bin" --help
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" sample "$dir/model" --layers 4 --hidden 512 --shards 3
"$bin" inspect "$dir/model"
"$bin" verify "$dir/model"
