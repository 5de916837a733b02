#!/usr/bin/env bash
# walbox's drain into a classic queue, a quorum queue and a stream, each next to its raw
# ceiling, in one run (benches/README.md "Targets"), on the PostgreSQL 17 / RabbitMQ 4.0 servers
# of scripts/trixie-servers.sh: the bench's `targets` part pointed at the primary and node 1.
#
#   WALBOX_HA_PORT_BASE=48000 WALBOX_HA_ROOT=/var/lib/walbox-ha-bench bash benches/targets.sh
#
# The servers must be running (`bash scripts/trixie-servers.sh start` with the same variables);
# this script neither starts nor stops them. WALBOX_BENCH_REPS (default 5) and
# WALBOX_BENCH_EVENTS (default 100000) and the bench's other WALBOX_BENCH_* options apply.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${WALBOX_HA_PORT_BASE:-46000}"
ROOT="${WALBOX_HA_ROOT:-/var/lib/walbox-ha}"
[ "$BASE" != 46000 ] || { echo "targets.sh: base 46000 belongs to CI; set WALBOX_HA_PORT_BASE" >&2; exit 2; }
eval "$(WALBOX_HA_PORT_BASE="$BASE" WALBOX_HA_ROOT="$ROOT" bash scripts/trixie-servers.sh env)"
export WALBOX_BENCH_ONLY=targets
export WALBOX_BENCH_REPS="${WALBOX_BENCH_REPS:-5}"
export WALBOX_BENCH_EVENTS="${WALBOX_BENCH_EVENTS:-100000}"
export WALBOX_BENCH_POSTGRES="postgres://postgres@127.0.0.1:$WALBOX_HA_PG_PRIMARY_PORT"
export WALBOX_BENCH_AMQP_URL="amqp://guest:guest@127.0.0.1:${WALBOX_HA_AMQP_PORTS%%,*}/%2f"
export WALBOX_BENCH_STREAM_URL="rabbitmq-stream://guest:guest@127.0.0.1:${WALBOX_HA_STREAM_PORTS%%,*}/%2f"
export WALBOX_BENCH_BROKER_ROOT="$ROOT/rootfs"
exec cargo bench --locked --bench relay
