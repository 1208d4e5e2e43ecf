#!/usr/bin/env bash
# Installs the build into a staging prefix, then builds examples/consumer
# against it twice: with find_package(ckpt) and with pkg-config.
#   consumer_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/stage" > /dev/null
test -f "$tmp/stage/lib/cmake/ckpt/ckptConfig.cmake"
test -x "$tmp/stage/bin/ckpt"

cmake -S "$src/examples/consumer" -B "$tmp/cmake-build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/stage" > /dev/null
cmake --build "$tmp/cmake-build" > /dev/null
"$tmp/cmake-build/ckpt_consumer" "$tmp/run1"

export PKG_CONFIG_PATH="$tmp/stage/lib/pkgconfig"
# shellcheck disable=SC2046
c++ -o "$tmp/pc-consumer" "$src/examples/consumer/main.cc" $(pkg-config --cflags --libs --static ckpt)
"$tmp/pc-consumer" "$tmp/run2"
