#!/usr/bin/env bash
# Builds ckpt and runs its two main jobs:
#  1. `ckpt demo` (C++): a synthetic Llama-shaped model trained on 4 ranks with
#     asynchronous checkpoints, killed mid-save, resumed bit-exactly on 2 ranks,
#     exported to a Hugging Face directory, with a table of what it measured.
#     Extra arguments go to it (see `ckpt demo --help`).
#  2. `python -m ckpt.demo`: the same story from PyTorch through
#     ckpt.torch.Checkpointer (NeMo's API): a transformers Llama with FSDP2 on 4
#     gloo ranks, SIGKILL mid-save, resume on 2 ranks with the loss curve bit for
#     bit, consolidated/ loaded by from_pretrained. Skipped with CKPT_DEMO_CPP_ONLY=1.
# Installs missing Debian packages (and the Python environment .venv) first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake --preset default >/dev/null
cmake --build --preset default -j "$(nproc)" --target ckpt_cli
build/default/ckpt demo "$@"
if [ "${CKPT_DEMO_CPP_ONLY:-0}" != 1 ]; then
  py=$(scripts/python_env.sh)
  echo
  "$py" -m ckpt.demo
fi
