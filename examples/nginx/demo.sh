#!/usr/bin/env bash
# The nginx story, literally: a Debian base, "apt-get install nginx", an
# nginx.conf and an index.html, four layers; images built by the same steps
# share them on disk and over the network, the order of the steps decides
# what is shared, and each container adds one thin writable layer.
#
#   LBUILD=path/to/lbuild ./examples/nginx/demo.sh   (default: lbuild on PATH)
#
# It uses a fresh store in a temp dir unless LBUILD_ROOT is set (the images
# are then left there), needs root, runc, slirp4netns, debootstrap, curl,
# docker-registry and the Debian mirror apt uses (the base is made once
# with debootstrap, a minute or two, and kept in
# /var/cache/lbuild-examples; LBUILD_EXAMPLES_CACHE moves it). It exits
# with status 3, saying so in one line, when the mirror cannot be reached.
# DEMO_PORT (default 18180) is the first port it tries for the containers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
. "$here/../lib.sh"
LBUILD=${LBUILD:-lbuild}
command -v "$LBUILD" >/dev/null || { echo "demo-nginx: $LBUILD not found: run make build, or set LBUILD" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "demo-nginx: needs root (debootstrap, containers)" >&2; exit 1; }
for tool in curl runc slirp4netns debootstrap docker-registry; do
  command -v "$tool" >/dev/null || { echo "demo-nginx: $tool is not installed (./hack/deps.sh installs it)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/lbuild-demo-nginx.XXXXXX)
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
  if grep -q " $work/" /proc/self/mountinfo; then
    echo "demo-nginx: something is still mounted under $work; leaving it" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# get PORT [CURL-ARGS]: what curl gets from a container's port, waiting
# for its server to come up.
get() {
  local port=$1 i
  shift
  for i in $(seq 100); do
    if curl -fsS "$@" "http://127.0.0.1:$port/" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "demo-nginx: nothing answers on port $port" >&2
  return 1
}
# title: the text of an HTML page's <h1>.
title() { sed -n 's:.*<h1[^>]*>\(.*\)</h1>.*:\1:p'; }
# server PORT: nginx's Server: header.
server() { get "$1" -I | tr -d '\r' | sed -n 's/^[Ss]erver: //p'; }
# diff_ids IMAGE: the RootFS diff IDs "lbuild inspect" shows, one a line.
diff_ids() { lb inspect "$1" | sed -n '/"RootFS"/,/\]/p' | grep -o 'sha256:[0-9a-f]*'; }
# short: a sha256:… digest as its first 12 hex digits.
short() { sed 's/^sha256:\(.\{12\}\).*/\1/'; }

# prepare-base.sh says why it fails (status 3: the mirror cannot be reached).
base_ctx=$("$here/prepare-base.sh") || exit $?

step "1. Build Debian, then the four nginx images (store: $LBUILD_ROOT)"
echo "\$ lbuild build -t local/debian $base_ctx     (FROM scratch + ADD of a debootstrap tar)"
lb build -q -t local/debian "$base_ctx" >/dev/null
for img in hello-nginx config-nginx pre-config-nginx custom-nginx; do
  echo "\$ lbuild build -t $img examples/nginx/$img"
  start=$SECONDS
  lb build -q -t "$img" "$here/$img" >/dev/null
  echo "  ($((SECONDS - start))s)"
done
lb images
echo
say "The first build ran 'apt-get install nginx-light' against the Debian mirror; the three other builds found that step in the cache (same base, same command) and reused its layer. Their steps:"
echo
printf '  %-17s %s\n' \
  hello-nginx "Debian, nginx, index.html" \
  config-nginx "Debian, nginx, index.html, nginx.conf" \
  pre-config-nginx "Debian, nginx, nginx.conf, index.html   (image A)" \
  custom-nginx "Debian, nginx, nginx.conf, its own index.html   (image B)"

step "2. hello-nginx, step by step"
echo "\$ lbuild history hello-nginx"
lb history hello-nginx
echo
say "Each step that changes files made a layer holding only what it changed: the whole Debian (ADD), nginx and its libraries (RUN apt-get …, apt's lists removed in the same step, so they never reach a layer), then a 4 kB index.html. ENV, EXPOSE, STOPSIGNAL and CMD only change the image's config: 0 B."

step "3. Image A and image B share three of their four layers"
for img in pre-config-nginx custom-nginx; do
  echo "\$ lbuild inspect $img    (RootFS.Layers, the layers' diff IDs)"
  diff_ids "$img" | sed 's/^/  /'
done
a=$(diff_ids pre-config-nginx | short | tr '\n' ' ')
b=$(diff_ids custom-nginx | short | tr '\n' ' ')
echo
say "A: $a" "B: $b"
echo
echo "\$ lbuild share pre-config-nginx custom-nginx"
lb share pre-config-nginx custom-nginx
echo
say "A layer's diff ID is the digest of its content; a layer is shared when it was built by the same steps on the same layers below. A and B have the same first three layers, stored once: only index.html, 4 kB, is B's own."
echo
echo "\$ lbuild share local/debian hello-nginx config-nginx pre-config-nginx custom-nginx"
lb share local/debian hello-nginx config-nginx pre-config-nginx custom-nginx
echo
say "- Debian and the nginx layer are in every image, stored once." \
  "- config-nginx starts with hello-nginx's steps: it reuses all of hello-nginx's layers and adds only its 'COPY nginx.conf'." \
  "- pre-config-nginx copies the same two files in the other order. Its 'COPY nginx.conf' comes right after nginx, where hello-nginx has 'COPY index.html': from there on its cache keys differ, so it shares only Debian and nginx with hello-nginx and config-nginx, and its index.html, the same file, is a layer on a chain of its own (its own row above)." \
  "  Lesson: put what changes least first; a step moved earlier breaks the reuse of every step after it."

step "4. Run two containers of hello-nginx and one of custom-nginx"
p1=$(free_port "${DEMO_PORT:-18180}")
run_each 80 "$p1" hello-1=hello-nginx hello-2=hello-nginx custom-1=custom-nginx
p1=${ports[0]} p2=${ports[1]} p3=${ports[2]}
lb ps
echo
for spec in "hello-1 $p1" "hello-2 $p2" "custom-1 $p3"; do
  set -- $spec
  printf 'curl http://127.0.0.1:%s/  (%s): %s   Server: %s\n' "$2" "$1" "$(get "$2" | title)" "$(server "$2")"
done
echo
say "Each container runs the image's CMD, nginx -g 'daemon off;', in a network namespace of its own; -p publishes its port 80 on a port of the host's loopback. Its root is an overlay mount: the image's layers (unpacked, or mounted straight from their blobs), shared read-only, and one empty writable layer of its own. Starting one copies nothing."

step "5. A change inside one container stays in that container"
echo "\$ lbuild exec hello-1 sh -c 'echo \"<h1>changed inside hello-1</h1>\" > /usr/share/nginx/html/index.html'"
lb exec hello-1 sh -c 'echo "<h1>changed inside hello-1</h1>" > /usr/share/nginx/html/index.html'
printf 'curl http://127.0.0.1:%s/  (hello-1): %s\n' "$p1" "$(get "$p1" | title)"
printf 'curl http://127.0.0.1:%s/  (hello-2): %s\n' "$p2" "$(get "$p2" | title)"
for c in hello-1 hello-2; do
  echo "\$ lbuild diff $c"
  out=$(lb diff "$c")
  echo "${out:-(no changes)}"
done
echo "\$ lbuild run --rm --network none hello-nginx cat /usr/share/nginx/html/index.html"
lb run --rm --network none hello-nginx cat /usr/share/nginx/html/index.html | title
say "The write copied index.html up into hello-1's own layer (C = changed, A = added); hello-2's layer holds only what nginx writes when it starts (its pid file and its temp dirs), and the image still has the original page."

step "6. Push A and B to a registry, pull them into an empty store"
start_registry "$work/registry"
say "A local registry: docker-registry on $registry."
for img in pre-config-nginx custom-nginx; do
  echo "\$ lbuild push $img $registry/$img"
  lb push "$img" "$registry/$img"
done
echo
say "A went up whole (compressed on the way); B's first three layers were in the registry already, so only its index.html layer was uploaded."
echo
pulled=$work/pulled
for img in pre-config-nginx custom-nginx; do
  echo "\$ LBUILD_ROOT=<an empty store> lbuild pull $registry/$img"
  LBUILD_ROOT=$pulled lb pull "$registry/$img"
done
echo
say "The pull of B found three of its four layers in the store, from A: 'Already exists'; it downloaded one."

step "7. Disk use"
lb du
echo
say "Debian and nginx are stored once for the four images, and the containers' own layers hold only what they changed."

step "8. Clean up"
echo "\$ lbuild stop ${containers[*]} && lbuild rm ${containers[*]}"
lb stop -t 5 "${containers[@]}" >/dev/null
lb rm "${containers[@]}" >/dev/null
containers=()
lb ps -a
kill "$registry_pid" && wait "$registry_pid" 2>/dev/null || true
registry_pid=
if [ -z "$own_root" ]; then
  echo
  say "The images stay in $LBUILD_ROOT (lbuild images)."
fi
echo
echo "demo-nginx: done"
