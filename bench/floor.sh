#!/usr/bin/env bash
# The host floor of a RUN-heavy workload (issue 15: W3 cold within 1.15× of
# it): the RUN commands of a workload's Dockerfile run one after another
# with the busybox base's own shell, chrooted into a fresh copy of its
# rootfs, with no container, no snapshot and no layer. Prints the median of
# RUNS runs, in seconds, beside lbuild's cold build of the same Dockerfile.
#
#   bench/floor.sh [W3]     env: RUNS=3 LBUILD=bin/lbuild WORK=/tmp/lbuild-floor GEN=../shared/bench/gen.py
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LBUILD=${LBUILD:-$repo/bin/lbuild}
GEN=${GEN:-$repo/../shared/bench/gen.py}
WORK=${WORK:-/tmp/lbuild-floor}
RUNS=${RUNS:-3}
w=${1:-W3}
[ -x "$LBUILD" ] || (cd "$repo" && make -s build BIN="$LBUILD")
command -v python3 >/dev/null || { echo "bench/floor.sh needs python3 for the workload generator: apt-get install python3" >&2; exit 1; }
mkdir -p "$WORK"
"$repo/examples/base/prepare.sh" "$WORK/base" >/dev/null
python3 "$GEN" --out "$WORK/workloads" "$w" 2>/dev/null
df="$WORK/workloads/$w/Dockerfile"

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The RUN lines (shell form, one line each in the shared workloads).
mapfile -t runs < <(sed -n 's/^RUN //p' "$df")

floor=() build=()
for _ in $(seq "$RUNS"); do
  rm -rf "$WORK/chroot" && cp -a "$WORK/base/rootfs" "$WORK/chroot"
  sync
  t0=$(now)
  for cmd in "${runs[@]}"; do
    chroot "$WORK/chroot" /bin/sh -c "$cmd" >/dev/null
  done
  t1=$(now)
  floor+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")

  rm -rf "$WORK/root"
  LBUILD_ROOT=$WORK/root "$LBUILD" build -q -t local/busybox "$WORK/base" >/dev/null
  sync
  t0=$(now)
  LBUILD_ROOT=$WORK/root "$LBUILD" build -q -f "$df" "$WORK/workloads/$w/ctx" >/dev/null
  t1=$(now)
  build+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")
done
f=$(printf '%s\n' "${floor[@]}" | median)
b=$(printf '%s\n' "${build[@]}" | median)
printf '%s: RUN commands on the host (chroot) %s s, lbuild cold %s s, ratio %s\n' \
  "$w" "$f" "$b" "$(awk -v f="$f" -v b="$b" 'BEGIN { printf "%.2f", b / f }')"
rm -rf "$WORK/chroot" "$WORK/root"
