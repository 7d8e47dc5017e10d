#!/usr/bin/env bash
# Times the first use of an image that arrives compressed, as a base image
# pulled in CI does: W2 of ../shared/bench/gen.py (10,000 small files and
# 250 MB) is saved with --compression zstd and with gzip, then, each time
# into a fresh store, loaded (outside the timing) and run once ("run --rm
# --network none IMG true"), which makes its layers into snapshots. Prints
# the median wall time of RUNS runs of each, in seconds.
#
#   bench/firstuse.sh     env: RUNS=3 LBUILD=bin/lbuild WORK=/tmp/lbuild-bench-firstuse GEN=../shared/bench/gen.py
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LBUILD=${LBUILD:-$repo/bin/lbuild}
GEN=${GEN:-$repo/../shared/bench/gen.py}
WORK=${WORK:-/tmp/lbuild-bench-firstuse}
RUNS=${RUNS:-3}
LBUILD=$(realpath -m "$LBUILD")
[ -x "$LBUILD" ] || (cd "$repo" && CGO_ENABLED=0 go build -o "$LBUILD" ./cmd/lbuild) # static, as make build
[ -f "$GEN" ] || { echo "workload generator not found at $GEN (set GEN)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench/firstuse.sh needs python3 for the workload generator: apt-get install python3" >&2; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK"
"$repo/examples/base/prepare.sh" "$WORK/base" >/dev/null
python3 "$GEN" --out "$WORK/workloads" W2 2>/dev/null
export LBUILD_ROOT=$WORK/src
"$LBUILD" build -q -t local/busybox "$WORK/base" >/dev/null
"$LBUILD" build -q -t w2 -f "$WORK/workloads/W2/Dockerfile" "$WORK/workloads/W2/ctx" >/dev/null
for c in zstd gzip; do "$LBUILD" save --compression "$c" -o "$WORK/w2-$c.tar" w2; done

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A times
for _ in $(seq "$RUNS"); do
  for c in zstd gzip; do
    export LBUILD_ROOT=$WORK/root-$c
    rm -rf "$LBUILD_ROOT"
    "$LBUILD" load -i "$WORK/w2-$c.tar" >/dev/null
    sync
    t0=$(now)
    "$LBUILD" run --rm --network none w2 true
    t1=$(now)
    times[$c]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') "
    "$LBUILD" rmi w2 >/dev/null
  done
done
rm -rf "$WORK/root-zstd" "$WORK/root-gzip"
for c in zstd gzip; do
  printf 'first run of a loaded %s W2 image: %s s (median of %s)\n' "$c" "$(printf '%s\n' ${times[$c]} | median)" "$RUNS"
done
