#!/usr/bin/env bash
# One batched session on the GPU machine (device tool): set up Bun from .gpu/, build the libraries there, then run
# the steps named on the command line, logging each under $OUT and printing a short summary last.
#
#   steps: build | tests | gpu-tests | ring-tests | bench-context-parallel | kvcache-tests | layouts | tma-layout | verify | verify-sm90 | verify-decode | verify-auto | verify-fp8 | verify-fp8-decode | sanitize | sanitize-fp8 | racecheck-fp8 |
#          racecheck(128) | racecheck-persistent | racecheck-det | kvcache-sanitize | doctor |
#          profile | profile-det | profile-bwd64 | profile-fwd64 | profile-decode | profile-fp8 | tile-cost | bench-kernels | bench-hdim256 | bench-fp8 | bench-fa | bench-decode | bench-decode-fast | decode-repeat | bench-quick | bench-subset |
#          ab-decode | ab-det | ab-fwd  (this build against .gpu/ab.so.xz, another commit's library: scripts/device/ab-lib.sh) |
#          fwd-libs / bwd-libs  (this build against each library in FWD_LIBS / BWD_LIBS)
#   e.g.   bash scripts/device/gpu-session.sh build tests doctor bench-fa
#
# Carry [".gpu"] (made by scripts/device/pack-gpu.sh) for the steps that run Bun (build, tests, doctor, bench-*); the
# Python steps (layouts, verify*, sanitize, racecheck, bench-kernels, bench-hdim256, bench-fp8) need only a built library and
# build/gen. Each step has its own time limit so one slow step cannot eat the call; a failing step is reported in the
# summary and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/flashattn-out}
# Every log and result goes to a folder outside $OUT, packed into $OUT/session-<first step>.tgz after each step: the
# device tool brings back at most 8 files, a call cut at its time limit still brings back every step that finished,
# and two sessions in one call (different first steps) keep their own archives.
TAG=${1:-none}
LOGS=/tmp/flashattn-logs/$TAG
rm -rf "$LOGS" && mkdir -p "$LOGS"  # a warm machine keeps /tmp between calls
export FLASHATTN_SESSION_LOGS=$LOGS  # kvcache-sanitize.sh logs under it
summary=()

# Bun and the JS dependencies from .gpu/, for the steps that run TypeScript (the Python steps need neither).
with_bun() {
  if ! command -v bun >/dev/null 2>&1; then
    xz -dc .gpu/bun.xz > /tmp/bun && chmod +x /tmp/bun && export PATH=/tmp:$PATH
  fi
  [ -e node_modules ] || ln -sfn .gpu/node_modules node_modules
}
# A library carried xz-compressed (build/libflashattn_cuda.so.xz, to stay under the carry limit) is unpacked first.
if [ build/libflashattn_cuda.so.xz -nt build/libflashattn_cuda.so ]; then
  xz -dc build/libflashattn_cuda.so.xz > build/libflashattn_cuda.so
fi
export PYTHONUNBUFFERED=1
# The B side of the ab-* steps: another commit's CUDA library (scripts/device/ab-lib.sh), timed against build/'s in the
# same call, each side twice, alternating.
# AB_XZ names it when .gpu/ holds more than one.
AB_LIB=/tmp/flashattn-ab.so
AB_XZ=${AB_XZ:-.gpu/ab.so.xz}
[ -f "$AB_XZ" ] && xz -dc "$AB_XZ" > "$AB_LIB"

# Commands more than one step runs: the decode preset against the fast baselines; the backward sweep of the fa
# subset without baselines; the forward over 1k-16k keys at one token count; ncu of the hdim-128 backward at 8k (time,
# L2 hit rate, DRAM bytes).
DECODE_BENCH=(bun cli.ts bench --preset decode --baselines sdpa-flash,sdpa-cudnn)
BWD_BENCH=(bun cli.ts bench --seqlen 2k,8k --hdim 64,128,256 --causal both --direction bwd --baselines none)
FWD_SWEEP=(bun cli.ts bench --seqlen 1k,2k,4k,8k,16k --hdim 64,128,256 --causal both --direction fwd --warmup 2 --iters 10 --quiet)
NCU_BWD128=(ncu --clock-control none --kernel-name "regex:bwd_sm90" --launch-skip 1 --launch-count 1
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats
  --metrics lts__t_sector_hit_rate.pct,dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum
  python3 scripts/perf/cuda_bench.py --hdims 128 --seqlens 8192 --causal 0 --directions bwd --warmup 1 --iters 1 --no-sdpa)

step() { # name, limit (s), command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name" >&2
  timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-14s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
  tail -n 15 "$LOGS/$name.log" >&2
  tar -czf "$OUT/session-$TAG.tgz" -C "$LOGS" .
  return $rc
}

case " $* " in *" build "* | *" tests "* | *" gpu-tests "* | *" ring-tests "* | *" bench-context-parallel "* | *" kvcache-tests "* | *" kvcache-sanitize "* | *" doctor "* | *" bench-fa "* | *" bench-decode "* | *" bench-decode-fast "* | *" decode-repeat "* | *" bench-quick "* | *" bench-subset "* | *" fwd-libs "* | *" bwd-libs "* | *" ab-"*) with_bun ;; esac
case " $* " in *" ab-"*) [ -f "$AB_LIB" ] || { echo "ab-* steps: no $AB_XZ (scripts/device/ab-lib.sh <commit>)" >&2; exit 2; } ;; esac

# fwd-libs / bwd-libs: this build against each library of a list (direction, list of .xz files)
libs_against_build() {
  local dir=$1 x lib name baselines i c
  local libs=(build/libflashattn_cuda.so) groups=()
  for x in $2; do
    xz -dc "$x" > "/tmp/$(basename "$x" .xz)" && libs+=("/tmp/$(basename "$x" .xz)")
  done
  # the #17 points of one library: label, library, baselines, then extra bench flags; the report joins `groups`
  time_lib() {
    local label=$1 lib=$2 against=$3
    shift 3
    step "$label" 150 env FLASHATTN_LIB="$lib" bun cli.ts bench --seqlen 2k,8k --hdim 64,128,256 --causal both \
      --warmup 2 --iters 10 --quiet --baselines "$against" --save "$LOGS/$label.json" "$@"
    groups+=("$(basename "$lib" .so)=$LOGS/$label.json")
  }
  for i in 1 2; do
    for lib in "${libs[@]}"; do
      baselines=none
      [ "$lib$i" = "build/libflashattn_cuda.so1" ] && baselines=sdpa-flash,sdpa-cudnn
      time_lib "$dir-$(basename "$lib" .so)-$i" "$lib" "$baselines" --direction "$dir"
    done
  done
  step "$dir-compare" 30 python3 scripts/perf/bench_compare.py "${groups[@]}"
  # The backward: the deterministic mode of every library once too (#17 holds it within 15% of the normal one)
  if [ "$dir" = bwd ]; then
    groups=()
    for lib in "${libs[@]}"; do time_lib "bwd-det-$(basename "$lib" .so)" "$lib" none --direction bwd --deterministic; done
    step "bwd-det-compare" 30 python3 scripts/perf/bench_compare.py "${groups[@]}"
  fi
  # LIB_CHECKS picks the checks of each candidate (verify, auto, fp8, memcheck by default; racecheck: the quick grid's
  # hdim-64 and hdim-128 cases, whole reports in the logs), to fit a call's time limit
  for lib in "${libs[@]:1}"; do
    name=$(basename "$lib" .so)
    for c in ${LIB_CHECKS:-verify auto fp8 memcheck}; do
      case $c in
        verify) step "verify-$name" 200 env FLASHATTN_LIB="$lib" python3 scripts/check/cuda_verify.py --kernel cuda-wgmma-sm90 ;;
        auto) step "verify-auto-$name" 200 env FLASHATTN_LIB="$lib" python3 scripts/check/cuda_verify.py --quick --kernel '' ;;
        fp8) step "verify-fp8-$name" 200 env FLASHATTN_LIB="$lib" python3 scripts/check/cuda_fp8.py --quick ;;
        memcheck) step "memcheck-$name" 200 env FLASHATTN_LIB="$lib" compute-sanitizer --tool memcheck --error-exitcode 1 \
          python3 scripts/check/cuda_verify.py --quick --kernel cuda-wgmma-sm90 ;;
        racecheck)
          for d in 64 128; do
            step "racecheck$d-$name" 200 env FLASHATTN_LIB="$lib" compute-sanitizer --tool racecheck --error-exitcode 1 \
              python3 scripts/check/cuda_verify.py --quick --kernel cuda-wgmma-sm90 --filter "hdim$d"
          done ;;
        *) summary+=("$dir-libs: unknown check $c") ;;
      esac
    done
  done
}

for s in "$@"; do
  case "$s" in
    build) step build 420 bun kernels/build.ts cpu cuda --jobs 16 ;;
    tests) step tests 540 bash scripts/ci/test.sh test/gpu.test.ts test/native-limits.test.ts test/ffi.test.ts ;;
    gpu-tests) step gpu-tests 300 env NO_COLOR=1 bun test --timeout 120000 test/gpu.test.ts test/gpu_fp8.test.ts test/kvcache_fp8.test.ts test/native-limits.test.ts test/ffi.test.ts ;;  # carried libraries, no build
    # context parallelism: the ring over NCCL (a ring of 1 on one GPU, of every GPU on several) and in-process ranks
    ring-tests) step ring-tests 420 env NO_COLOR=1 bun test --timeout 300000 test/ring_gpu.test.ts test/ring.test.ts test/nccl.test.ts ;;
    bench-context-parallel) step bench-context-parallel 580 bun cli.ts bench --preset context-parallel --seqlen 128k --iters 2 --save "$LOGS/bench-context-parallel.json" ;;
    kvcache-tests) step kvcache-tests 420 env NO_COLOR=1 bun test --timeout 120000 test/gpu.test.ts -t kvcache ;;
    # memcheck on every kvcache path, racecheck on the cuda-* ones, the CLI as driver (logs in logs/kvcache-sanitize/)
    kvcache-sanitize) step kvcache-sanitize 580 bash scripts/device/kvcache-sanitize.sh ;;
    layouts) step layouts 120 bash -c "nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a -Ibuild/gen/cuda scripts/check/wgmma_layouts.cu -o /tmp/wgmma_layouts && /tmp/wgmma_layouts" ;;
    # TMA tiles (tma.cuh) against the cp.async tiles of the Hopper kernels, byte for byte
    tma-layout) step tma-layout 120 bash -c "nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a -Ibuild/gen/cuda scripts/check/tma_layout.cu -o /tmp/tma_layout && /tmp/tma_layout" ;;
    verify) step verify 420 python3 scripts/check/cuda_verify.py --json "$LOGS/verify-sm80.json" ;;
    verify-sm90) step verify-sm90 420 python3 scripts/check/cuda_verify.py --kernel cuda-wgmma-sm90 --json "$LOGS/verify-sm90.json" ;;
    verify-decode) step verify-decode 300 python3 scripts/check/cuda_verify.py --kernel cuda-decode --json "$LOGS/verify-decode.json" ;;
    verify-auto) step verify-auto 420 python3 scripts/check/cuda_verify.py --kernel "" --json "$LOGS/verify-auto.json" ;;
    # the fp8 forward (cuda-wgmma-fp8-sm90) against fp64, and timed beside our bf16 forward (each timed shape checked first)
    verify-fp8) step verify-fp8 300 python3 scripts/check/cuda_fp8.py --json "$LOGS/verify-fp8.json" ;;
    # fp8 on cuda-decode (fp8 converted to fp16 in shared memory by each warp): the decode-shaped cases, then memcheck and
    # racecheck of the decode kernel on the head-dim-128 ones
    verify-fp8-decode)
      step verify-fp8-decode 300 python3 scripts/check/cuda_fp8.py --kernel cuda-decode --filter decode --json "$LOGS/verify-fp8-decode.json"
      step sanitize-fp8-decode 300 compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/check/cuda_fp8.py --kernel cuda-decode --filter decode-d128
      step racecheck-fp8-decode 300 compute-sanitizer --tool racecheck --kernel-regex kns=decode_kernel --error-exitcode 1 python3 scripts/check/cuda_fp8.py --kernel cuda-decode --filter decode-d128 ;;
    profile-fp8)  # hardware counters and per-SASS stall samples of the fp8 forward at hdim 128, seqlen 8k (its first timed run)
      step ncu-fp8 200 ncu --clock-control none --kernel-name-base demangled --kernel-name regex:fp8_e4m3 --launch-skip 1 --launch-count 1 \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy \
        --section SchedulerStats --section WarpStateStats --section InstructionStats --section LaunchStats \
        python3 scripts/check/cuda_fp8.py --bench --seqlens 8192 --warmup 1 --iters 1
      step ncu-fp8-source 200 ncu --clock-control none --kernel-name-base demangled --kernel-name regex:fp8_e4m3 --launch-skip 1 --launch-count 1 \
        --section SourceCounters --section WarpStateStats --page source --print-source sass --csv \
        python3 scripts/check/cuda_fp8.py --bench --seqlens 8192 --warmup 1 --iters 1 ;;
    # memcheck over the fp8 grid's d128 / d192 cases (short sequences), racecheck on the head-dim-128 fp8 cases (the producer's V transposition)
    sanitize-fp8) step sanitize-fp8 300 compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/check/cuda_fp8.py --quick --filter d1 ;;
    racecheck-fp8) step racecheck-fp8 300 compute-sanitizer --tool racecheck --kernel-regex kns=fwd_sm90_kernel --error-exitcode 1 python3 scripts/check/cuda_fp8.py --quick --filter d128 ;;
    bench-fp8) step bench-fp8 300 python3 scripts/check/cuda_fp8.py --bench --json "$LOGS/bench-fp8.json" --md "$LOGS/bench-fp8.md" ;;
    sanitize) step sanitize 420 compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/check/cuda_verify.py --quick --kernel cuda-wgmma-sm90 ;;
    racecheck) step racecheck 150 compute-sanitizer --tool racecheck --error-exitcode 1 python3 scripts/check/cuda_verify.py --quick --kernel cuda-wgmma-sm90 --filter hdim64 ;;
    racecheck128) step racecheck128 200 compute-sanitizer --tool racecheck --error-exitcode 1 python3 scripts/check/cuda_verify.py --quick --kernel cuda-wgmma-sm90 --filter hdim128 ;;
    # (this case's fp64 reference runs cuBLAS kernels that racecheck flags on its own account: read the report for fa:: names)
    # the deterministic backward, one case per run (a sanitizer failure ends the process): several key blocks per CTA
    # stop racecheck with an internal "hardware exception", with or without its async-copy tracking (docs/perf-cuda.md);
    # which cases, and whether synccheck fails too
    racecheck-det)
      for c in deterministic-blocks-per-cta-hdim64 deterministic-blocks-per-cta-hdim128 deterministic-gqa-causal \
               deterministic-window splitd-deterministic; do
        step "racecheck-$c" 60 compute-sanitizer --tool racecheck --kernel-name kns=bwd_sm90 --error-exitcode 1 \
          python3 scripts/check/cuda_verify.py --kernel cuda-wgmma-sm90 --filter "$c"
      done
      step racecheck-det-noasync 60 compute-sanitizer --tool racecheck --racecheck-memcpy-async no --kernel-name kns=bwd_sm90 \
        --error-exitcode 1 python3 scripts/check/cuda_verify.py --kernel cuda-wgmma-sm90 --filter deterministic-blocks-per-cta-hdim64
      step synccheck-det 60 compute-sanitizer --tool synccheck --kernel-name kns=bwd_sm90 --error-exitcode 1 \
        python3 scripts/check/cuda_verify.py --kernel cuda-wgmma-sm90 --filter deterministic-blocks-per-cta-hdim64 ;;
    racecheck-persistent) step racecheck-persistent 200 compute-sanitizer --tool racecheck --error-exitcode 1 python3 scripts/check/cuda_verify.py --kernel cuda-wgmma-sm90 --filter persistent-small ;;
    tile-cost) step tile-cost 120 python3 scripts/perf/cuda_tile_cost.py ;;  # the hdim-64 forward's fixed and per-key-block cost per tile
    bench-kernels) step bench-kernels 420 python3 scripts/perf/cuda_bench.py --seqlens 1024,2048,4096,8192,16384 --also cuda-mma-sm80 --json "$LOGS/bench-kernels.json" --md "$LOGS/bench-kernels.md" ;;
    bench-hdim256) step bench-hdim256 200 python3 scripts/perf/cuda_bench.py --hdims 256 --seqlens 2048,8192 --causal 0,1 --also cuda-mma-sm80 --json "$LOGS/bench-hdim256.json" --md "$LOGS/bench-hdim256.md" ;;
    profile)  # hardware counters of the wgmma kernels at hdim 128, seqlen 8k, and their SASS
      for kern in fwd_sm90 bwd_sm90; do
        step "ncu-$kern" 200 ncu --clock-control none --kernel-name "regex:$kern" --launch-skip 1 --launch-count 1 \
          --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy \
          --section SchedulerStats --section WarpStateStats --section InstructionStats --section LaunchStats \
          --section SourceCounters python3 scripts/perf/cuda_bench.py --hdims 128 --seqlens 8192 --causal 0 --warmup 1 --iters 1 --no-cudnn
      done
      for obj in build/obj/cuda/*sm90_hdim128.cu.o; do cuobjdump -sass "$obj" > "$LOGS/$(basename "$obj" .cu.o).sass" 2>&1; done ;;
    profile-det)  # the hdim-128 backward at 8k, deterministic and not: time, L2 hit rate, DRAM bytes (the deterministic cost, docs/perf-cuda.md)
      step ncu-bwd128 200 "${NCU_BWD128[@]}"
      step ncu-bwd128-det 200 "${NCU_BWD128[@]}" --deterministic ;;
    profile-bwd64)  # the hdim-64 backward at 2k (the furthest #17 point): warp states, and stall samples per SASS instruction
      step ncu-bwd64 200 ncu --clock-control none --kernel-name "regex:bwd_sm90" --launch-skip 1 --launch-count 1 \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats --section WarpStateStats \
        --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        python3 scripts/perf/cuda_bench.py --hdims 64 --seqlens 2048 --causal 0 --directions bwd --warmup 1 --iters 1 --no-sdpa
      step ncu-bwd64-source 200 ncu --clock-control none --kernel-name "regex:bwd_sm90" --launch-skip 1 --launch-count 1 \
        --section SourceCounters --section WarpStateStats --page source --print-source sass --csv \
        python3 scripts/perf/cuda_bench.py --hdims 64 --seqlens 2048 --causal 0 --directions bwd --warmup 1 --iters 1 --no-sdpa ;;
    profile-decode)  # launch shape, occupancy, stalls of ours and both baselines' decode kernels at b1 32k (32 / 8 heads, hdim 128)
      step ncu-decode 300 ncu --clock-control none --kernel-name-base demangled --kernel-name "regex:decode|combine|flash|sdpa|cudnn|fmha" \
        --launch-count 12 --section SpeedOfLight --section LaunchStats --section Occupancy --section SchedulerStats \
        --section WarpStateStats --section MemoryWorkloadAnalysis --section SourceCounters \
        python3 scripts/perf/cuda_decode_bench.py --shapes b1:32768 --warmup 1 --iters 1 ;;
    profile-fwd64)  # hardware counters of the hdim-64 forward at seqlen 2k, causal and not (the causal gap)
      for causal in 0 1; do
        step "ncu-fwd64-causal$causal" 200 ncu --clock-control none --kernel-name "regex:fwd_sm90" --launch-skip 1 --launch-count 1 \
          --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats \
          --section SchedulerStats --section WarpStateStats --section SourceCounters \
          --metrics sm__cycles_active.avg,sm__cycles_active.min,sm__cycles_active.max,sm__cycles_elapsed.avg,sm__ctas_launched.sum \
          --print-details all python3 scripts/perf/cuda_bench.py --hdims 64 --seqlens 2048 --causal $causal --warmup 1 --iters 1 --no-cudnn
        # stall samples per SASS instruction
        step "ncu-fwd64-source$causal" 200 ncu --clock-control none --kernel-name "regex:fwd_sm90" --launch-skip 1 --launch-count 1 \
          --section SourceCounters --section WarpStateStats --page source --print-source sass --csv \
          python3 scripts/perf/cuda_bench.py --hdims 64 --seqlens 2048 --causal $causal --warmup 1 --iters 1 --no-cudnn
      done ;;
    doctor)
      step doctor-json 120 bun cli.ts doctor --json --verbose
      cp "$LOGS/doctor-json.log" "$LOGS/doctor.json"
      step doctor 120 bun cli.ts doctor --verbose ;;
    bench-fa) step bench-fa 560 bun cli.ts bench --preset fa --max-seconds 480 --save "$LOGS/bench-fa.json" --chart "$LOGS/bench-fa.svg" ;;
    bench-decode) step bench-decode 400 bun cli.ts bench --preset decode --max-seconds 330 --save "$LOGS/bench-decode.json" --chart "$LOGS/bench-decode.svg" ;;
    # the same cases against the two fast baselines only (naive and SDPA-math take most of the full preset's time)
    bench-decode-fast) step bench-decode-fast 300 "${DECODE_BENCH[@]}" --max-seconds 200 --save "$LOGS/bench-decode.json" --csv "$LOGS/bench-decode.csv" --chart "$LOGS/bench-decode.svg" ;;
    # the decode preset three times against the fast baselines, then ours / each baseline per case in every run: at
    # the bandwidth ceiling a 1% difference is only real when every run shows it
    decode-repeat)
      for i in 1 2 3; do step "decode-$i" 150 "${DECODE_BENCH[@]}" --quiet --save "$LOGS/decode-$i.json"; done
      step decode-compare 30 python3 scripts/perf/bench_compare.py "$LOGS"/decode-{1,2,3}.json ;;
    bench-quick) step bench-quick 200 bun cli.ts bench --preset quick ;;
    bench-subset) step bench-subset 100 bun cli.ts bench --seqlen 2k,8k --hdim 64,128 --causal both --direction fwd,bwd --baselines sdpa-flash,sdpa-cudnn --max-seconds 70 --save "$LOGS/bench-subset.json" --chart "$LOGS/bench-subset.svg" ;;
    # the decode preset (SDPA flash / cuDNN in each run), then the B build's decode checks: cuda_verify, the Bun KV-cache
    # tests, memcheck of a paged append + rotary whose new keys cross a tile
    ab-decode)
      for i in 1 2; do
        step "ab-decode-a$i" 150 "${DECODE_BENCH[@]}" --save "$LOGS/ab-decode-a$i.json"
        step "ab-decode-b$i" 150 env FLASHATTN_LIB="$AB_LIB" "${DECODE_BENCH[@]}" --save "$LOGS/ab-decode-b$i.json"
      done
      step ab-verify-decode 120 env FLASHATTN_LIB="$AB_LIB" python3 scripts/check/cuda_verify.py --kernel cuda-decode
      # the Bun tests load build/'s library: the B one in its place for them, then build/'s back
      cp build/libflashattn_cuda.so /tmp/flashattn-a.so && cp "$AB_LIB" build/libflashattn_cuda.so
      step ab-kvcache-tests 200 env NO_COLOR=1 bun test --timeout 120000 test/gpu.test.ts -t kvcache
      cp /tmp/flashattn-a.so build/libflashattn_cuda.so
      step ab-memcheck-append 120 env FLASHATTN_LIB="$AB_LIB" compute-sanitizer --tool memcheck --error-exitcode 1 bun cli.ts run --decode \
        --cache-len 3000 --append 70 --rotary --page-size 16 --batch 3 --heads-q 16 --heads-kv 4 --head-dim 128 --backend cuda --check ;;
    # the deterministic and the normal backward (hdim 64 / 128 / 256, 2k / 8k, causal and not) of both builds, twice,
    # alternating; then the B build's deterministic cases (bitwise over five runs), racecheck of one with more pairs
    # than SMs, its L2 / DRAM counters at hdim 128 8k, memcheck
    ab-det)
      for i in 1 2; do
        for side in a b; do
          lib=build/libflashattn_cuda.so; [ $side = b ] && lib=$AB_LIB
          step "ab-det-$side$i" 100 env FLASHATTN_LIB="$lib" "${BWD_BENCH[@]}" --deterministic --save "$LOGS/ab-det-$side$i.json"
          step "ab-nondet-$side$i" 100 env FLASHATTN_LIB="$lib" "${BWD_BENCH[@]}" --save "$LOGS/ab-nondet-$side$i.json"
        done
      done
      step ab-verify-det 120 env FLASHATTN_LIB="$AB_LIB" python3 scripts/check/cuda_verify.py --kernel cuda-wgmma-sm90 --filter determin
      step ab-racecheck-det 90 env FLASHATTN_LIB="$AB_LIB" compute-sanitizer --tool racecheck --kernel-name kns=bwd_sm90 --error-exitcode 1 \
        python3 scripts/check/cuda_verify.py --kernel cuda-wgmma-sm90 --filter deterministic-many-heads-window
      step ab-ncu-det 120 env FLASHATTN_LIB="$AB_LIB" "${NCU_BWD128[@]}" --deterministic
      step ab-memcheck-det 200 env FLASHATTN_LIB="$AB_LIB" compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/check/cuda_verify.py \
        --quick --kernel cuda-wgmma-sm90 --filter determin ;;
    # the forward over 1k-16k keys at 16k tokens (hdim 64 / 128 / 256, causal and not) of both builds, twice,
    # alternating, SDPA flash and cuDNN beside the first (a fixed cost per tile shows as the gap closing with length:
    # docs/perf-cuda.md); then the B build's forward checks
    ab-fwd)
      for i in 1 2; do
        for side in a b; do
          lib=build/libflashattn_cuda.so; [ $side = b ] && lib=$AB_LIB
          baselines=none; [ $side$i = a1 ] && baselines=sdpa-flash,sdpa-cudnn
          step "ab-fwd-$side$i" 150 env FLASHATTN_LIB="$lib" "${FWD_SWEEP[@]}" --baselines $baselines --save "$LOGS/ab-fwd-$side$i.json"
        done
      done
      step ab-verify-fwd 200 env FLASHATTN_LIB="$AB_LIB" python3 scripts/check/cuda_verify.py --kernel cuda-wgmma-sm90
      step ab-verify-fwd-auto 200 env FLASHATTN_LIB="$AB_LIB" python3 scripts/check/cuda_verify.py --quick --kernel ''
      step ab-verify-fwd-fp8 200 env FLASHATTN_LIB="$AB_LIB" python3 scripts/check/cuda_fp8.py
      step ab-memcheck-fwd 200 env FLASHATTN_LIB="$AB_LIB" compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/check/cuda_verify.py \
        --quick --kernel cuda-wgmma-sm90 ;;
    # the forward (fwd-libs) or the backward (bwd-libs) at 2k / 8k (hdim 64 / 128 / 256, causal and not) of this build
    # and of each library in FWD_LIBS / BWD_LIBS (xz files from ab-lib.sh, e.g. FWD_LIBS=".gpu/ab-s.so.xz
    # .gpu/ab-p.so.xz"), twice, alternating, SDPA flash and cuDNN beside the first run (the backward: each library's
    # deterministic mode once more); then each candidate's checks (LIB_CHECKS): several candidates in one call
    fwd-libs) libs_against_build fwd "${FWD_LIBS:?fwd-libs: FWD_LIBS names the libraries}" ;;
    bwd-libs) libs_against_build bwd "${BWD_LIBS:?bwd-libs: BWD_LIBS names the libraries}" ;;
    *) echo "unknown step $s" >&2; summary+=("$s: unknown step") ;;
  esac
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
tar -czf "$OUT/session-$TAG.tgz" -C "$LOGS" .
