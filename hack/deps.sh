#!/usr/bin/env bash
# Installs what lbuild's tests, examples and benchmarks need on a Debian
# machine, and nothing that is already there.
#   runc            RUN steps and containers
#   skopeo, umoci   tests check the store with real OCI tools
#   busybox-static  the offline base image for tests and examples
#   docker-registry a real registry for the transfer tests
#   curl            the demo fetches pages from containers
#   slirp4netns     outbound network for RUN steps and containers in their
#                   own network namespace (the default, without host loopback)
#   git             a build in a git work tree takes HEAD's commit time as its build time
#   debootstrap     the Debian base of the nginx demo (examples/nginx)
set -euo pipefail
pkgs=(runc skopeo umoci busybox-static docker-registry curl iproute2 slirp4netns git debootstrap)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's docker-registry package starts a service on :5000; tests start their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi
if ! command -v go >/dev/null; then
  echo "go is not installed: lbuild needs Go 1.26.8 or newer" >&2
  exit 1
fi
