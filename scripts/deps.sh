#!/usr/bin/env bash
# Installs the Debian packages ckpt needs, only when some are missing.
# Usage: scripts/deps.sh [fuzz] [format] [tidy]   ("fuzz" adds clang and its libFuzzer
# runtime, "format" clang-format, "tidy" clang-tidy)
set -euo pipefail

packages=(cmake ninja-build g++ pkg-config coreutils
          libgtest-dev nlohmann-json3-dev libcli11-dev libxxhash-dev zlib1g-dev
          libopenmpi-dev openmpi-bin libcurl4-openssl-dev libssl-dev)
for group in "$@"; do
  case "$group" in
    fuzz) packages+=(clang libclang-rt-dev) ;;
    format) packages+=(clang-format) ;;
    tidy) packages+=(clang-tidy) ;;
    *) echo "deps.sh: unknown group '$group'" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps.sh: installing ${missing[*]}" >&2
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps.sh: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
