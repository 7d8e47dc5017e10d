#!/usr/bin/env bash
# Times lbuild on the shared workloads W1–W4 (../shared/bench/gen.py, the
# ones the peers' figures in FIELD-NOTES.md were measured on), in four
# scenarios: cold (empty store), noop (nothing changed), change1 (one file of
# the context edited), touchall (every file's mtime changed, contents not).
# Prints the median wall time of RUNS runs per cell, in seconds.
#
#   bench/run.sh [W1 W2 W3 W4]     env: RUNS=3 LBUILD=bin/lbuild WORK=/tmp/lbuild-bench
#                                       SCENARIOS="cold noop change1 touchall"
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LBUILD=${LBUILD:-$repo/bin/lbuild}
GEN=${GEN:-$repo/../shared/bench/gen.py}
WORK=${WORK:-/tmp/lbuild-bench}
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-cold noop change1 touchall}
ws=("$@"); [ ${#ws[@]} -gt 0 ] || ws=(W1 W2 W3 W4)
[ -x "$LBUILD" ] || (cd "$repo" && go build -o "$LBUILD" ./cmd/lbuild)
[ -f "$GEN" ] || { echo "workload generator not found at $GEN (set GEN)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench/run.sh needs python3 for the workload generator: apt-get install python3" >&2; exit 1; }
mkdir -p "$WORK"
export LBUILD_ROOT=$WORK/root
"$repo/examples/base/prepare.sh" "$WORK/base" >/dev/null
python3 "$GEN" --out "$WORK/workloads" "${ws[@]}" 2>/dev/null

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

base() { "$LBUILD" build -q -t local/busybox "$WORK/base" >/dev/null; }

# build_all times building every Dockerfile of the workload once.
build_all() {
  local w=$1 t0 t1
  t0=$(now)
  for df in $DOCKERFILES; do
    "$LBUILD" build -q -f "$WORK/workloads/$w/$df" -t "bench/$w-$df" "$WORK/workloads/$w/$CONTEXT" >/dev/null
  done
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

restore() { python3 "$GEN" --out "$WORK/workloads" "$1" 2>/dev/null; }

printf '| W | cold | noop | change1 | touchall |\n|---|---|---|---|---|\n'
for w in "${ws[@]}"; do
  # shellcheck disable=SC1090
  . "$WORK/workloads/$w/meta.env"
  declare -A res=()
  for sc in $SCENARIOS; do
    times=()
    for _ in $(seq "$RUNS"); do
      restore "$w"
      case $sc in
        cold) rm -rf "$LBUILD_ROOT"; base ;;
        *) [ -d "$LBUILD_ROOT" ] || base; build_all "$w" >/dev/null ;;
      esac
      case $sc in
        change1) date +%s%N >> "$WORK/workloads/$w/$MUTATE" ;;  # a fresh edit each run, never seen by the cache
        touchall) find "$WORK/workloads/$w/$CONTEXT" -exec touch -h -d "@$(( $(date +%s) + RANDOM ))" {} + ;;
      esac
      sync
      times+=("$(build_all "$w")")
    done
    res[$sc]=$(printf '%s\n' "${times[@]}" | median)
  done
  printf '| %s | %s | %s | %s | %s |\n' "$w" "${res[cold]:--}" "${res[noop]:--}" "${res[change1]:--}" "${res[touchall]:--}"
  unset res
done
restore "${ws[@]}" >/dev/null 2>&1 || true
