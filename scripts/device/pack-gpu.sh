#!/usr/bin/env bash
# What the GPU machine lacks, packed into .gpu/ (git-ignored) to be carried with a device run: that machine has nvcc
# and Python with PyTorch but no Node, Bun or Deno and no package registry.
#   .gpu/bun.xz         the Bun binary npm installed (node_modules), xz-compressed (~39 MB)
#   .gpu/node_modules/  the JavaScript dependencies (zx included: the device builds there), without the runtime binaries
# A run then starts with
#   xz -dc .gpu/bun.xz > /tmp/bun && chmod +x /tmp/bun && export PATH=/tmp:$PATH && ln -sfn .gpu/node_modules node_modules
# (scripts/device/gpu-session.sh does that). The device tool carries at most 64 MiB (tracked files + carried paths).
# Usage, from the checkout after `npm install`:  bash scripts/device/pack-gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bun_bin=$(node -e '
  const fs = require("fs"), path = require("path");
  // The platform package holds the real binary whether or not bun'"'"'s postinstall ran (bin/flashattn finds it the same way).
  for (const pkg of ["@oven/bun-linux-x64", "@oven/bun-linux-x64-baseline", "bun"]) {
    for (const rel of ["bin/bun", "bin/bun.exe"]) {
      const f = path.join("node_modules", pkg, rel);
      if (fs.existsSync(f) && fs.statSync(f).size > 1e7) { console.log(f); process.exit(0); }
    }
  }
  process.exit(1);') || { echo "pack-gpu: no Bun binary under node_modules; run npm install first" >&2; exit 1; }
mkdir -p .gpu
# Recompress only when the binary changed (xz of 100 MB takes about 40 s on two cores).
stamp=$(stat -L -c '%s-%Y' "$bun_bin")
if [[ ! -f .gpu/bun.xz || "$(cat .gpu/bun.stamp 2>/dev/null)" != "$stamp" ]]; then
  echo "pack-gpu: compressing $bun_bin" >&2
  xz -6 -T2 -c "$bun_bin" > .gpu/bun.xz.tmp && mv .gpu/bun.xz.tmp .gpu/bun.xz && echo "$stamp" > .gpu/bun.stamp
fi
rm -rf .gpu/node_modules && mkdir -p .gpu/node_modules
for d in node_modules/*; do
  case "$(basename "$d")" in
    bun | deno | @oven | @deno | typescript | bun-types | @types | undici-types | .bin | .cache) continue ;;
  esac
  cp -a "$d" .gpu/node_modules/
done
du -sh .gpu/bun.xz .gpu/node_modules | sed 's/^/pack-gpu: /' >&2
echo "pack-gpu: tracked files + .gpu: about $(( $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) / 1048576 + $(du -sm .gpu | cut -f1) )) MiB (the device tool carries 64 MiB)" >&2
