#!/usr/bin/env bash
# Builds the CUDA library of another commit (an experiment kept in history as a commit and its revert, or any other)
# into .gpu/<name>.so.xz (name: ab unless given), so one device call can time it against this checkout's build
# (gpu-session.sh ab-decode, ab-det; AB_XZ=.gpu/<name>.so.xz picks a library other than .gpu/ab.so.xz).
# The commit must share this checkout's generated headers (build/gen/cuda): same kernels/cuda/target.ts lists.
# Usage, from the checkout after `npm install`:  bash scripts/device/ab-lib.sh <commit> [name]   (JOBS=n: compile jobs, 2)
# then (after pack-gpu.sh and `xz -k build/libflashattn_cuda.so`) a device run with carry [".gpu",
# "build/libflashattn_cuda.so.xz", "build/gen"]:  bash scripts/device/gpu-session.sh ab-det   (or ab-decode)
set -euo pipefail
cd "$(dirname "$0")/../.."
commit=$(git rev-parse --verify "${1:?usage: ab-lib.sh <commit> [name]}^{commit}")
out=.gpu/${2:-ab}.so.xz
tree=$(mktemp -d /tmp/flashattn-ab.XXXXXX)
git worktree add --detach "$tree" "$commit" >/dev/null
trap 'git worktree remove --force "$tree"' EXIT
ln -s "$PWD/node_modules" "$tree/node_modules"
(cd "$tree" && node_modules/.bin/bun kernels/build.ts cuda --jobs "${JOBS:-2}")
mkdir -p .gpu
xz -6 -T2 -c "$tree/build/libflashattn_cuda.so" > "$out.tmp" && mv "$out.tmp" "$out"
echo "ab-lib: $out is libflashattn_cuda built from ${commit:0:7}" >&2
