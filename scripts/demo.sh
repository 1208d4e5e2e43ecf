#!/usr/bin/env bash
# Builds ckpt and runs its main job, `ckpt demo`: a synthetic Llama-shaped
# model trained on 4 ranks with asynchronous checkpoints, killed mid-save,
# resumed bit-exactly on 2 ranks, exported to a Hugging Face directory, with a
# table of what it measured. Extra arguments go to `ckpt demo` (see
# `ckpt demo --help`). Installs missing Debian packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake --preset default >/dev/null
cmake --build --preset default -j "$(nproc)" --target ckpt_cli
exec build/default/ckpt demo "$@"
