#!/usr/bin/env bash
# Quick start: from a fresh clone to events in a RabbitMQ queue, in one command.
#
#   bash scripts/quickstart.sh          # demo, then stop walbox and remove its slot
#   bash scripts/quickstart.sh --keep   # leave walbox running on database walbox_demo
#
# Makes the machine ready (scripts/ready.sh), builds walbox, creates database walbox_demo with
# the outbox table (sql/outbox.sql), runs `walbox setup` and `walbox run`, inserts a few
# events in one transaction and prints them as a consumer receives them from queue
# walbox-demo.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=no
[ "${1:-}" = --keep ] && keep=yes

bash scripts/ready.sh
cargo build --release --quiet --bin walbox --example tail
walbox=target/release/walbox

PGHOST=${PGHOST:-127.0.0.1}
PGUSER=${PGUSER:-postgres}
export WALBOX_POSTGRES_URL="postgres://$PGUSER@$PGHOST:5432/walbox_demo"
export WALBOX_SLOT=walbox_demo WALBOX_PUBLICATION=walbox_demo WALBOX_EXCHANGE=outbox

if ! psql -h "$PGHOST" -U "$PGUSER" -d postgres -Atc "select 1 from pg_database where datname = 'walbox_demo'" | grep -q 1; then
  psql -h "$PGHOST" -U "$PGUSER" -d postgres -qc "create database walbox_demo"
fi
psql -h "$PGHOST" -U "$PGUSER" -d walbox_demo -q -f sql/outbox.sql

"$walbox" setup
"$walbox" run --log-format text &
walbox_pid=$!
cleanup() {
  if [ "$keep" = no ]; then
    kill -TERM "$walbox_pid" 2>/dev/null && wait "$walbox_pid" || true
    "$walbox" teardown >/dev/null
    echo "quickstart: stopped walbox and removed its slot and publication (use --keep to leave it running)"
  else
    echo "quickstart: walbox keeps running (pid $walbox_pid); stop it with: kill $walbox_pid && $walbox teardown"
  fi
}
trap cleanup EXIT

# The consumer binds its queue before the events are written, so it sees all of them.
target/release/examples/tail --queue walbox-demo --count 3 --timeout-secs 30 &
tail_pid=$!
sleep 1
psql -h "$PGHOST" -U "$PGUSER" -d walbox_demo -q <<'SQL'
BEGIN;
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
VALUES ('order', 'o-1001', 'created', '{"order_id": 1001, "total": 42.5}', '{"trace_id": "demo-1"}'),
       ('order', 'o-1001', 'paid',    '{"order_id": 1001, "method": "card"}', NULL),
       ('order', 'o-1001', 'shipped', '{"order_id": 1001, "carrier": "dhl"}', NULL);
COMMIT;
SQL
wait "$tail_pid"
"$walbox" status
