#!/usr/bin/env bash
# Times the start of a container: "lbuild run --rm IMG true" (with
# --network none and with the default private network) against bare
# "runc run" of the same rootfs, once with runc's default spec and once with
# the spec lbuild writes (seccomp profile, masked paths, its mounts), so the
# difference is lbuild's own work. Prints the median wall time of RUNS runs
# of each (interleaved), in milliseconds, and lbuild's ratio to bare runc with its spec.
#
#   bench/start.sh     env: RUNS=21 LBUILD=bin/lbuild WORK=/tmp/lbuild-bench-start
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LBUILD=${LBUILD:-$repo/bin/lbuild}
WORK=${WORK:-/tmp/lbuild-bench-start}
RUNS=${RUNS:-21}
[ -x "$LBUILD" ] || (cd "$repo" && CGO_ENABLED=0 go build -o "$LBUILD" ./cmd/lbuild) # static, as make build
command -v runc >/dev/null || { echo "bench/start.sh needs runc: ./hack/deps.sh" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench/start.sh needs python3: apt-get install python3" >&2; exit 1; }
rm -rf "$WORK"
mkdir -p "$WORK"
export LBUILD_ROOT=$WORK/root
"$repo/examples/base/prepare.sh" "$WORK/base" >/dev/null
"$LBUILD" build -q -t local/busybox "$WORK/base" >/dev/null

# rounds runs each command (separated by ";;") once per round, RUNS rounds,
# interleaved so that a change in the machine's load hits all alike, and
# prints the median wall time of each in ms, one a line.
rounds() {
  local cmds=() cur=() i j s e
  for a in "$@"; do
    if [ "$a" = ";;" ]; then cmds+=("${cur[*]}"); cur=(); else cur+=("$a"); fi
  done
  cmds+=("${cur[*]}")
  local out=$WORK/times
  rm -rf "$out"; mkdir -p "$out"
  for i in $(seq "$RUNS"); do
    for j in "${!cmds[@]}"; do
      s=$(date +%s%N)
      ${cmds[$j]} >/dev/null 2>&1 || { echo "failed: ${cmds[$j]}" >&2; exit 1; }
      e=$(date +%s%N)
      echo $(((e - s) / 1000)) >>"$out/$j"
    done
  done
  for j in "${!cmds[@]}"; do
    sort -n "$out/$j" | awk '{a[NR]=$1} END {printf "%.1f\n", a[int((NR+1)/2)]/1000}'
  done
}

# Bare runc, runc's default spec (no seccomp, no network).
plain=$WORK/bundle-plain
mkdir -p "$plain"
cp -a "$WORK/base/rootfs" "$plain/rootfs"
(cd "$plain" && runc spec)
python3 - "$plain/config.json" <<'EOF'
import json, sys
p = sys.argv[1]
s = json.load(open(p))
s["process"]["terminal"] = False
s["process"]["args"] = ["true"]
s["root"]["readonly"] = False
json.dump(s, open(p, "w"))
EOF

# Bare runc with lbuild's own spec: taken from a detached container's bundle,
# the rootfs pointed at a plain copy and the args replaced.
spec=$WORK/bundle-lbuild
mkdir -p "$spec"
cp -a "$WORK/base/rootfs" "$spec/rootfs"
id=$("$LBUILD" run -d --network none local/busybox sleep 60)
cp "$LBUILD_ROOT/run/bundles/lbuild-ctr-$id/"{config.json,hostname,hosts,resolv.conf} "$spec/"
"$LBUILD" rm -f "$id" >/dev/null
python3 - "$spec/config.json" "$spec" <<'EOF'
import json, os, sys
p, bundle = sys.argv[1], sys.argv[2]
s = json.load(open(p))
s["root"] = {"path": os.path.join(bundle, "rootfs")}
s["process"]["args"] = ["true"]
for m in s["mounts"]:
    if m["destination"] in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
        m["source"] = os.path.join(bundle, os.path.basename(m["destination"]))
json.dump(s, open(p, "w"))
EOF
for f in hostname hosts resolv.conf; do touch "$spec/rootfs/etc/$f"; done
mkdir -p "$spec/rootfs/proc" "$spec/rootfs/sys" "$spec/rootfs/dev"

rr=$WORK/runc-root
mapfile -t t < <(rounds runc --root "$rr" run --bundle "$plain" bench-plain ";;" \
  runc --root "$rr" run --bundle "$spec" bench-spec ";;" \
  "$LBUILD" run --rm --network none local/busybox true ";;" \
  "$LBUILD" run --rm local/busybox true)
bare=${t[0]} barespec=${t[1]} none=${t[2]} def=${t[3]}

printf '| what | median ms |\n|---|---|\n'
printf '| runc run, runc spec defaults | %s |\n' "$bare"
printf '| runc run, lbuild'"'"'s spec (seccomp, masks; no network ns setup) | %s |\n' "$barespec"
printf '| lbuild run --rm --network none IMG true | %s |\n' "$none"
printf '| lbuild run --rm IMG true (private network) | %s |\n' "$def"
awk -v a="$none" -v b="$barespec" -v c="$bare" 'BEGIN { printf "ratio --network none / runc with lbuild spec: %.2f; / runc defaults: %.2f\n", a / b, a / c }'
