#!/usr/bin/env bash
# Makes the build context of the Debian base image once and reuses it:
#   prepare-base.sh          prints the context directory, making it if needed
#
# The context is $LBUILD_EXAMPLES_CACHE/debian (default
# /var/cache/lbuild-examples/debian): debian/Dockerfile beside a tar of a
# Debian 12 made with "debootstrap --variant=minbase bookworm" from the
# Debian mirror apt already uses on this machine (DEBIAN_MIRROR overrides).
# The first run takes a minute or two; later runs find the tar and print
# the directory at once. Needs root and debootstrap (apt-get install
# debootstrap). Exits with status 3, saying so in one line, when the mirror
# cannot be reached.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${LBUILD_EXAMPLES_CACHE:-/var/cache/lbuild-examples}/debian
tarball=$cache/debian-bookworm-minbase.tar

# apt_mirror: the URI of the first bookworm source with component main in
# /etc/apt/sources.list and sources.list.d (one-line and deb822 formats).
apt_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while (i <= NF && $i !~ /\]$/) i++; if ($2 ~ /^\[/) i++;
         if ($(i+1) == "bookworm") { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
         { uri = ""; suite = 0
           for (j = 1; j <= NF; j++) {
             if ($j ~ /^URIs:/) { split($j, u, /[ \t]+/); uri = u[2] }
             if ($j ~ /^Suites:/ && $j ~ /[ \t]bookworm([ \t]|$)/) suite = 1 }
           if (uri != "" && suite) { print uri; exit } }' "$f"
  done
}

# The mirror the base is made from, which its apt then uses too (RUN
# apt-get install nginx): the one recorded beside a made base, else
# DEBIAN_MIRROR, else apt's.
if [ -s "$tarball" ] && [ -s "$cache/mirror" ]; then
  mirror=$(cat "$cache/mirror")
else
  mirror=${DEBIAN_MIRROR:-$(apt_mirror | head -n1)}
  mirror=${mirror:-http://deb.debian.org/debian}
  mirror=${mirror%/}
fi
command -v curl >/dev/null || { echo "curl is not installed: apt-get install curl" >&2; exit 1; }
if ! curl -fsS --max-time 15 -o /dev/null "$mirror/dists/bookworm/Release" 2>/dev/null; then
  echo "the Debian mirror $mirror cannot be reached: the nginx demo needs it (set DEBIAN_MIRROR to another one)" >&2
  exit 3
fi
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "debootstrap is not installed: apt-get install debootstrap" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.debootstrap.XXXXXX")
  trap 'umount -R "$tmp/rootfs" 2>/dev/null || true; rm -rf "$tmp"' EXIT
  echo "making the Debian base once: debootstrap --variant=minbase bookworm $mirror (a minute or two; kept in $cache)" >&2
  if ! debootstrap --variant=minbase bookworm "$tmp/rootfs" "$mirror" >"$tmp/log" 2>&1; then
    tail -n 5 "$tmp/log" >&2
    echo "debootstrap failed (log above)" >&2
    exit 1
  fi
  # As in Debian's official images: apt keeps no downloaded packages and no
  # package caches (80 MB in the layer of every apt-get install) and
  # fetches no translations.
  cat >"$tmp/rootfs/etc/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
  echo 'Acquire::Languages "none";' >"$tmp/rootfs/etc/apt/apt.conf.d/docker-no-languages"
  # What a container needs no copy of: downloaded packages, apt's lists
  # and logs (RUN apt-get update fetches fresh lists).
  rm -rf "$tmp/rootfs/var/cache/apt/archives/"*.deb "$tmp/rootfs/var/lib/apt/lists/"* \
    "$tmp/rootfs/var/log/"*.log "$tmp/rootfs/var/cache/apt/"*.bin
  tar --numeric-owner --sort=name -C "$tmp/rootfs" -cf "$tmp/base.tar" .
  echo "$mirror" >"$cache/mirror"
  mv "$tmp/base.tar" "$tarball"
fi
cp "$here/debian/Dockerfile" "$cache/Dockerfile"
echo "$cache"
