#!/usr/bin/env bash
# One batched session on the GPU machine (device tool): set up Bun from .gpu/, build the libraries there, then run
# the steps named on the command line, logging each under $OUT and printing a short summary last.
#
#   steps: build | tests | verify | sanitize | doctor | bench-fa | bench-decode | bench-quick
#   e.g.   bash scripts/gpu-session.sh build tests doctor bench-fa
#
# Carry [".gpu"] (made by scripts/pack-gpu.sh). Each step has its own time limit so one slow step cannot eat the
# call; a failing step is reported in the summary and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/flashattn-out}
mkdir -p "$OUT"
summary=()

if ! command -v bun >/dev/null 2>&1; then
  xz -dc .gpu/bun.xz > /tmp/bun && chmod +x /tmp/bun && export PATH=/tmp:$PATH
fi
[ -e node_modules ] || ln -sfn .gpu/node_modules node_modules

step() { # name, limit (s), command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name" >&2
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-14s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
  tail -n 25 "$OUT/$name.log" >&2
  return $rc
}

for s in "$@"; do
  case "$s" in
    build) step build 420 bun kernels/build.ts cpu cuda --jobs 16 ;;
    tests) step tests 540 bash scripts/test.sh test/gpu.test.ts test/ffi.test.ts ;;
    verify) step verify 420 python3 scripts/cuda_verify.py ;;
    sanitize) step sanitize 420 compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/cuda_verify.py --small ;;
    doctor)
      step doctor-json 120 bun cli.ts doctor --json --verbose
      cp "$OUT/doctor-json.log" "$OUT/doctor.json"
      step doctor 120 bun cli.ts doctor --verbose ;;
    bench-fa) step bench-fa 560 bun cli.ts bench --preset fa --max-seconds 480 --save "$OUT/bench-fa.json" --chart "$OUT/bench-fa.svg" ;;
    bench-decode) step bench-decode 400 bun cli.ts bench --preset decode --max-seconds 330 --save "$OUT/bench-decode.json" --chart "$OUT/bench-decode.svg" ;;
    bench-quick) step bench-quick 200 bun cli.ts bench --preset quick ;;
    *) echo "unknown step $s" >&2; summary+=("$s: unknown step") ;;
  esac
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
