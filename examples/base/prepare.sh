#!/usr/bin/env bash
# Makes the build context of the base image: a root filesystem holding
# Debian's static busybox (sh, httpd, wget, vi, … as symlinks) and a minimal
# /etc. Offline: it only copies /bin/busybox (apt-get install busybox-static).
#   prepare.sh [DIR]   makes DIR/rootfs and DIR/Dockerfile (default: beside this script)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
mkdir -p "$out"
[ "$out" -ef "$here" ] || cp "$here/Dockerfile" "$out/Dockerfile"
rootfs=$out/rootfs
[ -x /bin/busybox ] || { echo "busybox-static is not installed: apt-get install busybox-static" >&2; exit 1; }
rm -rf "$rootfs"
mkdir -p "$rootfs"/{bin,etc,tmp,root,www,home/app}
chmod 1777 "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
# Fixed times, so the base layer is the same bytes on every machine.
find "$rootfs" -exec touch -h -d @1577836800 {} +
