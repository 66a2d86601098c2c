#!/usr/bin/env bash
# Packs Bun and the runtime JS dependencies into .gpu/ for the GPU machine (see ../shared/device/README.md), then
# drops what only development needs (TypeScript, type packages): Bun + node_modules must stay well under the
# 64 MiB the device tool carries.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
bash ../shared/device/pack.sh
rm -rf .gpu/node_modules/{typescript,bun-types,@types,undici-types}
du -sh .gpu/bun.xz .gpu/node_modules | sed 's/^/pack-gpu: /' >&2
