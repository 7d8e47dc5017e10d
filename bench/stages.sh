#!/usr/bin/env bash
# Times a multi-stage build whose two stages are independent and each run
# for 2 s (RUN sleep 2), then meet in a third (COPY --from both): built with
# the stages in parallel (the default) and one after another (--parallel 1).
# --no-cache, so every run runs both RUNs. Prints the median wall time of
# RUNS runs of each, in seconds (interleaved, so load changes hit both).
#
#   bench/stages.sh     env: RUNS=5 LBUILD=bin/lbuild WORK=/tmp/lbuild-bench-stages
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LBUILD=${LBUILD:-$repo/bin/lbuild}
WORK=${WORK:-/tmp/lbuild-bench-stages}
RUNS=${RUNS:-5}
[ -x "$LBUILD" ] || (cd "$repo" && CGO_ENABLED=0 go build -o "$LBUILD" ./cmd/lbuild) # static, as make build
rm -rf "$WORK"
mkdir -p "$WORK/ctx"
export LBUILD_ROOT=$WORK/root
"$repo/examples/base/prepare.sh" "$WORK/base" >/dev/null
"$LBUILD" build -q -t local/busybox "$WORK/base" >/dev/null
cat >"$WORK/ctx/Dockerfile" <<'EOF'
FROM local/busybox AS a
RUN sleep 2 && echo a > /a

FROM local/busybox AS b
RUN sleep 2 && echo b > /b

FROM local/busybox
COPY --from=a /a /a
COPY --from=b /b /b
EOF

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {printf "%.2f\n", a[int((NR+1)/2)]}'; }
par=() ser=()
for _ in $(seq "$RUNS"); do
  for mode in 0 1; do
    t0=$(now)
    "$LBUILD" build -q --no-cache --parallel "$mode" -t bench/stages "$WORK/ctx" >/dev/null
    t1=$(now)
    t=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }')
    if [ "$mode" = 0 ]; then par+=("$t"); else ser+=("$t"); fi
  done
done
printf '| W5 two independent 2 s stages | seconds |\n|---|---|\n'
printf '| stages in parallel (default) | %s |\n' "$(printf '%s\n' "${par[@]}" | median)"
printf '| one after another (--parallel 1) | %s |\n' "$(printf '%s\n' "${ser[@]}" | median)"
