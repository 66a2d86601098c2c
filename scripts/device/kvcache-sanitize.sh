#!/usr/bin/env bash
# compute-sanitizer over KV-cache attention on the GPU machine: memcheck on every kernel path the CUDA library's
# fa_info marks "kvcache", and racecheck on the CUDA tensor-core ones (names starting "cuda-"), over paged caches
# (pages of 1, 7, 16, 256, shuffled block tables) and appends that cross page boundaries, with rotary both ways.
# The driver is the CLI itself: `bun cli.ts run --decode ... --backend cuda --check --json`, the path forced with
# FLASHATTN_KERNEL, so the sanitizer sees the real library calls (validation, append, rotary, attention, split merge)
# and --check proves the numbers of the same run.
#
#   bash scripts/device/kvcache-sanitize.sh            # every kvcache path; logs under $FLASHATTN_SESSION_LOGS/kvcache-sanitize (gpu-session.sh packs them)
#   KV_PATHS="portable" bash scripts/device/kvcache-sanitize.sh   # only these paths (space-separated names)
#
# Prints one line per (tool, path, case) and a last line "N cases, N clean, N refused, N failed"; exits 1 when any
# case has a sanitizer error, a failed check or an unexpected exit, 3 when the machine cannot run it (no
# compute-sanitizer, no Bun, no CUDA library or no kvcache path). A path refusing a case it does not cover (the
# library's UNSUPPORTED sentence naming it) is listed "refused", not failed; the first case (plain decode) it must run.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/flashattn-out}
LOGS=${FLASHATTN_SESSION_LOGS:-/tmp/flashattn-logs}/kvcache-sanitize
mkdir -p "$LOGS"

die() { echo "kvcache-sanitize: $1" >&2; exit 3; }
command -v compute-sanitizer >/dev/null 2>&1 || die "compute-sanitizer is not on PATH (it ships in the CUDA toolkit's bin/)"
bun=$(command -v bun || echo node_modules/.bin/bun)
[ -x "$bun" ] || die "no Bun (run npm install, or carry .gpu/ and use scripts/device/gpu-session.sh kvcache-sanitize)"
[ -f build/libflashattn_cuda.so ] || die "build/libflashattn_cuda.so is missing: bun kernels/build.ts cuda"

# The kvcache paths, as lib/kvcache.ts kvCacheKernels reads fa_info (one rule, not a copy of it).
all_paths=$("$bun" -e '
  const { openBackend } = await import("./lib/backend.ts");
  const { kvCacheKernels } = await import("./lib/kvcache.ts");
  const { backend, attempts } = openBackend("cuda");
  if (!backend) { console.error(attempts.map((a) => `${a.path}: ${a.error}`).join("; ")); process.exit(3); }
  console.log(kvCacheKernels(backend.info()).map((k) => k.name).join(" "));
') || die "the CUDA library did not load"
paths=${KV_PATHS:-$all_paths}
[ -n "$paths" ] || die "fa_info marks no kernel path \"kvcache\" in build/libflashattn_cuda.so"

# name | flags of `run --decode` (the first case is the plain decode every path must serve).
cases=(
  "decode-paged16-append1-rotary|--cache-len 1000 --page-size 16 --append 1 --rotary --batch 2 --heads-q 32 --heads-kv 8 --head-dim 128"
  "paged1-append2|--cache-len 37 --page-size 1 --append 2 --batch 2 --heads-q 8 --heads-kv 2 --head-dim 64 --dtype fp16"
  "paged7-append5-causal-sq4|--cache-len 30 --page-size 7 --append 5 --seqlen-q 4 --causal --batch 2 --heads-q 8 --heads-kv 2 --head-dim 128"
  "paged256-append9-gptj|--cache-len 250 --page-size 256 --append 9 --rotary --rotary-interleaved --batch 2 --heads-q 8 --heads-kv 1 --head-dim 128 --dtype fp16"
  "paged16-append16-causal-sq16|--cache-len 500 --page-size 16 --append 16 --seqlen-q 16 --causal --batch 2 --heads-q 32 --heads-kv 8 --head-dim 128"
  "contiguous-append4-window-sq4|--cache-len 300 --append 4 --seqlen-q 4 --window 32,0 --batch 2 --heads-q 8 --heads-kv 2 --head-dim 64"
  "paged64-4k-split-auto|--cache-len 4095 --page-size 64 --append 1 --rotary --batch 1 --heads-q 32 --heads-kv 8 --head-dim 128"
  "paged16-d256-append3|--cache-len 200 --page-size 16 --append 3 --batch 2 --heads-q 8 --heads-kv 2 --head-dim 256"
)

total=0 clean=0 refused=0 failed=0
# The kernel that ran, as the run document names it (its first "kernel" key).
kernel_of() { grep -Eo '"kernel": ?"[^"]*"' "$1" | head -n 1 | cut -d'"' -f4; }
# tool, path, case name, flags: one line of verdict.
run_case() {
  local tool=$1 path=$2 name=$3 flags=$4 first=$5
  local log="$LOGS/$tool-$path-$name"
  total=$((total + 1))
  # shellcheck disable=SC2086  # the flags are words
  FLASHATTN_KERNEL=$path NO_COLOR=1 timeout --kill-after=10 400 compute-sanitizer --tool "$tool" --target-processes all \
    --log-file "$log.sanitizer" --print-limit 20 "$bun" cli.ts run --decode $flags --backend cuda --check --json \
    > "$log.json" 2> "$log.stderr"
  local rc=$? verdict summary
  if [ "$tool" = memcheck ]; then
    summary=$(grep -Eo 'ERROR SUMMARY: [0-9]+ errors?' "$log.sanitizer" | tail -n 1)
  else
    summary=$(grep -Eo 'RACECHECK SUMMARY: [0-9]+ hazards? displayed \([0-9]+ errors?, [0-9]+ warnings?\)' "$log.sanitizer" | tail -n 1)
  fi
  local errors kernel
  kernel=$(kernel_of "$log.json")
  errors=$(printf '%s' "$summary" | grep -Eo '[0-9]+ errors?' | grep -Eo '[0-9]+' | head -n 1)
  if [ "$rc" -ne 0 ] && [ "$first" != 1 ] && grep -q "UNSUPPORTED\|no kernel can run this request" "$log.stderr" \
    && grep -q "$path" "$log.stderr" && [ "${errors:-0}" = 0 ]; then
    verdict="refused: $(head -n 1 "$log.stderr" | cut -c1-160)"
    refused=$((refused + 1))
  elif [ "$rc" -eq 0 ] && [ -n "$summary" ] && [ "${errors:-1}" = 0 ] && grep -Eq '"pass": ?true' "$log.json" \
    && [ "$(kernel_of "$log.json")" = "$path" ]; then
    verdict="clean ($summary; check pass)"
    clean=$((clean + 1))
  else
    verdict="FAILED (exit $rc; ${summary:-no sanitizer summary}; ran ${kernel:-nothing}; $(head -n 1 "$log.stderr" | cut -c1-120)) — see $log.*"
    failed=$((failed + 1))
  fi
  printf '%-9s %-22s %-32s %s\n' "$tool" "$path" "$name" "$verdict"
}

for path in $paths; do
  tools="memcheck"
  case "$path" in cuda-*) tools="memcheck racecheck" ;; esac
  for tool in $tools; do
    first=1
    for c in "${cases[@]}"; do
      run_case "$tool" "$path" "${c%%|*}" "${c#*|}" "$first"
      first=0
    done
  done
done

echo "$total cases, $clean clean, $refused refused, $failed failed"
[ "$failed" -eq 0 ] && [ "$clean" -gt 0 ]
