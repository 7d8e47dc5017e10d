#!/usr/bin/env bash
# Times lbuild on the shared workloads W1–W4 (../shared/bench/gen.py, the
# ones the peers' figures in FIELD-NOTES.md were measured on), in four
# scenarios: cold (empty store), noop (nothing changed), change1 (one file of
# the context edited), touchall (every file's mtime changed, contents not).
# Prints the median wall time of RUNS runs per cell, in seconds, and beside
# them the floor a cold COPY of the context stands against: "cp -a" of the
# context into the store's filesystem, timed in the same run (after an
# rm -rf of the last copy and a sync, as each cold build follows an rm -rf
# of the last store and a sync).
#
#   bench/run.sh [W1 W2 W3 W4]     env: RUNS=3 LBUILD=bin/lbuild WORK=/tmp/lbuild-bench
#                                       SCENARIOS="cold noop change1 touchall"
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LBUILD=${LBUILD:-$repo/bin/lbuild}
GEN=${GEN:-$repo/../shared/bench/gen.py}
WORK=${WORK:-/tmp/lbuild-bench}
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-cold noop change1 touchall cpa}
ws=("$@"); [ ${#ws[@]} -gt 0 ] || ws=(W1 W2 W3 W4)
[ -x "$LBUILD" ] || (cd "$repo" && CGO_ENABLED=0 go build -o "$LBUILD" ./cmd/lbuild) # static, as make build
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

# copy_ctx times cp -a of the workload's context next to the store.
copy_ctx() {
  local w=$1 t0 t1
  t0=$(now)
  cp -a "$WORK/workloads/$w/$CONTEXT" "$WORK/cpa"
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

restore() { python3 "$GEN" --out "$WORK/workloads" "$1" 2>/dev/null; }

printf '| W | cold | noop | change1 | touchall | cp -a ctx |\n|---|---|---|---|---|---|\n'
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
        cpa) rm -rf "$WORK/cpa" ;;
        *) [ -d "$LBUILD_ROOT" ] || base; build_all "$w" >/dev/null ;;
      esac
      case $sc in
        change1) date +%s%N >> "$WORK/workloads/$w/$MUTATE" ;;  # a fresh edit each run, never seen by the cache
        touchall) find "$WORK/workloads/$w/$CONTEXT" -exec touch -h -d "@$(( $(date +%s) + RANDOM ))" {} + ;;
      esac
      sync
      if [ "$sc" = cpa ]; then
        times+=("$(copy_ctx "$w")")
      else
        times+=("$(build_all "$w")")
      fi
    done
    res[$sc]=$(printf '%s\n' "${times[@]}" | median)
  done
  printf '| %s | %s | %s | %s | %s | %s |\n' "$w" "${res[cold]:--}" "${res[noop]:--}" "${res[change1]:--}" "${res[touchall]:--}" "${res[cpa]:--}"
  unset res
done
rm -rf "$WORK/cpa"
restore "${ws[@]}" >/dev/null 2>&1 || true
