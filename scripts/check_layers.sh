#!/usr/bin/env bash
# Fails when a source file includes a header of a higher layer. Layers, from
# the ground up (a file may include its own layer and any lower one):
#   0 core   1 io   2 format comm convert   3 plan   4 engine
#   5 async consolidate checkpoint moe   6 cli python
# Public headers (include/ckpt/*.h) belong to the layer that implements them.
#   scripts/check_layers.sh            # exit 1 and one line per upward include
set -euo pipefail
cd "$(dirname "$0")/.."

layer_of_area() {
  case "$1" in
    core) echo 0 ;;
    io) echo 1 ;;
    format | comm | convert) echo 2 ;;
    plan) echo 3 ;;
    engine) echo 4 ;;
    async | consolidate | checkpoint | moe) echo 5 ;;
    cli | python) echo 6 ;;
    *) echo "" ;;
  esac
}

# The area that implements each public header.
area_of_public() {
  case "$1" in
    status.h | dtype.h | shape.h | state_dict.h | log.h | version.h) echo core ;;
    storage.h | s3.h) echo io ;;
    comm.h | mpi_comm.h) echo comm ;;
    safetensors.h | hf.h | torch_bin.h) echo format ;;
    sharded.h) echo engine ;;
    staging.h) echo async ;;
    consolidate.h) echo consolidate ;;
    checkpointer.h) echo checkpoint ;;
    moe.h) echo moe ;;
    *) echo "" ;;
  esac
}

fail=0
check() {  # file, its area
  local file=$1 area=$2 own inc target tl
  own=$(layer_of_area "$area")
  [ -n "$own" ] || { echo "check_layers: $file: unknown area '$area'"; fail=1; return; }
  while IFS= read -r inc; do
    case "$inc" in
      ckpt/*) target=$(area_of_public "${inc#ckpt/}")
              [ -n "$target" ] || { echo "$file: includes \"$inc\", a public header with no layer in check_layers.sh"; fail=1; continue; } ;;
      */*) target=${inc%%/*} ;;
      *) continue ;;  # a header of the same directory
    esac
    tl=$(layer_of_area "$target")
    [ -n "$tl" ] || continue  # not a ckpt area (a test or generated header)
    if [ "$tl" -gt "$own" ]; then
      echo "$file: includes \"$inc\" ($target, layer $tl) from $area (layer $own)"
      fail=1
    fi
  done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$file")
}

for file in src/*/*.cc src/*/*.h; do
  area=${file#src/}
  check "$file" "${area%%/*}"
done
for file in include/ckpt/*.h; do
  area=$(area_of_public "$(basename "$file")")
  [ -n "$area" ] || { echo "$file: public header with no layer in check_layers.sh"; fail=1; continue; }
  check "$file" "$area"
done
if [ "$fail" -ne 0 ]; then
  echo "check_layers: a lower layer includes a higher one (see above)" >&2
  exit 1
fi
echo "check_layers: OK (no upward include)"
