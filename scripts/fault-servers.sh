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

# shellcheck source=scripts/private-rabbit.sh
. "$(dirname "$0")/private-rabbit.sh"

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
    private_rabbit_start "$NODE" "$AMQP_PORT" "$RABBIT_DIR"
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atc "show wal_level" | grep -qx logical
    echo "fault servers: postgresql $VERSION/$CLUSTER on 127.0.0.1:$PG_PORT, rabbitmq $NODE on 127.0.0.1:$AMQP_PORT"
    ;;
  stop)
    private_rabbit_stop "$NODE" "$RABBIT_DIR"
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
