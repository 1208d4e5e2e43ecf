#!/usr/bin/env bash
# Creates the virtual environment .venv in the checkout (when missing),
# installs torch 2.13.0 (pinned: an unpinned torch pulls a CUDA build of
# several GB) and the pinned build and test packages, then builds and
# installs ckpt's Python package into it (editable; rebuilt incrementally in
# build/py). Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" >&2
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  echo "python_env.sh: installing torch 2.13.0" >&2
  "${pip[@]}" install torch==2.13.0 >&2
fi
"${pip[@]}" install -r requirements-dev.txt >&2
echo "python_env.sh: building the ckpt package" >&2
"${pip[@]}" install --no-build-isolation -e . >&2
echo "$venv/bin/python"
