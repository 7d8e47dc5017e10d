#!/usr/bin/env bash
# Times the start of a container: "lbuild run --rm IMG true" (with
# --network none and with the default private network) against bare
# "runc run" of the same rootfs, once with runc's default spec and once with
# the spec lbuild writes (seccomp profile, masked paths, its mounts), so the
# difference is lbuild's own work. Prints the median wall time of RUNS
# rounds of each, in milliseconds, measured three ways (see measure: what
# runs just before each timed run matters at this scale), and lbuild's
# ratio to bare runc with its spec in each.
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

# measure MODE CMD... (commands separated by ";;") prints the median wall
# time of each command in ms, one a line, over RUNS rounds. MODE is what
# runs just before each timed run, which moves a 30 ms command by a quarter
# (CPU caches, idle states; bare runc takes ~33 ms right after another runc
# and ~40 ms after 50 ms of idle here):
#   same   the same command: each round runs each command 1 + 3 times in a
#          row and times the last 3 (a script running it in a loop)
#   idle   100 ms of idle, the commands interleaved (typed by hand)
#   other  the other commands, interleaved back to back: what this script
#          measured up to session 4. It favours bare runc, which then runs
#          right after the runc of lbuild's command.
measure() {
  local mode=$1 cmds=() cur=() i j k s e
  shift
  for a in "$@"; do
    if [ "$a" = ";;" ]; then cmds+=("${cur[*]}"); cur=(); else cur+=("$a"); fi
  done
  cmds+=("${cur[*]}")
  local out=$WORK/times-$mode
  rm -rf "$out"; mkdir -p "$out"
  for i in $(seq "$RUNS"); do
    for j in "${!cmds[@]}"; do
      local reps=1
      if [ "$mode" = same ]; then
        ${cmds[$j]} >/dev/null 2>&1 || { echo "failed: ${cmds[$j]}" >&2; exit 1; }
        reps=3
      fi
      for k in $(seq "$reps"); do
        [ "$mode" = idle ] && sleep 0.1
        # bash's own clock: no date process between two runs
        s=${EPOCHREALTIME/./}
        ${cmds[$j]} >/dev/null 2>&1 || { echo "failed: ${cmds[$j]}" >&2; exit 1; }
        e=${EPOCHREALTIME/./}
        echo $((e - s)) >>"$out/$j"
      done
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
cmds=(runc --root "$rr" run --bundle "$plain" bench-plain ";;"
  runc --root "$rr" run --bundle "$spec" bench-spec ";;"
  "$LBUILD" run --rm --network none local/busybox true ";;"
  "$LBUILD" run --rm local/busybox true)
declare -A col
for mode in same idle other; do
  mapfile -t t < <(measure "$mode" "${cmds[@]}")
  col[$mode]="${t[*]}"
done
row() { # row LABEL INDEX
  local m out="| $1 |"
  for m in same idle other; do
    read -r -a v <<<"${col[$m]}"
    out+=" ${v[$2]} |"
  done
  echo "$out"
}
printf '| what (median ms; what ran just before) | same command | 100 ms idle | the other commands |\n|---|---|---|---|\n'
row "runc run, runc spec defaults" 0
row "runc run, lbuild's spec (seccomp, masks; no network ns setup)" 1
row "lbuild run --rm --network none IMG true" 2
row "lbuild run --rm IMG true (private network)" 3
for m in same idle other; do
  read -r -a v <<<"${col[$m]}"
  awk -v m="$m" -v a="${v[2]}" -v b="${v[1]}" -v c="${v[0]}" 'BEGIN { printf "ratio --network none / runc with lbuild spec (%s): %.2f; / runc defaults: %.2f\n", m, a / b, a / c }'
done
