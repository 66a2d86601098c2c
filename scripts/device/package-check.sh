#!/usr/bin/env bash
# The GPU-machine check of the install-without-a-compiler promise (issue 12): unpack what a user downloads and run it
# with no compiler on the PATH and no build step, then require that the doctor chooses CUDA (exit 0) and that a
# checked bf16, head dim 128, causal problem passes on the prebuilt CUDA library.
#
#   bash scripts/device/package-check.sh dist/flashattn-linux-x64.tar.xz   # the standalone release (npm run release)
#   bash scripts/device/package-check.sh flashattn-0.1.0.tgz               # the npm package, run with the Bun of .gpu/
#
# The GPU machine reaches no registry, so the npm package is not `npm install`ed there: it is unpacked and its cli.ts
# run by the Bun that scripts/device/pack-gpu.sh carries (carry [".gpu", "<tarball>"]); the release needs nothing (carry
# ["dist/flashattn-linux-x64.tar.xz"], 42 MB). Logs go to $OUT (default /tmp/flashattn-out); exit 0 only if all passed.
set -uo pipefail
archive=${1:?usage: package-check.sh <flashattn-linux-x64.tar.xz | flashattn-x.y.z.tgz>}
archive=$(realpath "$archive")
repo=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-/tmp/flashattn-out}
mkdir -p "$OUT"
work=$(mktemp -d /tmp/flashattn-package-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
clean_path=/usr/bin:/bin
failed=0

case "$archive" in
  *.tar.xz)
    tar -xJf "$archive" -C "$work" || exit 1
    flashattn=("$work/flashattn-linux-x64/flashattn")
    libdir="$work/flashattn-linux-x64" ;;
  *.tgz)
    tar -xzf "$archive" -C "$work" || exit 1
    bun=$(command -v bun || true)
    if [ -z "$bun" ]; then xz -dc "$repo/.gpu/bun.xz" > "$work/bun" && chmod +x "$work/bun" && bun="$work/bun"; fi
    ln -s "$repo/.gpu/node_modules" "$work/package/node_modules"
    flashattn=("$bun" "$work/package/cli.ts")
    libdir="$work/package/prebuilt/linux-x64" ;;
  *) echo "package-check: $archive is neither a .tar.xz release nor a .tgz npm package" >&2; exit 2 ;;
esac

for tool in nvcc hipcc g++ gcc; do
  found=$(env -i PATH=$clean_path bash -c "command -v $tool" || true)
  echo "package-check: $tool on the PATH ($clean_path): ${found:-none}"
  [ "$tool" = nvcc ] && [ -n "$found" ] && { echo "package-check: nvcc is on $clean_path; this check needs a PATH without it" >&2; exit 2; }
done
echo "package-check: libraries: $(cd "$libdir" && ls libflashattn_* | tr '\n' ' ')"

check() { # name, command... ; logs stdout+stderr, records failure
  local name=$1; shift
  env -i PATH=$clean_path HOME=/tmp NO_COLOR=1 "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local rc=$?
  echo "package-check: $name exit $rc"
  return $rc
}

check doctor "${flashattn[@]}" doctor --verbose; cat "$OUT/doctor.out"
if check doctor-json "${flashattn[@]}" doctor --json; then
  chosen=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["summary"]["chosen_backend"])' "$OUT/doctor-json.out")
  echo "package-check: doctor chose $chosen"
  [ "$chosen" = cuda ] || { echo "package-check: FAIL: doctor did not choose cuda" >&2; failed=1; }
else
  echo "package-check: FAIL: doctor --json exited non-zero" >&2; failed=1
fi

if check run-cuda "${flashattn[@]}" run --backend cuda --shape 2,2048,2048,16,16,128 --dtype bf16 --causal --check --json; then
  python3 - "$OUT/run-cuda.out" "$libdir" <<'PY' || failed=1
import json, sys
doc = json.load(open(sys.argv[1]))
chosen = next(d for d in doc["decisions"] if d["verdict"] == "chosen")
print(f"package-check: run --backend cuda: kernel {doc['kernel']}, relative error {doc['check']['relativeError']:.3g} "
      f"(limit {doc['check']['limit']}), pass {doc['check']['pass']}, library {chosen['library']}")
assert doc["check"]["pass"], "the check did not pass"
assert chosen["library"].startswith(sys.argv[2]), "the library is not the prebuilt one"
PY
else
  echo "package-check: FAIL: run --backend cuda exited non-zero: $(tail -c 600 "$OUT/run-cuda.out" "$OUT/run-cuda.err")" >&2; failed=1
fi
[ $failed = 0 ] && echo "package-check: PASS" || echo "package-check: FAIL"
exit $failed
