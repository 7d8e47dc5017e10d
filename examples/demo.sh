#!/usr/bin/env bash
# The layer-sharing demo: builds the images of examples/, shows which layers
# they share and why, runs containers on them and shows that each container
# has a small writable layer of its own over the image's shared layers.
#
#   LBUILD=path/to/lbuild ./examples/demo.sh      (default: lbuild on PATH)
#
# It uses a fresh store in a temp dir unless LBUILD_ROOT is set, needs root,
# runc, busybox-static, curl and docker-registry, runs offline and takes a
# few seconds.
# DEMO_PORT (default 18080) is the first port it tries for the web servers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
LBUILD=${LBUILD:-lbuild}
command -v "$LBUILD" >/dev/null || { echo "demo: $LBUILD not found: run make build, or set LBUILD" >&2; exit 1; }
command -v curl >/dev/null || { echo "demo: curl is not installed (apt-get install curl)" >&2; exit 1; }

work=$(mktemp -d /tmp/lbuild-demo.XXXXXX)
own_root=
if [ -z "${LBUILD_ROOT:-}" ]; then
  export LBUILD_ROOT=$work/root
  own_root=1
fi
containers=()
registry_pid=
cleanup() {
  local rc=$?
  stop_started
  if [ -n "$own_root" ] && grep -q " $work/" /proc/self/mountinfo; then
    echo "demo: something is still mounted under $work; leaving it" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# page PORT: the page a container serves, waiting for its server to come up.
page() {
  local i
  for i in $(seq 50); do
    if curl -fsS "http://127.0.0.1:$1/" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "demo: nothing answers on port $1" >&2
  return 1
}

# title HTML: the text of the page's <h1>.
title() { sed -n 's:.*<h1[^>]*>\(.*\)</h1>.*:\1:p'; }

step "1. Build the images (store: $LBUILD_ROOT)"
"$here/base/prepare.sh" "$work/base" >/dev/null
base_ctx=$work/base
[ -f "$base_ctx/Dockerfile" ] || base_ctx=$here/base # an older prepare.sh writes beside itself
lb build -q -t local/base "$base_ctx" >/dev/null
for img in hello-web config-web pre-config-web; do
  lb build -q -t "$img" "$here/$img" >/dev/null
done
lb build -q --build-arg COLOR=blue -t pair:blue "$here/pair" >/dev/null
lb build -q --build-arg COLOR=green -t pair:green "$here/pair" >/dev/null
lb images

step "2. Which layers the images share"
lb share local/base hello-web config-web pre-config-web
echo
say "Each row is a layer, each column an image; an x means the image has that layer." \
  "A layer is named by its content and by every layer below it, so two images share a layer when they were built by the same steps up to it: it is then stored once, and unpacked (or mounted straight from its blob) once, whatever the number of images." \
  "" \
  "- All four images stand on the base layer (busybox), stored once." \
  "- hello-web and config-web both start with 'COPY index.html': config-web reuses that layer of hello-web and adds only its 'COPY httpd.conf' layer." \
  "- pre-config-web copies the same two files in the other order. Its first COPY (httpd.conf) differs from hello-web's first COPY, so its cache key differs, and every key after it too: even its 'COPY index.html', the same file as in hello-web, ran again as a new step on a new chain (its own row above). The reordered image shares only the base. (Those re-run steps happened to write byte-identical layers, the same diff IDs, so their blobs are still stored once; the work of running them and their snapshots are what the order cost.)" \
  "  Lesson: put what changes least first; a step moved earlier breaks the reuse of every step after it."
echo
lb share pair:blue pair:green
echo
say "pair:blue and pair:green come from one Dockerfile and differ only in the file of the last COPY: they share every layer but the last."

step "3. Run two containers of hello-web and one of config-web"
p1=$(free_port "${DEMO_PORT:-18080}")
run_each 8080 "$p1" hello-1=hello-web hello-2=hello-web config-1=config-web
p1=${ports[0]} p2=${ports[1]} p3=${ports[2]}
lb ps
echo
for pair in "hello-1 $p1" "hello-2 $p2" "config-1 $p3"; do
  set -- $pair
  printf 'curl http://127.0.0.1:%s/  (%s): %s\n' "$2" "$1" "$(page "$2" | title)"
done
echo
say "Each container runs its image's CMD, busybox httpd on port 8080, in a network namespace of its own; -p publishes that port on a port of the host's loopback (lbuild ps, PORTS)." \
  "Each container is an overlay mount: the image's layers (unpacked, or mounted straight from their blobs) as shared read-only lower layers, plus one empty writable layer of its own. Starting one copies nothing."

step "4. A change inside one container stays in that container"
echo "\$ lbuild exec hello-1 sh -c 'echo \"<h1>Changed inside hello-1</h1>\" > /www/index.html'"
lb exec hello-1 sh -c 'echo "<h1>Changed inside hello-1</h1>" > /www/index.html'
printf 'curl http://127.0.0.1:%s/  (hello-1): %s\n' "$p1" "$(page "$p1" | title)"
printf 'curl http://127.0.0.1:%s/  (hello-2): %s\n' "$p2" "$(page "$p2" | title)"
for c in hello-1 hello-2; do
  echo "\$ lbuild diff $c"
  out=$(lb diff "$c")
  echo "${out:-(no changes)}"
done
say "The write copied index.html up into hello-1's own layer (C = changed); hello-2 and the image still have the original."

step "5. Push to a registry, pull into an empty store"
start_registry "$work/registry"
say "A local registry: docker-registry on $registry."
for img in hello-web config-web; do
  echo "\$ lbuild push $img $registry/$img"
  lb push "$img" "$registry/$img"
done
echo
say "config-web's base and index.html layers were in the registry already, from hello-web: only its httpd.conf layer went up."
echo
for img in hello-web config-web; do
  echo "\$ LBUILD_ROOT=<an empty store> lbuild pull $registry/$img"
  LBUILD_ROOT=$work/pulled lb pull "$registry/$img"
done
kill "$registry_pid" && wait "$registry_pid" 2>/dev/null || true
registry_pid=
echo
say "Pulling config-web after hello-web: the layers the store has print 'Already exists' and are not fetched; one layer is downloaded."

step "6. Disk use"
lb du
echo
say "The containers' own layers hold only what they changed (a few bytes), and every image layer is stored once however many images and containers use it."

step "7. Clean up"
echo "\$ lbuild stop -t 1 ${containers[*]} && lbuild rm ${containers[*]}"
lb stop -t 1 "${containers[@]}" >/dev/null
lb rm "${containers[@]}" >/dev/null
containers=()
lb ps -a
echo
echo "demo: done"
