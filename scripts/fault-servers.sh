#!/usr/bin/env bash
# Private PostgreSQL and RabbitMQ servers for the long fault-injection run, so that the suite's
# server restarts disturb nothing else using the machine's own servers:
#
#   bash scripts/fault-servers.sh start
#   WALBOX_TEST_PG_PORT=5433 WALBOX_TEST_AMQP_PORT=5673 WALBOX_TEST_RABBIT_NODE=walboxfaults@localhost \
#     WALBOX_FAULT_ROUNDS=13 cargo test --test faults -- --nocapture
#   bash scripts/fault-servers.sh stop
#
# PostgreSQL: cluster "walboxfaults" of the installed major version on port 5433, trust auth on
# loopback, wal_level=logical. RabbitMQ: node walboxfaults@localhost on port 5673, no plugins,
# its data under /tmp. `stop` removes both.
set -euo pipefail

PG_PORT="${WALBOX_TEST_PG_PORT:-5433}"
AMQP_PORT="${WALBOX_TEST_AMQP_PORT:-5673}"
NODE="${WALBOX_TEST_RABBIT_NODE:-walboxfaults@localhost}"
# Named after the node, so two sets of private servers can run side by side.
CLUSTER="${NODE%@*}"
RABBIT_DIR="/tmp/walbox-fault-rabbit-$CLUSTER"
VERSION="$(ls /usr/lib/postgresql | sort -n | tail -1)"

rabbit_env() {
  env RABBITMQ_NODENAME="$NODE" RABBITMQ_NODE_PORT="$AMQP_PORT" \
    RABBITMQ_DIST_PORT="$((AMQP_PORT + 20000))" \
    RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia" RABBITMQ_LOG_BASE="$RABBIT_DIR/log" \
    RABBITMQ_PID_FILE="$RABBIT_DIR/pid" "$@"
}

case "${1:-}" in
  start)
    if ! pg_lsclusters --no-header | awk '{print $2}' | grep -qx "$CLUSTER"; then
      pg_createcluster "$VERSION" "$CLUSTER" -p "$PG_PORT" -- --auth=trust >/dev/null
      pg_conftool "$VERSION" "$CLUSTER" set wal_level logical
      pg_conftool "$VERSION" "$CLUSTER" set max_replication_slots 32
      pg_conftool "$VERSION" "$CLUSTER" set max_wal_senders 32
    fi
    if ! pg_lsclusters --no-header | awk -v c="$CLUSTER" '$2 == c && $4 == "online"' | grep -q .; then
      pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$CLUSTER" start
    fi
    mkdir -p "$RABBIT_DIR"
    echo "[]." >"$RABBIT_DIR/enabled_plugins"
    echo "listeners.tcp.local = 127.0.0.1:$AMQP_PORT" >"$RABBIT_DIR/rabbitmq.conf"
    # rabbitmq-server started as root runs as the rabbitmq user, which must own its files.
    if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq: "$RABBIT_DIR"; fi
    if ! rabbitmqctl -q -n "$NODE" status >/dev/null 2>&1; then
      rabbit_env rabbitmq-server -detached
    fi
    for _ in $(seq 1 60); do
      if rabbitmqctl -q -n "$NODE" await_startup >/dev/null 2>&1; then break; fi
      sleep 1
    done
    rabbitmqctl -q -n "$NODE" await_startup
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atc "show wal_level" | grep -qx logical
    echo "fault servers: postgresql $VERSION/$CLUSTER on 127.0.0.1:$PG_PORT, rabbitmq $NODE on 127.0.0.1:$AMQP_PORT"
    ;;
  stop)
    rabbitmqctl -q -n "$NODE" stop >/dev/null 2>&1 || true
    rm -rf "$RABBIT_DIR"
    if pg_lsclusters --no-header | awk '{print $2}' | grep -qx "$CLUSTER"; then
      pg_dropcluster --stop "$VERSION" "$CLUSTER"
    fi
    echo "fault servers removed"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
