# Helpers the demos share (sourced by demo.sh and nginx/demo.sh).

# lb runs lbuild; step and say print a section title and wrapped prose.
lb() { "$LBUILD" "$@"; }
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold= plain=; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
say() { printf '%s\n' "$@" | fold -s -w 78; }

# stop_started removes the containers in ${containers[@]} and stops the
# registry start_registry started (for the demos' EXIT traps).
stop_started() {
  local c
  for c in "${containers[@]}"; do
    "$LBUILD" rm -f "$c" >/dev/null 2>&1 || true
  done
  if [ -n "${registry_pid:-}" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
}

# free_port N: the first port from N up that nothing listens on.
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

# run_published NAME PORT CPORT IMAGE: "lbuild run -d --name NAME -p
# PORT:CPORT IMAGE", echoing the command; if another program took PORT
# since free_port found it free (two demos at once), the next free port is
# tried. Sets published to the port used.
run_published() {
  local name=$1 port=$2 cport=$3 image=$4 i err
  for i in $(seq 20); do
    if err=$(lb run -d --name "$name" -p "$port:$cport" "$image" 2>&1 >/dev/null); then
      echo "\$ lbuild run -d --name $name -p $port:$cport $image"
      published=$port
      return 0
    fi
    case $err in
    *"host port in use"*)
      lb rm -f "$name" >/dev/null # the container made before the failed start
      port=$(free_port $((port + 1)))
      ;;
    *) echo "$err" >&2; return 1 ;;
    esac
  done
  echo "$err" >&2
  return 1
}

# run_each CPORT PORT NAME=IMAGE...: run_published for each NAME=IMAGE
# (noted in containers for stop_started), the first from PORT up, each
# next one from the port after the one before. Sets ports to the ports
# used, in order.
run_each() {
  local cport=$1 port=$2 spec
  shift 2
  ports=()
  for spec in "$@"; do
    containers+=("${spec%%=*}")
    run_published "${spec%%=*}" "$port" "$cport" "${spec#*=}"
    ports+=("$published")
    port=$(free_port $((published + 1)))
  done
}

# start_registry DIR: runs Debian's docker-registry on 127.0.0.1 (on
# DEMO_REGISTRY_PORT if set, else on a port the kernel picks, so that two
# demos at once never meet on one), its storage and log in DIR, and waits
# until it answers. Sets registry (host:port) and registry_pid; the caller
# kills registry_pid when done.
start_registry() {
  local dir=$1 port i
  command -v docker-registry >/dev/null || { echo "demo: docker-registry is not installed (apt-get install docker-registry)" >&2; return 1; }
  mkdir -p "$dir"
  cat >"$dir/config.yml" <<CONF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:${DEMO_REGISTRY_PORT:-0}
CONF
  : >"$dir/registry.log" # there before the loop below reads it
  docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 &
  registry_pid=$!
  registry=127.0.0.1:${DEMO_REGISTRY_PORT:-0}
  for i in $(seq 100); do
    # Its own log says where it listens ("listening on 127.0.0.1:PORT").
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/registry.log" | head -n 1)
    if [ -n "$port" ]; then
      registry=127.0.0.1:$port
      curl -fsS "http://$registry/v2/" >/dev/null 2>&1 && return 0
    fi
    kill -0 "$registry_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "demo: docker-registry did not start on $registry (log: $dir/registry.log)" >&2
  return 1
}
