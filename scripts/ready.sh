#!/usr/bin/env bash
# Make this machine ready for walbox's quick start and test suite. Idempotent.
#
#   - installs PostgreSQL and RabbitMQ from the OS packages when they are missing (Debian/Ubuntu);
#   - starts them when they are not running (with or without systemd);
#   - makes sure wal_level=logical and enough slots and WAL senders for the tests, restarting
#     PostgreSQL only when it had to change one of those;
#   - makes sure user $PGUSER can connect (and replicate logically) over loopback TCP;
#   - waits until both accept connections.
#
# Safe to run on a machine where everything already works: then it changes nothing. The
# loopback trust rule it may add is for development and CI machines only.
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
export PGHOST PGPORT PGUSER
WAIT_SECONDS=${WALBOX_READY_TIMEOUT:-60}

say() { printf 'ready: %s\n' "$*"; }
die() { printf 'ready: ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

apt_updated=no
apt_install() {
  command -v apt-get >/dev/null || die "$* is missing and this is not a Debian/Ubuntu machine; install it by hand"
  if [ "$apt_updated" = no ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=yes
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

systemd_running() { [ -d /run/systemd/system ]; }

# --- PostgreSQL -------------------------------------------------------------------------------
if ! command -v pg_lsclusters >/dev/null; then
  say "installing postgresql"
  apt_install postgresql postgresql-client
fi
if ! command -v psql >/dev/null; then
  apt_install postgresql-client
fi

read -r PG_VERSION PG_CLUSTER PG_STATUS < <(pg_lsclusters --no-header | awk -v port="$PGPORT" '$3 == port {print $1, $2, $4; exit}')
if [ -z "${PG_VERSION:-}" ]; then
  read -r PG_VERSION PG_CLUSTER PG_STATUS < <(pg_lsclusters --no-header | awk '{print $1, $2, $4; exit}')
fi
[ -n "${PG_VERSION:-}" ] || die "no PostgreSQL cluster found (pg_lsclusters lists none)"
PG_CONF_DIR=/etc/postgresql/$PG_VERSION/$PG_CLUSTER

pg_ctl_cluster() {
  if systemd_running; then
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" "$1"
  else
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" "$1"
  fi
}

if [ "$PG_STATUS" != online ]; then
  say "starting postgresql $PG_VERSION/$PG_CLUSTER"
  pg_ctl_cluster start
fi

wait_for() { # description, command...
  local what=$1; shift
  local deadline=$((SECONDS + WAIT_SECONDS))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what did not come up within ${WAIT_SECONDS}s"
    sleep 1
  done
}
wait_for "postgresql" pg_isready -q -h "$PGHOST" -p "$PGPORT"

# SQL as the database superuser over the local socket (works before TCP auth is sorted out).
superuser_sql() {
  as_root runuser -u postgres -- psql -X -q -At -p "$PGPORT" -d postgres -c "$1"
}

# Loopback connections for the tests and the quick start: add trust rules only if a plain
# TCP connection as $PGUSER fails (a fresh Debian install asks for a password there).
tcp_works() { psql -X -At -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -c 'select 1' >/dev/null 2>&1; }
if tcp_works; then
  say "loopback TCP connection as $PGUSER works"
else
  hba=$(superuser_sql 'show hba_file')
  say "allowing loopback TCP connections without password in $hba (development/CI machine setting)"
  tmp=$(mktemp)
  {
    echo "# added by walbox scripts/ready.sh: trust loopback connections (development/CI machines only)"
    echo "host all all 127.0.0.1/32 trust"
    echo "host all all ::1/128 trust"
    cat "$hba"
  } >"$tmp"
  as_root cp "$tmp" "$hba"
  rm -f "$tmp"
  superuser_sql 'select pg_reload_conf()' >/dev/null
  sleep 1
  tcp_works || die "still cannot connect to $PGHOST:$PGPORT as $PGUSER; check $hba"
fi

restart_needed=no
ensure_setting() { # name, wanted, comparison (eq|ge)
  local name=$1 wanted=$2 how=$3 current
  current=$(superuser_sql "show $name")
  if { [ "$how" = eq ] && [ "$current" = "$wanted" ]; } || { [ "$how" = ge ] && [ "$current" -ge "$wanted" ]; }; then
    say "$name=$current"
  else
    superuser_sql "alter system set $name = '$wanted'" >/dev/null
    say "$name=$wanted (was $current; needs a restart)"
    restart_needed=yes
  fi
}
ensure_setting wal_level logical eq
ensure_setting max_replication_slots 32 ge
ensure_setting max_wal_senders 32 ge

if [ "$restart_needed" = yes ]; then
  say "restarting postgresql $PG_VERSION/$PG_CLUSTER"
  pg_ctl_cluster restart
  wait_for "postgresql" pg_isready -q -h "$PGHOST" -p "$PGPORT"
  [ "$(superuser_sql 'show wal_level')" = logical ] || die "wal_level is still not logical after the restart"
fi

# A logical replication connection, as walbox opens it.
repl_works() { psql -X -At "host=$PGHOST port=$PGPORT user=$PGUSER dbname=postgres replication=database" -c IDENTIFY_SYSTEM >/dev/null 2>&1; }
wait_for "a logical replication connection" repl_works
say "logical replication connections work"

# --- RabbitMQ ---------------------------------------------------------------------------------
if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
  say "installing rabbitmq-server"
  apt_install rabbitmq-server
fi
amqp_port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! as_root rabbitmqctl -q status >/dev/null 2>&1; then
  say "starting rabbitmq"
  if systemd_running; then
    as_root systemctl start rabbitmq-server
  else
    as_root rabbitmq-server -detached
  fi
fi
wait_for "rabbitmq" as_root rabbitmqctl -q --timeout 5 await_startup
wait_for "the AMQP port 5672" amqp_port_open
say "rabbitmq accepts AMQP connections on 127.0.0.1:5672"
