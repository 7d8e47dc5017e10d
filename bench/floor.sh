#!/usr/bin/env bash
# The host floor of a RUN-heavy workload (issue 15: W3 cold within 1.15× of
# it): the RUN commands of a workload's Dockerfile run one after another
# with the busybox base's own shell, chrooted into a fresh copy of its
# rootfs, with no container, no snapshot and no layer. Beside it, the
# sandbox floor: the same commands each in its own bare "runc run" with the
# spec lbuild writes (seccomp, capabilities, masks; --network none) on a
# fresh plain copy of the rootfs, still with no snapshot and no layer: what
# the containers alone cost. Prints the medians of RUNS runs, in seconds,
# beside lbuild's cold build of the same Dockerfile.
#
#   bench/floor.sh [W3]     env: RUNS=3 LBUILD=bin/lbuild WORK=/tmp/lbuild-floor GEN=../shared/bench/gen.py
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LBUILD=${LBUILD:-$repo/bin/lbuild}
GEN=${GEN:-$repo/../shared/bench/gen.py}
WORK=${WORK:-/tmp/lbuild-floor}
RUNS=${RUNS:-3}
w=${1:-W3}
[ -x "$LBUILD" ] || (cd "$repo" && CGO_ENABLED=0 go build -o "$LBUILD" ./cmd/lbuild) # static, as make build
command -v python3 >/dev/null || { echo "bench/floor.sh needs python3 for the workload generator: apt-get install python3" >&2; exit 1; }
mkdir -p "$WORK"
"$repo/examples/base/prepare.sh" "$WORK/base" >/dev/null
python3 "$GEN" --out "$WORK/workloads" "$w" 2>/dev/null
df="$WORK/workloads/$w/Dockerfile"

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The RUN lines (shell form, one line each in the shared workloads).
mapfile -t runs < <(sed -n 's/^RUN //p' "$df")

cleanup() {
  for i in "${!runs[@]}"; do runc --root "$WORK/runc" delete -f "floor-$i" >/dev/null 2>&1 || true; done
  [ -d "$WORK/root" ] && LBUILD_ROOT=$WORK/root "$LBUILD" rm -f $(LBUILD_ROOT=$WORK/root "$LBUILD" ps -aq 2>/dev/null) >/dev/null 2>&1 || true
  rm -rf "$WORK/chroot" "$WORK/root" "$WORK/sandbox" "$WORK/runc"
}
trap cleanup EXIT
cleanup

# lbuild's spec, from a detached container's bundle; one config per RUN
# line, each on the plain rootfs copy in $WORK/sandbox/rootfs. (The sandbox
# floor has no network namespace; lbuild's RUN steps get their private
# network, slirp4netns, as by default: a few ms a step.)
LBUILD_ROOT=$WORK/root "$LBUILD" build -q -t local/busybox "$WORK/base" >/dev/null
id=$(LBUILD_ROOT=$WORK/root "$LBUILD" run -d --network none local/busybox sleep 60)
mkdir -p "$WORK/sandbox"
cp "$WORK/root/run/bundles/lbuild-ctr-$id/"{config.json,hostname,hosts,resolv.conf} "$WORK/sandbox/"
LBUILD_ROOT=$WORK/root "$LBUILD" rm -f "$id" >/dev/null
python3 - "$WORK/sandbox" "${runs[@]}" <<'EOF'
import json, os, sys
box, cmds = sys.argv[1], sys.argv[2:]
s = json.load(open(os.path.join(box, "config.json")))
s["root"] = {"path": os.path.join(box, "rootfs")}
for m in s["mounts"]:
    if m["destination"] in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
        m["source"] = os.path.join(box, os.path.basename(m["destination"]))
for i, c in enumerate(cmds):
    os.makedirs(os.path.join(box, str(i)), exist_ok=True)
    s["process"]["args"] = ["/bin/sh", "-c", c]
    json.dump(s, open(os.path.join(box, str(i), "config.json"), "w"))
EOF

floor=() sandbox=() build=()
for _ in $(seq "$RUNS"); do
  rm -rf "$WORK/chroot" && cp -a "$WORK/base/rootfs" "$WORK/chroot"
  sync
  t0=$(now)
  for cmd in "${runs[@]}"; do
    chroot "$WORK/chroot" /bin/sh -c "$cmd" >/dev/null
  done
  t1=$(now)
  floor+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")

  rm -rf "$WORK/sandbox/rootfs" && cp -a "$WORK/base/rootfs" "$WORK/sandbox/rootfs"
  sync
  t0=$(now)
  for i in "${!runs[@]}"; do
    runc --root "$WORK/runc" run --bundle "$WORK/sandbox/$i" "floor-$i" >/dev/null
  done
  t1=$(now)
  sandbox+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")

  rm -rf "$WORK/root"
  LBUILD_ROOT=$WORK/root "$LBUILD" build -q -t local/busybox "$WORK/base" >/dev/null
  sync
  t0=$(now)
  LBUILD_ROOT=$WORK/root "$LBUILD" build -q -f "$df" "$WORK/workloads/$w/ctx" >/dev/null
  t1=$(now)
  build+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")
done
f=$(printf '%s\n' "${floor[@]}" | median)
x=$(printf '%s\n' "${sandbox[@]}" | median)
b=$(printf '%s\n' "${build[@]}" | median)
ratio() { awk -v f="$1" -v b="$2" 'BEGIN { printf "%.2f", b / f }'; }
printf '%s: RUN commands on the host (chroot) %s s; each in bare runc with lbuild'"'"'s spec, no network %s s (%s×); lbuild cold %s s (%s×)\n' \
  "$w" "$f" "$x" "$(ratio "$f" "$x")" "$b" "$(ratio "$f" "$b")"
