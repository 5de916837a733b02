#!/usr/bin/env bash
# Private PostgreSQL 17 and RabbitMQ 4.0 servers for the high-availability tests
# (docs/src/operations/high-availability.md), on a machine whose own distribution ships older
# ones. They run from a Debian trixie userland (debootstrap --variant=minbase, plus
# postgresql-17 and rabbitmq-server) under chroot, on private ports, beside — never instead
# of — the machine's own servers:
#
#   PostgreSQL 17   primary 127.0.0.1:$BASE+432 (wal_level=logical, synchronized_standby_slots
#                   naming the standby's physical slot) and a physical standby on $BASE+433
#                   (streaming through that slot, hot_standby_feedback, sync_replication_slots)
#   RabbitMQ 4.0    three clustered nodes walboxha1..3@localhost, AMQP on $BASE+672..674, stream
#                   on $BASE+552..554, their own epmd on $BASE+369; every port the nodes and
#                   their CLI open lies in [$BASE, $BASE+999]; stream over TLS on $BASE+555..557
#                   (also on 127.0.0.2, where the certificate's names do not match), with a
#                   client certificate required: `start` makes a CA, a server certificate naming
#                   localhost and 127.0.0.1, a client certificate and an unrelated CA under
#                   $WALBOX_HA_ROOT/rootfs/srv/walbox-ha/tls (openssl, fresh when no node runs)
#
# BASE is WALBOX_HA_PORT_BASE (default 46000). Subcommands:
#
#   userland                 build or unpack the userland only (cached, see below)
#   start | stop | status    all servers (stop also unmounts; data stays until `clean`, but
#                            `start` with no RabbitMQ node running gives the nodes fresh data:
#                            a new cluster, no queues; PostgreSQL's data is kept)
#   clean                    stop, then remove the servers' data and the unpacked userland
#   pg-reset                 fresh primary + standby (wipes both; rabbit untouched)
#   pg-stop|pg-kill|pg-start primary|standby      one PostgreSQL server (fast stop / SIGKILL)
#   pg-promote               promote the standby (the old primary is left as it is: stop it first)
#   pg-sync on|off           the standby's sync_replication_slots (off: its slots stop syncing)
#   pg-wait-synced SLOT [S]  wait until the standby holds SLOT as synced and not temporary
#   rabbit-stop|rabbit-kill|rabbit-start N                one node (N = 1, 2, 3)
#   rabbit-freeze N          SIGSTOP one node (hung, not gone: its peers notice only when it is killed)
#   rabbit-rolling           restart the nodes one after the other, each back before the next
#   env                      print the WALBOX_HA_* variables the tests read
#
# The userland is cached as a zstd tarball in $WALBOX_HA_CACHE (default /var/cache/walbox),
# named by the versions of postgresql-17 and rabbitmq-server inside it; with no tarball there
# the script builds one (debootstrap from Debian's archive; about a minute and 220 MB). The
# servers run unpacked under $WALBOX_HA_ROOT (default /var/lib/walbox-ha). Every process is
# started with its pid recorded and stopped by that pid, never by name; the machine's own
# PostgreSQL (5432) and RabbitMQ (5672, rabbit@...) are never touched. RabbitMQ nodes that do
# not boot within WALBOX_HA_BOOT_SECONDS (default 300) fail `start` and `rabbit-start`.
set -euo pipefail

BASE="${WALBOX_HA_PORT_BASE:-46000}"
CACHE="${WALBOX_HA_CACHE:-/var/cache/walbox}"
TOP="${WALBOX_HA_ROOT:-/var/lib/walbox-ha}"
ROOTFS="$TOP/rootfs"
MIRROR="${WALBOX_HA_MIRROR:-http://deb.debian.org/debian}"
# Bump when the way the userland is made changes, so an old tarball is not reused.
RECIPE=1

PG_PRIMARY_PORT=$((BASE + 432))
PG_STANDBY_PORT=$((BASE + 433))
EPMD_PORT=$((BASE + 369))
STANDBY_SLOT=walbox_standby
PG_BIN=/usr/lib/postgresql/17/bin
# Inside the userland.
SRV=/srv/walbox-ha
# How long `start` and `rabbit-start` wait for RabbitMQ nodes to boot before failing.
BOOT_SECONDS="${WALBOX_HA_BOOT_SECONDS:-300}"

log() { echo "trixie-servers: $*" >&2; }
die() {
  log "$*"
  exit 1
}

# ---------------------------------------------------------------------------------------------
# The userland: build once, cache, unpack.

cached_tarball() {
  { ls -1 "$CACHE"/trixie-userland-r"$RECIPE"-*.tar.zst 2>/dev/null || true; } | sort | tail -1
}

build_tarball() {
  if ! command -v debootstrap >/dev/null || ! command -v zstd >/dev/null; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq debootstrap zstd >/dev/null
  fi
  local build="$TOP/build"
  unmount_all "$build"
  rm -rf --one-file-system "$build"
  mkdir -p "$build" "$CACHE"
  log "building the trixie userland (debootstrap, then postgresql-17 and rabbitmq-server)"
  debootstrap --variant=minbase trixie "$build" "$MIRROR" >"$TOP/debootstrap.log" 2>&1 ||
    die "debootstrap failed: see $TOP/debootstrap.log"
  # Package scripts must not start services; postgresql-common must not create a cluster.
  printf '#!/bin/sh\nexit 101\n' >"$build/usr/sbin/policy-rc.d"
  chmod 755 "$build/usr/sbin/policy-rc.d"
  mkdir -p "$build/etc/postgresql-common/createcluster.d"
  echo "create_main_cluster = false" >"$build/etc/postgresql-common/createcluster.d/walbox.conf"
  mount_into "$build"
  if ! chroot "$build" env DEBIAN_FRONTEND=noninteractive LC_ALL=C sh -c \
    'apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-17 rabbitmq-server' \
    >"$TOP/install.log" 2>&1; then
    unmount_all "$build"
    die "installing postgresql-17 and rabbitmq-server failed: see $TOP/install.log"
  fi
  unmount_all "$build"
  chroot "$build" apt-get clean
  rm -rf "$build/var/lib/apt/lists/"*
  local pg rmq
  pg=$(chroot "$build" dpkg-query -W -f '${Version}' postgresql-17)
  rmq=$(chroot "$build" dpkg-query -W -f '${Version}' rabbitmq-server)
  local name="trixie-userland-r$RECIPE-pg$pg-rabbitmq$rmq.tar.zst"
  # Numeric owners: the userland's postgres and rabbitmq users need not have the host's ids.
  tar --numeric-owner -C "$build" -cf - . | zstd -q -T0 -10 -o "$CACHE/$name.part"
  mv "$CACHE/$name.part" "$CACHE/$name"
  rm -rf --one-file-system "$build"
  log "cached $CACHE/$name"
}

# Unpacks the newest cached userland into $ROOTFS unless that one is already there.
ensure_userland() {
  local tarball
  tarball=$(cached_tarball)
  if [ -z "$tarball" ]; then
    build_tarball
    tarball=$(cached_tarball)
  fi
  if [ -f "$ROOTFS/.walbox-userland" ] && [ "$(cat "$ROOTFS/.walbox-userland")" = "$(basename "$tarball")" ]; then
    return
  fi
  if any_running; then die "servers are running on an older userland: run 'stop' first"; fi
  unmount_all "$ROOTFS"
  rm -rf --one-file-system "$ROOTFS"
  mkdir -p "$ROOTFS"
  zstd -q -d -c "$tarball" | tar --numeric-owner -C "$ROOTFS" -xf -
  basename "$tarball" >"$ROOTFS/.walbox-userland"
  log "unpacked $(basename "$tarball")"
}

# What the servers need from the host: /proc, /dev (PostgreSQL's shared memory lives in
# /dev/shm) and name resolution for localhost.
mount_into() {
  local root=$1
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
  mountpoint -q "$root/dev/shm" || mount --bind /dev/shm "$root/dev/shm"
  mountpoint -q "$root/dev/pts" || mount --bind /dev/pts "$root/dev/pts"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n' >"$root/etc/hosts"
}

unmount_all() {
  local root=$1 m
  for m in dev/pts dev/shm dev proc; do
    if mountpoint -q "$root/$m" 2>/dev/null; then umount "$root/$m" || umount -l "$root/$m"; fi
  done
}

# ---------------------------------------------------------------------------------------------
# Running things inside the userland.

# Runs a command inside the userland as USER (ids looked up there: they need not match the
# host's), with a clean environment plus any NAME=value arguments given before the command.
as_user() {
  local user=$1 entry
  shift
  entry=$(chroot "$ROOTFS" getent passwd "$user")
  chroot --userspec="$(echo "$entry" | cut -d: -f3,4)" "$ROOTFS" \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME="$(echo "$entry" | cut -d: -f6)" "$@"
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Waits up to $2 seconds for pid $1 to exit.
wait_gone() {
  local pid=$1 i
  for i in $(seq 1 "$(($2 * 10))"); do
    alive "$pid" || return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL 17: a primary and a physical standby.

pg_dir() { echo "$SRV/pg/$1"; }
pg_port() { if [ "$1" = primary ]; then echo "$PG_PRIMARY_PORT"; else echo "$PG_STANDBY_PORT"; fi; }
pg_pid() { head -1 "$ROOTFS$(pg_dir "$1")/postmaster.pid" 2>/dev/null || true; }
pg_running() { alive "$(pg_pid "$1")"; }
psql_on() { # which, sql...
  local port
  port=$(pg_port "$1")
  shift
  as_user postgres psql -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
}

pg_start() {
  local which=$1 dir
  dir=$(pg_dir "$which")
  [ -f "$ROOTFS$dir/PG_VERSION" ] || die "no $which data directory: run 'start' or 'pg-reset'"
  if pg_running "$which"; then return; fi
  # A SIGKILLed postmaster leaves its children for a moment; they hold the shared memory.
  as_user postgres "$PG_BIN/pg_ctl" -D "$dir" -l "$SRV/pg/$which.log" -w -t 120 start >/dev/null ||
    die "PostgreSQL $which did not start: see $ROOTFS$SRV/pg/$which.log"
}

pg_stop() {
  local which=$1
  pg_running "$which" || return 0
  as_user postgres "$PG_BIN/pg_ctl" -D "$(pg_dir "$which")" -m fast -w -t 120 stop >/dev/null
}

# SIGKILL to the postmaster's process group (pg_ctl makes it a session leader), as a machine
# crash would do; then waits until none of its processes is left.
pg_kill() {
  local which=$1 pid
  pid=$(pg_pid "$which")
  alive "$pid" || return 0
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
  wait_gone "$pid" 30 || die "PostgreSQL $which (pid $pid) survived SIGKILL"
  local i
  for i in $(seq 1 100); do
    pgrep -g "$pid" >/dev/null 2>&1 || break
    sleep 0.1
  done
}

pg_reset() {
  pg_stop standby || pg_kill standby
  pg_stop primary || pg_kill primary
  rm -rf --one-file-system "$ROOTFS$(pg_dir primary)" "$ROOTFS$(pg_dir standby)"
  local primary standby
  primary=$(pg_dir primary)
  standby=$(pg_dir standby)
  as_user postgres "$PG_BIN/initdb" -D "$primary" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
  # fsync=off: only whole-machine crashes need it, and these tests kill processes, not machines.
  cat >>"$ROOTFS$primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PRIMARY_PORT
unix_socket_directories = '/run/postgresql'
wal_level = logical
max_replication_slots = 32
max_wal_senders = 32
fsync = off
# Logical walsenders send nothing the standby has not received (failover slots, PostgreSQL 17).
synchronized_standby_slots = '$STANDBY_SLOT'
CONF
  pg_start primary
  psql_on primary -c "select pg_create_physical_replication_slot('$STANDBY_SLOT', true)" >/dev/null
  # -d names a database in primary_conninfo: the slot sync worker needs one.
  as_user postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U postgres \
    -D "$standby" -R -S "$STANDBY_SLOT" -d "dbname=postgres" -X stream -c fast --no-sync
  # Later lines win: the standby must not wait for a slot of its own once it is promoted.
  cat >>"$ROOTFS$standby/postgresql.auto.conf" <<CONF
port = $PG_STANDBY_PORT
synchronized_standby_slots = ''
hot_standby_feedback = on
sync_replication_slots = on
CONF
  pg_start standby
  log "PostgreSQL 17: primary 127.0.0.1:$PG_PRIMARY_PORT, standby 127.0.0.1:$PG_STANDBY_PORT (fresh)"
}

pg_start_all() {
  if [ ! -f "$ROOTFS$(pg_dir primary)/PG_VERSION" ] || [ ! -f "$ROOTFS$(pg_dir standby)/PG_VERSION" ]; then
    pg_reset
    return
  fi
  # After a promotion the old primary stays down: two primaries would split the history.
  if [ -f "$ROOTFS$(pg_dir standby)/standby.signal" ]; then pg_start primary; fi
  pg_start standby
}

pg_promote() {
  as_user postgres "$PG_BIN/pg_ctl" -D "$(pg_dir standby)" -w -t 120 promote >/dev/null
  log "standby promoted: 127.0.0.1:$PG_STANDBY_PORT is the primary now"
}

pg_sync() {
  local value=$1
  case "$value" in on | off) ;; *) die "pg-sync takes on or off" ;; esac
  echo "sync_replication_slots = $value" >>"$ROOTFS$(pg_dir standby)/postgresql.auto.conf"
  pg_running standby && as_user postgres "$PG_BIN/pg_ctl" -D "$(pg_dir standby)" reload >/dev/null
  log "standby: sync_replication_slots = $value"
}

# A freshly synchronized slot is `synced` but `temporary` until the primary's slot has moved its
# catalog xmin past what the standby has; a temporary one is dropped at promotion. Logging a
# standby snapshot on the primary moves things along; the sync worker retries every 30 s at most.
pg_wait_synced() {
  local slot=$1 timeout=${2:-120} i state
  for i in $(seq 1 "$timeout"); do
    state=$(psql_on standby -c "select synced and not temporary from pg_replication_slots where slot_name = '$slot'" || true)
    if [ "$state" = t ]; then
      log "standby holds slot $slot, synchronized ($i s)"
      return 0
    fi
    if [ $((i % 2)) = 1 ]; then psql_on primary -c "select pg_log_standby_snapshot()" >/dev/null 2>&1 || true; fi
    sleep 1
  done
  die "standby has no synchronized, persistent copy of slot $slot after $timeout s"
}

# ---------------------------------------------------------------------------------------------
# RabbitMQ 4.0: three clustered nodes with their own epmd.

NODES="1 2 3"
node_name() { echo "walboxha$1@localhost"; }
node_dir() { echo "$SRV/rabbit$1"; }
amqp_port() { echo $((BASE + 671 + $1)); }
stream_port() { echo $((BASE + 551 + $1)); }
stream_tls_port() { echo $((BASE + 554 + $1)); }
TLS_DIR=$SRV/tls
dist_port() { echo $((BASE + 679 + $1)); }
beam_pid() { cat "$ROOTFS$(node_dir "$1")/pid" 2>/dev/null || true; }
node_running() { alive "$(beam_pid "$1")"; }

# Runs a RabbitMQ program (server or CLI) for node N inside the userland. The CLI takes its
# distribution port from [BASE+690, BASE+699] instead of its default range far outside.
rabbit_env() {
  local n=$1 dir
  shift
  dir=$(node_dir "$n")
  as_user rabbitmq RABBITMQ_NODENAME="$(node_name "$n")" RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    ERL_EPMD_PORT="$EPMD_PORT" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_CTL_DIST_PORT_MIN=$((BASE + 690)) RABBITMQ_CTL_DIST_PORT_MAX=$((BASE + 699)) \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" "$@"
}
ctl() { # node, rabbitmqctl arguments...
  local n=$1
  shift
  rabbit_env "$n" rabbitmqctl -q -n "$(node_name "$n")" "$@"
}

epmd_start() {
  local pidfile="$ROOTFS$SRV/epmd.pid"
  if alive "$(cat "$pidfile" 2>/dev/null || true)"; then return; fi
  setsid chroot "$ROOTFS" env -i PATH=/usr/bin:/bin epmd -port "$EPMD_PORT" -address 127.0.0.1 \
    >"$ROOTFS$SRV/epmd.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  sleep 0.3
}

# The private epmd outlives the nodes: stopped by its pid once none is left.
epmd_stop() {
  local pidfile="$ROOTFS$SRV/epmd.pid" pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if alive "$pid"; then
    kill "$pid"
    wait_gone "$pid" 10 || kill -KILL "$pid"
  fi
  rm -f "$pidfile"
}

node_configure() {
  local n=$1 dir i
  dir="$ROOTFS$(node_dir "$n")"
  mkdir -p "$dir/log" "$dir/mnesia"
  {
    echo "listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")"
    echo "stream.listeners.tcp.1 = 127.0.0.1:$(stream_port "$n")"
    echo "stream.advertised_host = localhost"
    echo "stream.advertised_port = $(stream_port "$n")"
    # TLS: a client on a TLS connection is sent to a leader's advertised host and TLS port, so
    # the certificate must name the advertised host (localhost) too.
    echo "stream.listeners.ssl.1 = 127.0.0.1:$(stream_tls_port "$n")"
    echo "stream.listeners.ssl.2 = 127.0.0.2:$(stream_tls_port "$n")"
    echo "stream.advertised_tls_port = $(stream_tls_port "$n")"
    echo "ssl_options.cacertfile = $TLS_DIR/ca.pem"
    echo "ssl_options.certfile = $TLS_DIR/server.pem"
    echo "ssl_options.keyfile = $TLS_DIR/server.key"
    echo "ssl_options.verify = verify_peer"
    echo "ssl_options.fail_if_no_peer_cert = true"
    echo "cluster_formation.peer_discovery_backend = classic_config"
    for i in $NODES; do echo "cluster_formation.classic_config.nodes.$i = $(node_name "$i")"; done
    echo "disk_free_limit.absolute = 50MB"
    echo "log.file.level = info"
  } >"$dir/rabbitmq.conf"
  # Stream replication listens in a port range of its own (default 6000-6500).
  echo "[{osiris, [{port_range, {$((BASE + 700 + 20 * (n - 1))), $((BASE + 719 + 20 * (n - 1)))}}]}]." \
    >"$dir/advanced.config"
  echo "[rabbitmq_stream]." >"$dir/enabled_plugins"
  chroot "$ROOTFS" chown -R rabbitmq:rabbitmq "$(node_dir "$n")"
}

# Starts node N's server in the background (does not wait). A killed node leaves its pid file.
node_launch() {
  local n=$1 dir
  dir=$(node_dir "$n")
  if node_running "$n"; then return 1; fi
  rm -f "$ROOTFS$dir/pid"
  node_configure "$n"
  setsid -w bash "$0" _rabbit-server "$n" >"$ROOTFS$dir/console.log" 2>&1 </dev/null &
  # The launcher lives as long as the node's server. A node that fails its boot writes no pid
  # file, so node_await tells a failed boot by the launcher's exit.
  echo $! >"$ROOTFS$dir/launcher.pid"
  return 0
}

# The CLI fails at once while the node has not registered with epmd yet: ask again. Nodes
# started together sometimes fail their boot-time cluster check while a peer is half up
# ({node_not_running, ...}); such a node is launched again, a few times at most. Gives up at
# second $2 of the script ($SECONDS), so a node waiting for a peer that never comes fails
# the command instead of hanging it.
node_await() {
  local n=$1 deadline=$2 relaunches=0 launcher
  launcher="$ROOTFS$(node_dir "$n")/launcher.pid"
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ctl "$n" --timeout 10 await_startup >/dev/null 2>&1; then return 0; fi
    if ! node_running "$n" && ! alive "$(cat "$launcher" 2>/dev/null)" && [ "$relaunches" -lt 3 ]; then
      relaunches=$((relaunches + 1))
      log "RabbitMQ node $(node_name "$n") failed to boot; launching it again ($relaunches)"
      cp "$ROOTFS$(node_dir "$n")/console.log" "$ROOTFS$(node_dir "$n")/console.failed.log" || true
      sleep 2
      node_launch "$n" || true
    fi
    sleep 1
  done
  die "RabbitMQ node $(node_name "$n") did not start within $BOOT_SECONDS s: see $ROOTFS$(node_dir "$n")/console.log and log/ ('stop' ends what did start)"
}

# With no node running, the nodes start from empty data and form a fresh cluster. A node
# booting on the data a `stop` kept waits for the peers that were running when it stopped
# (10 x 30 s for the Mnesia tables, then a failed boot, a relaunch and the same wait again):
# a quarter of an hour seen in CI. The tests need nothing from an earlier run: they declare
# their own queues and streams. With some node still running, the others rejoin it on their
# data, as `rabbit-start` does.
rabbit_start_all() {
  local n launched="" deadline=$((SECONDS + BOOT_SECONDS))
  if ! rabbit_any_running; then
    for n in $NODES; do rm -rf --one-file-system "$ROOTFS$(node_dir "$n")/mnesia"; done
  fi
  epmd_start
  for n in $NODES; do
    if node_launch "$n"; then launched="$launched $n"; fi
  done
  for n in $launched; do node_await "$n" "$deadline"; done
  log "RabbitMQ 4.0: nodes on 127.0.0.1:$(amqp_port 1),$(amqp_port 2),$(amqp_port 3) (stream $(stream_port 1)..$(stream_port 3))"
}

rabbit_any_running() {
  local n
  for n in $NODES; do node_running "$n" && return 0; done
  return 1
}

rabbit_start() {
  epmd_start
  node_launch "$1" || true
  node_await "$1" $((SECONDS + BOOT_SECONDS))
  log "RabbitMQ node $(node_name "$1") up on 127.0.0.1:$(amqp_port "$1")"
}

# A node still booting (waiting for its peers' tables) answers `stop` only when its boot ends,
# minutes later: after 60 s it is sent SIGTERM instead. Returns 1 when the node outlives both
# (`stop` then kills it; `rabbit-stop` fails).
rabbit_stop() {
  local n=$1 pid
  pid=$(beam_pid "$n")
  alive "$pid" || return 0
  rabbit_env "$n" timeout 60 rabbitmqctl -q -n "$(node_name "$n")" stop >/dev/null 2>&1 ||
    kill "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 120; then
    log "RabbitMQ node $(node_name "$n") (pid $pid) did not stop"
    return 1
  fi
  log "RabbitMQ node $(node_name "$n") stopped"
}

# SIGSTOP: the node holds what it received without acting on it (tests/stream.rs: a partition's
# leader that stores nothing while the others go on); `rabbit-kill` ends it.
rabbit_freeze() {
  local n=$1 pid
  pid=$(beam_pid "$n")
  alive "$pid" || die "RabbitMQ node $(node_name "$n") is not running"
  kill -STOP "$pid"
  log "RabbitMQ node $(node_name "$n") frozen (SIGSTOP)"
}

rabbit_kill() {
  local n=$1 pid
  pid=$(beam_pid "$n")
  alive "$pid" || return 0
  kill -KILL "$pid"
  wait_gone "$pid" 30 || die "RabbitMQ node $(node_name "$n") (pid $pid) survived SIGKILL"
  log "RabbitMQ node $(node_name "$n") killed"
}

# One node after the other, each back (and its quorum queues' members with it) before the next
# goes down.
rabbit_rolling() {
  local n i
  for n in $NODES; do
    for i in $(seq 1 60); do
      if ctl "$n" eval 'ok.' >/dev/null 2>&1 &&
        rabbit_env "$n" rabbitmq-queues -q -n "$(node_name "$n")" check_if_node_is_quorum_critical >/dev/null 2>&1; then
        break
      fi
      sleep 1
    done
    rabbit_stop "$n"
    rabbit_start "$n"
  done
}

# ---------------------------------------------------------------------------------------------
# Everything.

prepare() {
  mkdir -p "$TOP"
  ensure_userland
  mount_into "$ROOTFS"
  mkdir -p "$ROOTFS$SRV/pg" "$ROOTFS/run/postgresql"
  chroot "$ROOTFS" chown postgres:postgres "$SRV/pg" /run/postgresql
  # The nodes and the CLI share the cookie in the rabbitmq user's home.
  local cookie="$ROOTFS/var/lib/rabbitmq/.erlang.cookie"
  if [ ! -s "$cookie" ]; then
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$cookie"
  fi
  chmod 400 "$cookie"
  chroot "$ROOTFS" chown rabbitmq:rabbitmq /var/lib/rabbitmq/.erlang.cookie
}

# A fresh CA, server certificate (localhost, 127.0.0.1), client certificate and an unrelated CA
# (for the wrong-CA test), all P-256 with PKCS#8 keys. Kept while a node runs (it reads them).
tls_certs() {
  local dir="$ROOTFS$TLS_DIR"
  if rabbit_any_running; then return; fi
  rm -rf "$dir"
  mkdir -p "$dir"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 30 \
    -subj "/CN=walbox test CA" 2>/dev/null
  openssl req -x509 "${ec[@]}" -keyout "$dir/other-ca.key" -out "$dir/other-ca.pem" -days 30 \
    -subj "/CN=walbox unrelated CA" 2>/dev/null
  openssl req "${ec[@]}" -keyout "$dir/server.key" -out "$dir/server.csr" -subj "/CN=localhost" 2>/dev/null
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -days 30 \
    -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n') \
    -out "$dir/server.pem" 2>/dev/null
  openssl req "${ec[@]}" -keyout "$dir/client.key" -out "$dir/client.csr" -subj "/CN=walbox" 2>/dev/null
  openssl x509 -req -in "$dir/client.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -days 30 \
    -extfile <(printf 'extendedKeyUsage=clientAuth\n') -out "$dir/client.pem" 2>/dev/null
  rm -f "$dir"/*.csr "$dir"/*ca.key
  chmod 644 "$dir"/*
  [ -s "$dir/client.pem" ] || die "making the TLS certificates failed"
}

any_running() {
  [ -d "$ROOTFS$SRV" ] || return 1
  pg_running primary && return 0
  pg_running standby && return 0
  rabbit_any_running && return 0
  alive "$(cat "$ROOTFS$SRV/epmd.pid" 2>/dev/null || true)"
}

stop_all() {
  [ -d "$ROOTFS$SRV" ] || return 0
  local n
  for n in $NODES; do rabbit_stop "$n" || rabbit_kill "$n"; done
  epmd_stop
  pg_stop standby || pg_kill standby
  pg_stop primary || pg_kill primary
  unmount_all "$ROOTFS"
}

status() {
  local which n role
  for which in primary standby; do
    if pg_running "$which"; then
      role=$(psql_on "$which" -c "select case when pg_is_in_recovery() then 'standby' else 'primary' end" 2>/dev/null || echo "?")
      echo "postgresql $which 127.0.0.1:$(pg_port "$which") up (pid $(pg_pid "$which"), $role)"
    else
      echo "postgresql $which 127.0.0.1:$(pg_port "$which") down"
    fi
  done
  for n in $NODES; do
    if node_running "$n"; then
      echo "rabbitmq $(node_name "$n") 127.0.0.1:$(amqp_port "$n") up (pid $(beam_pid "$n"))"
    else
      echo "rabbitmq $(node_name "$n") 127.0.0.1:$(amqp_port "$n") down"
    fi
  done
}

print_env() {
  echo "WALBOX_HA_PORT_BASE=$BASE"
  echo "WALBOX_HA_PG_PRIMARY_PORT=$PG_PRIMARY_PORT"
  echo "WALBOX_HA_PG_STANDBY_PORT=$PG_STANDBY_PORT"
  echo "WALBOX_HA_AMQP_PORTS=$(amqp_port 1),$(amqp_port 2),$(amqp_port 3)"
  echo "WALBOX_HA_STREAM_PORTS=$(stream_port 1),$(stream_port 2),$(stream_port 3)"
  echo "WALBOX_HA_STREAM_TLS_PORTS=$(stream_tls_port 1),$(stream_tls_port 2),$(stream_tls_port 3)"
  echo "WALBOX_HA_TLS_DIR=$ROOTFS$TLS_DIR"
}

node_arg() {
  case "${1:-}" in 1 | 2 | 3) echo "$1" ;; *) die "name a RabbitMQ node: 1, 2 or 3" ;; esac
}
pg_arg() {
  case "${1:-}" in primary | standby) echo "$1" ;; *) die "name a PostgreSQL server: primary or standby" ;; esac
}

cmd="${1:-}"
shift || true
case "$cmd" in
  userland)
    mkdir -p "$TOP"
    ensure_userland
    ;;
  start)
    prepare
    tls_certs
    pg_start_all
    rabbit_start_all
    ;;
  stop)
    stop_all
    log "stopped"
    ;;
  status) status ;;
  clean)
    stop_all
    rm -rf --one-file-system "$ROOTFS"
    log "removed $ROOTFS (the cached userland in $CACHE stays)"
    ;;
  pg-reset)
    prepare
    pg_reset
    ;;
  pg-stop) pg_stop "$(pg_arg "${1:-}")" ;;
  pg-kill) pg_kill "$(pg_arg "${1:-}")" ;;
  pg-start)
    prepare
    pg_start "$(pg_arg "${1:-}")"
    ;;
  pg-promote) pg_promote ;;
  pg-sync) pg_sync "${1:-}" ;;
  pg-wait-synced) pg_wait_synced "${1:?slot name}" "${2:-120}" ;;
  rabbit-stop) rabbit_stop "$(node_arg "${1:-}")" || exit 1 ;;
  rabbit-kill) rabbit_kill "$(node_arg "${1:-}")" ;;
  rabbit-freeze) rabbit_freeze "$(node_arg "${1:-}")" ;;
  rabbit-start)
    prepare
    rabbit_start "$(node_arg "${1:-}")"
    ;;
  rabbit-rolling) rabbit_rolling ;;
  env) print_env ;;
  _rabbit-server) rabbit_env "$(node_arg "${1:-}")" /usr/lib/rabbitmq/bin/rabbitmq-server ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
    exit 2
    ;;
esac
