#!/usr/bin/env bash
# The test command (README, .ci/run): builds what this machine can build, runs every bun test suite, and closes
# with the plain line CI reads, "N passed, N failed". Fails when any test fails or when zero tests passed.
# Extra arguments go to `bun test` (e.g. a file filter: scripts/ci/test.sh test/gpu).
set -uo pipefail
cd "$(dirname "$0")/../.."
# Bun from npm (node_modules/.bin), or one already on the PATH (the GPU machine's, see scripts/device/gpu-session.sh).
bun=node_modules/.bin/bun
[ -x "$bun" ] || bun=$(command -v bun) || { echo "scripts/ci/test.sh: no Bun: run npm install first" >&2; exit 1; }
"$bun" kernels/build.ts || { echo "scripts/ci/test.sh: the native build failed" >&2; echo "0 passed, 1 failed"; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# bun test prints its summary on stderr; NO_COLOR keeps the counts free of escape codes.
NO_COLOR=1 "$bun" test --timeout 120000 "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
pass=$(grep -Eo '^ *[0-9]+ pass$' "$log" | grep -Eo '[0-9]+' | tail -n 1)
fail=$(grep -Eo '^ *[0-9]+ fail$' "$log" | grep -Eo '[0-9]+' | tail -n 1)
skip=$(grep -Eo '^ *[0-9]+ skip$' "$log" | grep -Eo '[0-9]+' | tail -n 1)
echo "${pass:-0} passed, ${fail:-0} failed, ${skip:-0} skipped"
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
if [ "${pass:-0}" -eq 0 ]; then echo "scripts/ci/test.sh: zero tests passed" >&2; exit 1; fi
