#!/usr/bin/env bash
# Measures the CI cache (lbuild build --cache-to/--cache-from, issue 9) on
# the big-context workload W2 of ../shared/bench/gen.py, in one run:
#
#   cold     W2 built on a store holding only the base image, no cache flags
#   export   the same build again with --cache-to type=local,dest=DIR (all
#            steps cached locally; what the export itself costs)
#   restored a fresh store with a copy of DIR (as CI restores a cache dir:
#            new files, no hard links to the first store) builds W2 with
#            --cache-from type=local,src=DIR
#
# and prints the median times of RUNS runs (cold and restored each on a new
# store), restored/cold, the bytes of DIR and of the image's
# blobs (manifest, config, layers) and their ratio. The base image is built
# through the cache too (a CI job would pull it), outside the timings.
#
#   bench/cicache.sh      env: RUNS=3 LBUILD=bin/lbuild WORK=/tmp/lbuild-cicache
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LBUILD=${LBUILD:-$repo/bin/lbuild}
GEN=${GEN:-$repo/../shared/bench/gen.py}
WORK=${WORK:-/tmp/lbuild-cicache}
RUNS=${RUNS:-3}
[ -x "$LBUILD" ] || (cd "$repo" && CGO_ENABLED=0 go build -o "$LBUILD" ./cmd/lbuild) # static, as make build
[ -f "$GEN" ] || { echo "workload generator not found at $GEN (set GEN)" >&2; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK"
"$repo/examples/base/prepare.sh" "$WORK/base" >/dev/null
python3 "$GEN" --out "$WORK/workloads" W2 2>/dev/null
ctx=$WORK/workloads/W2/ctx df=$WORK/workloads/W2/Dockerfile cache=$WORK/cache
now() { date +%s.%N; }
timed() { local t0 t1; t0=$(now); "$@" >/dev/null; t1=$(now); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'; }
lb() { "$LBUILD" --root "$1" "${@:2}"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

lb "$WORK/r1" build -q -t local/busybox --cache-to "type=local,dest=$cache" "$WORK/base" >/dev/null
colds=()
for i in $(seq "$RUNS"); do
  # A store holding only the base (from the cache, so its ID is the same).
  [ "$i" = 1 ] || { rm -rf "$WORK/r0"; lb "$WORK/r0" build -q -t local/busybox --cache-from "type=local,src=$cache" "$WORK/base" >/dev/null; }
  r=$WORK/r1; [ "$i" = 1 ] || r=$WORK/r0
  sync
  colds+=("$(timed lb "$r" build -q -t bench/w2 -f "$df" "$ctx")")
done
cold=$(printf '%s\n' "${colds[@]}" | median)
sync
export=$(timed lb "$WORK/r1" build -q -t bench/w2 -f "$df" --cache-to "type=local,dest=$cache" "$ctx")

cp -a "$cache" "$WORK/restored"
warms=()
for i in $(seq "$RUNS"); do
  rm -rf "$WORK/r2"
  lb "$WORK/r2" build -q -t local/busybox --cache-from "type=local,src=$WORK/restored" "$WORK/base" >/dev/null
  sync
  warms+=("$(timed lb "$WORK/r2" build -q -t bench/w2 -f "$df" --cache-from "type=local,src=$WORK/restored" "$ctx")")
done
restored=$(printf '%s\n' "${warms[@]}" | median)

id1=$(lb "$WORK/r1" build -q -f "$df" "$ctx")
id2=$(lb "$WORK/r2" build -q -f "$df" "$ctx")
unpacked=$(lb "$WORK/r2" du | grep 'Layer snapshots')
dirbytes=$(du -sb --apparent-size "$cache" | cut -f1)
imgbytes=$(python3 - "$WORK/r1/oci" <<'PY'
import json, os, sys
d = sys.argv[1]
blob = lambda h: os.path.join(d, "blobs", *h.split(":"))
for m in json.load(open(os.path.join(d, "index.json")))["manifests"]:
    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "bench/w2:latest":
        man = json.load(open(blob(m["digest"])))
        print(m["size"] + man["config"]["size"] + sum(l["size"] for l in man["layers"]))
PY
)
printf 'W2 cold %ss (runs: %s), export %ss, restored-cache rebuild %ss (runs: %s; %.3f x cold)\n' "$cold" "${colds[*]}" "$export" "$restored" "${warms[*]}" "$(awk -v a="$restored" -v b="$cold" 'BEGIN{print a/b}')"
printf 'same image ID: %s (%s)\nfresh store: %s\n' "$([ "$id1" = "$id2" ] && echo yes || echo NO)" "$id1" "$(echo "$unpacked" | xargs)"
printf 'cache dir %d bytes, image blobs %d bytes (%.3f x)\n' "$dirbytes" "$imgbytes" "$(awk -v a="$dirbytes" -v b="$imgbytes" 'BEGIN{print a/b}')"
