#!/usr/bin/env bash
# Times the fixed cost of RUN steps: a Dockerfile of STEPS "RUN true" lines
# built with --no-cache, on the default private network and with --network
# none, so nearly all of it is container start and teardown. With LBUILD_OLD
# set, that binary is timed too, each round running both one after the other
# (interleaved, so that a change in the machine's load hits both alike).
# Prints the median wall time of RUNS builds per row, in ms, and per step.
#
#   bench/runsteps.sh     env: RUNS=11 STEPS=10 LBUILD=bin/lbuild LBUILD_OLD= WORK=/tmp/lbuild-bench-runsteps
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LBUILD=${LBUILD:-$repo/bin/lbuild}
WORK=${WORK:-/tmp/lbuild-bench-runsteps}
RUNS=${RUNS:-11}
STEPS=${STEPS:-10}
[ -x "$LBUILD" ] || (cd "$repo" && CGO_ENABLED=0 go build -o "$LBUILD" ./cmd/lbuild) # static, as make build
rm -rf "$WORK"
mkdir -p "$WORK/ctx"
"$repo/examples/base/prepare.sh" "$WORK/base" >/dev/null
{ echo "FROM local/busybox"; for _ in $(seq "$STEPS"); do echo "RUN true"; done; } >"$WORK/ctx/Dockerfile"

bins=("$LBUILD")
[ -n "${LBUILD_OLD:-}" ] && bins=("$LBUILD_OLD" "$LBUILD")
# Each binary gets a store of its own.
for i in "${!bins[@]}"; do
  LBUILD_ROOT=$WORK/root$i "${bins[$i]}" build -q -t local/busybox "$WORK/base" >/dev/null
done

out=$WORK/times
mkdir -p "$out"
for _ in $(seq "$RUNS"); do
  for i in "${!bins[@]}"; do
    for net in default none; do
      s=$(date +%s%N)
      LBUILD_ROOT=$WORK/root$i "${bins[$i]}" build -q --no-cache --network "$net" "$WORK/ctx" >/dev/null
      e=$(date +%s%N)
      echo $(((e - s) / 1000)) >>"$out/$i-$net"
    done
  done
done

printf '| binary | network | median ms | per step |\n|---|---|---|---|\n'
for i in "${!bins[@]}"; do
  for net in default none; do
    sort -n "$out/$i-$net" | awk -v b="${bins[$i]}" -v n="$net" -v s="$STEPS" \
      '{a[NR]=$1} END {m=a[int((NR+1)/2)]/1000; printf "| %s | %s | %.1f | %.1f |\n", b, n, m, m/s}'
  done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
