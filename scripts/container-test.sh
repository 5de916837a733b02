#!/usr/bin/env bash
# The container path, built and run for real: build docker/Dockerfile as it is committed, check
# the image, then run the docker/compose.yml quick start with docker-compose and check that
# events reach queue `walbox-demo`, that walbox's /healthz, /readyz and /metrics answer from
# the container, and that walbox stops cleanly on SIGTERM.
# docs/src/development/container-test.md says what this proves and what it does not.
#
#   bash scripts/container-test.sh          # the whole test (installs what it needs)
#   bash scripts/container-test.sh clean    # remove everything it keeps between runs
#   WALBOX_CONTAINER_STATE=DIR bash scripts/container-test.sh   # stand-ins made anew in DIR
#
# The machine has no Docker engine and reaches no container registry. podman stands in for the
# engine (`podman system service` speaks the Docker API that docker-compose 1.29 uses), and the
# base images are local stand-ins built from Debian's packages (docker/standins/).
#
# Kept between runs (the cache): the debootstrap tarball, the stand-in images and the walbox
# image in podman storage of this script's own (/var/lib/walbox-container), and buildah's
# cache mounts (crate registry, cargo target) under /var/tmp. Nothing else of the machine's:
# its own PostgreSQL (5432) and RabbitMQ (5672) are not touched, because the compose stack runs
# in a network namespace of its own (see start_engine).
set -euo pipefail
cd "$(dirname "$0")/.."

# podman storage and the debootstrap tarball (kept); another folder starts from nothing.
state=${WALBOX_CONTAINER_STATE:-/var/lib/walbox-container}
run=/run/walbox-container         # configs, podman's run root and API socket (removed)
project=walboxct                  # compose project name: labels every container it makes
netns=walbox-ct
tmp=""

passed=0
ok() {
  passed=$((passed + 1))
  echo "container-test: ok: $*"
}
fail() {
  echo "container-test: FAILED: $*" >&2
  echo "container-test: $passed passed, 1 failed"
  exit 1
}
say() { echo "container-test: $*"; }
seconds_since() { echo $(($(date +%s) - $1)); }

# --- the tools --------------------------------------------------------------------------------

install_tools() {
  local missing=()
  for tool in podman docker-compose debootstrap runc nsenter curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing podman, buildah, docker-compose, debootstrap, runc (missing: ${missing[*]})"
  # --no-install-recommends: docker-compose would otherwise pull in docker.io and containerd.
  # runc: the default runtime, crun 1.8, refuses a host with mixed cgroup v1/v2 hierarchies.
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    podman buildah docker-compose debootstrap runc netavark aardvark-dns slirp4netns uidmap \
    containernetworking-plugins iptables util-linux curl ca-certificates
}

# podman's configuration and storage, this script's own (CONTAINERS_CONF and friends), so the
# machine's defaults are neither needed nor changed.
configure_podman() {
  mkdir -p "$state" "$run"
  # podman raises RLIMIT_NOFILE and RLIMIT_NPROC in every container to values that need
  # CAP_SYS_RESOURCE, which this machine's root may not have: ask for the current hard limits
  # instead, and for no more processes than pid_max (on this machine runc's setrlimit was
  # refused above it).
  local nofile nproc pid_max
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  pid_max=$(cat /proc/sys/kernel/pid_max)
  [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
  cat >"$run/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
network_config_dir = "$run/networks"
EOF
  cat >"$run/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$state/storage"
runroot = "$run/storage"
EOF
  # The stand-ins are stored under the names the Dockerfile and compose.yml use
  # (docker.io/library/...); short names resolve to them and nothing is ever pulled.
  cat >"$run/registries.conf" <<EOF
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
  export CONTAINERS_CONF="$run/containers.conf"
  export CONTAINERS_STORAGE_CONF="$run/storage.conf"
  export CONTAINERS_REGISTRIES_CONF="$run/registries.conf"
}

image_exists() { podman image exists "$1"; }

# Builds use the host's network (`--network host`): their RUN steps fetch Debian packages and
# crates, and the machine's resolver and egress are not reachable from a bridged container.

# --- 1. stand-ins for the base images -----------------------------------------------------------

debian_image=docker.io/library/debian:bookworm-slim
rust_toolchain_image=localhost/walbox-standin/rust-toolchain
rust_image=docker.io/library/rust:1-bookworm
postgres_image=docker.io/library/postgres:15
rabbitmq_image=docker.io/library/rabbitmq:3-management

build_debian() {
  image_exists "$debian_image" && return
  local tarball=$state/bookworm-minbase.tar
  if [ ! -s "$tarball" ]; then
    say "debootstrap --variant=minbase bookworm (once; cached in $tarball)"
    local root=$state/rootfs.tmp
    rm -rf "$root"
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$state/debootstrap.log" 2>&1 ||
      fail "debootstrap failed; see $state/debootstrap.log"
    # The same package sources as Debian's own images: the release, its updates and security.
    cat >"$root/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  podman import -q --change 'CMD ["bash"]' "$tarball" "$debian_image" >/dev/null
  podman tag "$debian_image" docker.io/library/debian:bookworm
}

# The official rust image's layout, with this machine's toolchain: /usr/local/rustup holds the
# toolchain and rustup's settings, /usr/local/cargo/bin rustup and its proxies.
build_rust() {
  local toolchain version name
  toolchain=$(rustc --print sysroot)
  version=$(rustc --version | awk '{print $2}')
  name=$version-x86_64-unknown-linux-gnu
  if ! image_exists "$rust_toolchain_image:$version"; then
    say "rust builder stand-in with the machine's Rust $version (once)"
    local ctx=$state/rust-context
    rm -rf "$ctx"
    mkdir -p "$ctx/rustup/toolchains/$name" "$ctx/cargo/bin"
    # Without share/ (documentation): what cargo build needs is in bin/, lib/ and libexec/.
    cp -a "$toolchain"/bin "$toolchain"/lib "$toolchain"/libexec "$ctx/rustup/toolchains/$name/"
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$name" \
      >"$ctx/rustup/settings.toml"
    cp "$(command -v rustup)" "$ctx/cargo/bin/rustup"
    for proxy in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do
      ln -s rustup "$ctx/cargo/bin/$proxy"
    done
    cp docker/standins/rust/Containerfile "$ctx/"
    podman build -q --network host --build-arg BASE="$debian_image" -t "$rust_toolchain_image:$version" "$ctx" >/dev/null ||
      fail "building the rust toolchain stand-in"
    rm -rf "$ctx"
  fi
  # The machine's extra CA certificates (crates.io goes through a TLS-intercepting proxy here).
  # Rebuilt on every run from the layer cache, so a changed certificate is picked up.
  tmp=$(mktemp -d)
  cp docker/standins/rust/Containerfile.ca "$tmp/Containerfile"
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$tmp/"
  else
    # No extra certificate: an empty placeholder keeps the COPY valid and changes nothing.
    : >"$tmp/none.crt"
  fi
  podman build -q --network host --build-arg BASE="$rust_toolchain_image:$version" -t "$rust_image" "$tmp" >/dev/null ||
    fail "building the rust stand-in"
  rm -rf "$tmp"
  tmp=""
}

build_service_standins() {
  podman build -q --network host --build-arg BASE="$debian_image" -t "$postgres_image" docker/standins/postgres >/dev/null ||
    fail "building the postgres stand-in"
  podman build -q --network host --build-arg BASE="$debian_image" -t "$rabbitmq_image" docker/standins/rabbitmq >/dev/null ||
    fail "building the rabbitmq stand-in"
}

# --- 2. the walbox image ------------------------------------------------------------------------

walbox_image=localhost/walbox:local

build_walbox() {
  local started
  started=$(date +%s)
  say "podman build --format docker -f docker/Dockerfile (a release build: a cold one takes minutes)"
  # --format docker: the OCI format has no HEALTHCHECK, and podman would drop it.
  podman build --format docker --network host -f docker/Dockerfile -t "$walbox_image" . >"$run/build.log" 2>&1 || {
    tail -n 40 "$run/build.log" >&2
    fail "podman build -f docker/Dockerfile"
  }
  ok "docker/Dockerfile builds unchanged ($(seconds_since "$started") s)"
  podman image prune -f >/dev/null
}

check_image() {
  local user entrypoint cmd health
  user=$(podman image inspect --format '{{.Config.User}}' "$walbox_image")
  [ "$user" = 10001:10001 ] || fail "image user is '$user', not 10001:10001"
  [ "$(podman run --rm --network none --no-healthcheck --entrypoint id "$walbox_image" -u)" = 10001 ] ||
    fail "the container does not run as uid 10001"
  ok "runs as the non-root user 10001:10001"
  entrypoint=$(podman image inspect --format '{{json .Config.Entrypoint}}' "$walbox_image")
  cmd=$(podman image inspect --format '{{json .Config.Cmd}}' "$walbox_image")
  if [ "$entrypoint" != '["walbox"]' ] || [ "$cmd" != '["run"]' ]; then
    fail "entrypoint $entrypoint and command $cmd, expected [\"walbox\"] [\"run\"]"
  fi
  ok "entrypoint [walbox], command [run]"
  health=$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$walbox_image")
  [ "$health" = '["CMD","walbox-healthcheck","/healthz"]' ] ||
    fail "HEALTHCHECK is $health, expected CMD walbox-healthcheck /healthz"
  ok "HEALTHCHECK kept: $health"
  podman run --rm --network none --no-healthcheck "$walbox_image" --help >"$run/help.txt" 2>&1 || fail "walbox --help in the image"
  grep -q '^Usage: walbox' "$run/help.txt" || fail "walbox --help printed: $(head -3 "$run/help.txt")"
  ok "walbox --help runs in the image"
}

# --- 3. the compose quick start -----------------------------------------------------------------

compose() { docker-compose -p "$project" -f docker/compose.yml "$@"; }
in_netns() { nsenter --net="/run/netns/$netns" "$@"; }
container_of() { podman ps -aq --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=$1"; }
health_of() { podman inspect --format '{{.State.Health.Status}}' "$(container_of "$1")" 2>/dev/null; }

service_pid=""
healthcheck_pid=""

# compose.yml publishes 5672, 15672 and 9820, and the machine's own RabbitMQ holds 5672. An
# override file cannot take a published port away (docker-compose merges `ports` lists), so
# instead the API service, and with it every container and published port, lives in a network
# namespace of its own: the committed compose file runs unchanged, on its own ports, and the
# checks reach them from inside that namespace.
start_engine() {
  ip netns add "$netns"
  ip -n "$netns" link set lo up
  # nsenter, not `ip netns exec`: that one remounts /sys and would hide the cgroup hierarchy.
  # Called directly, not through in_netns, so that $! is the service's own pid (nsenter execs
  # podman) and cleanup stops the service itself.
  nsenter --net="/run/netns/$netns" podman system service --time=0 "unix://$run/podman.sock" \
    >"$run/service.log" 2>&1 &
  service_pid=$!
  for _ in $(seq 50); do
    [ -S "$run/podman.sock" ] && break
    sleep 0.2
  done
  [ -S "$run/podman.sock" ] || fail "podman system service did not start: $(cat "$run/service.log")"
  export DOCKER_HOST="unix://$run/podman.sock"
}

# podman runs health checks from systemd timers, and this machine has no systemd: run each
# container's check at its own interval, as the engine would, for as long as the test runs.
run_healthchecks() {
  # On TERM, bash runs this after the check under way has finished: no orphaned podman.
  trap 'exit 0' TERM
  declare -A last=()
  while true; do
    local now id interval
    now=$(date +%s)
    for id in $(podman ps -q --filter "label=com.docker.compose.project=$project"); do
      interval=$(podman inspect --format '{{.Config.Healthcheck.Interval.Seconds}}' "$id" 2>/dev/null) || continue
      interval=${interval%%.*}
      if [ -z "$interval" ] || [ "$interval" = 0 ]; then continue; fi
      if [ $((now - ${last[$id]:-0})) -ge "$interval" ]; then
        last[$id]=$now
        podman healthcheck run "$id" >/dev/null 2>&1 || true
      fi
    done
    sleep 1
  done
}

compose_up() {
  run_healthchecks &
  healthcheck_pid=$!
  local started
  started=$(date +%s)
  say "docker-compose up -d (waits for PostgreSQL and RabbitMQ to be healthy, then walbox)"
  timeout 600 docker-compose -p "$project" -f docker/compose.yml up -d --no-build >"$run/up.log" 2>&1 || {
    cat "$run/up.log" >&2
    fail "docker-compose up"
  }
  for service in postgres rabbitmq walbox; do
    [ "$(health_of "$service")" = healthy ] || fail "service $service is $(health_of "$service") after up"
  done
  ok "postgres, rabbitmq and walbox healthy ($(seconds_since "$started") s)"
}

# Events in queue walbox-demo, read through the broker's management API on its published port.
check_events() {
  local deadline depth body
  deadline=$(($(date +%s) + 120))
  depth=0
  while [ "$(date +%s)" -lt "$deadline" ]; do
    depth=$(in_netns curl -fsS -u guest:guest http://127.0.0.1:15672/api/queues/%2f/walbox-demo 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin).get("messages", 0))' 2>/dev/null || echo 0)
    [ "$depth" -ge 3 ] && break
    sleep 2
  done
  [ "$depth" -ge 3 ] || fail "queue walbox-demo holds $depth messages after 2 minutes, expected 3 or more"
  body=$(in_netns curl -fsS -u guest:guest -H 'content-type: application/json' \
    -d '{"count":3,"ackmode":"ack_requeue_true","encoding":"auto"}' \
    http://127.0.0.1:15672/api/queues/%2f/walbox-demo/get)
  python3 - "$body" <<'PY' || fail "the messages in walbox-demo are not the producer's events"
import json, sys
messages = json.loads(sys.argv[1])
assert len(messages) == 3, messages
for n, m in enumerate(messages, start=1):
    payload = json.loads(m["payload"])
    headers = m["properties"].get("headers", {})
    assert payload["seq"] == n, (n, payload)
    assert headers.get("x-aggregate-type") == "order", headers
    assert headers.get("x-commit-lsn"), headers
    assert headers.get("source") == "walbox-demo-producer", headers
    assert m["exchange"] == "outbox", m
    assert m["properties"].get("message_id"), m["properties"]
    print(f"container-test:   {m['routing_key']} seq={payload['seq']} lsn={headers['x-commit-lsn']}")
PY
  ok "events arrive in queue walbox-demo, in order, from exchange outbox ($depth queued)"
}

check_endpoints() {
  local metrics
  for path in /healthz /readyz; do
    in_netns curl -fsS -o /dev/null "http://127.0.0.1:9820$path" || fail "GET $path on the published port 9820"
    podman exec "$(container_of walbox)" walbox-healthcheck "$path" || fail "walbox-healthcheck $path in the container"
  done
  ok "/healthz and /readyz answer 200 on port 9820 and inside the container"
  metrics=$(in_netns curl -fsS http://127.0.0.1:9820/metrics) || fail "GET /metrics on port 9820"
  local confirmed
  confirmed=$(awk '$1 == "walbox_events_confirmed_total" {print $2}' <<<"$metrics")
  if [ -z "$confirmed" ] || [ "${confirmed%%.*}" -lt 3 ]; then
    fail "/metrics: walbox_events_confirmed_total is '${confirmed}', expected 3 or more"
  fi
  grep -q '^walbox_state{state="streaming"} 1' <<<"$metrics" || fail "/metrics: walbox is not streaming"
  ok "/metrics answers: $confirmed events confirmed, state streaming"
}

# `docker-compose stop` sends STOPSIGNAL (SIGTERM) and waits stop_grace_period (30 s) before a
# SIGKILL: walbox must exit 0 by itself within it.
check_sigterm() {
  local id started took code
  id=$(container_of walbox)
  started=$(date +%s)
  compose stop -t 30 walbox >"$run/stop.log" 2>&1 || fail "docker-compose stop walbox: $(cat "$run/stop.log")"
  took=$(seconds_since "$started")
  code=$(podman inspect --format '{{.State.ExitCode}}' "$id")
  [ "$code" = 0 ] || fail "walbox exited $code on SIGTERM (137 means it was killed after the grace period)"
  [ "$took" -lt 30 ] || fail "walbox took $took s to stop, the grace period is 30 s"
  ok "SIGTERM: walbox exited 0 in $took s (grace period 30 s)"
}

# shellcheck disable=SC2317 # called from cleanup, the EXIT trap
dump_logs() {
  [ -n "${DOCKER_HOST:-}" ] || return 0
  say "last log lines of each service:"
  compose logs --no-color --tail 30 >&2 2>/dev/null || true
}

# Every container, volume and network of the compose project, found by its label, so that a
# run that died half-way is cleaned up by the next one too.
remove_stack() {
  local label=label=com.docker.compose.project=$project ids=()
  mapfile -t ids < <(podman ps -aq --filter "$label" 2>/dev/null)
  [ ${#ids[@]} -eq 0 ] || podman rm -f -t 5 "${ids[@]}" >/dev/null 2>&1 || true
  mapfile -t ids < <(podman volume ls -q --filter "$label" 2>/dev/null)
  [ ${#ids[@]} -eq 0 ] || podman volume rm -f "${ids[@]}" >/dev/null 2>&1 || true
  mapfile -t ids < <(podman network ls -q --filter "$label" 2>/dev/null)
  [ ${#ids[@]} -eq 0 ] || podman network rm -f "${ids[@]}" >/dev/null 2>&1 || true
}

# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
  local status=$?
  [ "$status" = 0 ] || dump_logs
  if [ -n "${DOCKER_HOST:-}" ]; then
    compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  fi
  if [ -n "$healthcheck_pid" ]; then
    kill "$healthcheck_pid" 2>/dev/null || true
    wait "$healthcheck_pid" 2>/dev/null || true
  fi
  remove_stack
  if [ -n "$service_pid" ]; then
    kill "$service_pid" 2>/dev/null || true
    wait "$service_pid" 2>/dev/null || true
  fi
  ip netns del "$netns" 2>/dev/null || true
  [ -z "$tmp" ] || rm -rf "$tmp"
  rm -rf "$run"
  return "$status"
}

# --- main -----------------------------------------------------------------------------------------

main() {
  if [ "${1:-}" = clean ]; then
    configure_podman
    remove_stack
    podman rmi -af >/dev/null 2>&1 || true
    rm -rf "$state" "$run" /var/tmp/buildah-cache/walbox-cargo-registry /var/tmp/buildah-cache/walbox-target
    say "removed $state and the build caches"
    exit 0
  fi

  started=$(date +%s)
  install_tools
  configure_podman
  trap cleanup EXIT
  # What an earlier run that was killed may have left.
  remove_stack
  ip netns del "$netns" 2>/dev/null || true

  build_debian
  build_rust
  build_service_standins
  ok "stand-in base images ready ($(seconds_since "$started") s so far)"

  build_walbox
  check_image

  start_engine
  compose_up
  check_events
  check_endpoints
  check_sigterm

  say "took $(seconds_since "$started") s"
  echo "container-test: $passed passed, 0 failed"
}

# One line, so that bash has read the whole file before it runs anything: editing the script
# while it runs cannot change what this run does.
main "$@"; exit $?
