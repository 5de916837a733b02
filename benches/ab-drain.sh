#!/usr/bin/env bash
# A/B of walbox binaries on one drain: each binary in turn, REPS times, drains the same backlog
# (200,000 events of ~200 B JSON, 20 transactions of 10,000 rows, committed while it is
# stopped, to a classic durable queue nobody consumes) on the local PostgreSQL and RabbitMQ.
# Prints, per run, the time from start to the slot's confirmation of the whole backlog, the
# process's CPU (utime+stime) per event, its peak RSS and the slot's lag 2 s later; then, on a
# second line, walbox's system-time share, the walsender's and the broker's CPU per event, and
# how many of the machine's cores were busy during the drain (issue #21: what limits a drain
# that shares two cores with the servers it reads from and publishes to).
#
#   cargo build --example tail
#   bash benches/ab-drain.sh /path/to/walbox-a /path/to/walbox-b ...
#
# Runs alternate (a, b, a, b, ...) so a busy moment on a shared machine hits every binary
# alike; compare medians. Every run makes and drops its own database, slot, publication,
# queue and exchange (wbab_<n>).
#
# Private servers (scripts/fault-servers.sh) instead of the machine's own: the same
# WALBOX_TEST_PG_PORT, WALBOX_TEST_AMQP_PORT and WALBOX_TEST_RABBIT_NODE as the tests.
# EVENTS=N changes the backlog (default 200000, a multiple of 20). WALBOX_AB_WRAP='CMD ...'
# runs `walbox run` under CMD (e.g. 'valgrind --tool=callgrind --callgrind-out-file=...');
# its CPU figure is then the wrapper's.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
EVENTS=${EVENTS:-200000}
TAIL=${TAIL:-target/debug/examples/tail}
export PGHOST=127.0.0.1 PGUSER=postgres PGPORT=${WALBOX_TEST_PG_PORT:-5432}
AMQP_URL="amqp://guest:guest@127.0.0.1:${WALBOX_TEST_AMQP_PORT:-5672}/%2f"
RABBITMQCTL=(rabbitmqctl ${WALBOX_TEST_RABBIT_NODE:+-n "$WALBOX_TEST_RABBIT_NODE"})
read -r -a WRAP <<<"${WALBOX_AB_WRAP:-}"
[ -x "$TAIL" ] || { echo "build the queue helper first: cargo build --example tail" >&2; exit 2; }
TICK=$(getconf CLK_TCK)

# utime + stime of a process in clock ticks (0 for no process).
ticks_of() {
  if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi
}
# Every core's busy ticks: user, nice, system, irq and softirq (not idle, iowait or steal).
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
# The broker's Erlang VM, whose CPU each run also reports (the drain shares the machine with it).
BROKER=$("${RABBITMQCTL[@]}" -q eval 'os:getpid().' | tr -d '"')

drain() { # binary, run name
  local bin=$1 db=$2
  export WALBOX_POSTGRES_URL=postgres://postgres@127.0.0.1:$PGPORT/$db WALBOX_AMQP_URL=$AMQP_URL WALBOX_SLOT=$db \
    WALBOX_PUBLICATION=$db WALBOX_EXCHANGE=${db}_x WALBOX_METRICS_ADDR=none WALBOX_LOG_FORMAT=json
  psql -qc "DROP DATABASE IF EXISTS $db" 2>/dev/null
  psql -qc "CREATE DATABASE $db"
  psql -q -d "$db" -f sql/outbox.sql
  "$bin" setup >/dev/null
  "$TAIL" --amqp-url "$AMQP_URL" --exchange "${db}_x" --queue "${db}_q" --count 1 --timeout-secs 1 >/dev/null 2>&1 || true
  for _ in $(seq 1 20); do
    psql -q -d "$db" -c "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
      SELECT 'order', 'o' || g, 'created', jsonb_build_object('pad', repeat('x', 150), 'n', g) \
      FROM generate_series(1, $((EVENTS / 20))) g"
  done
  local end; end=$(psql -Atc "SELECT pg_current_wal_lsn()")
  local broker_before busy_before; broker_before=$(ticks_of "$BROKER"); busy_before=$(busy)
  "${WRAP[@]}" "$bin" run >"target/ab-$db.log" 2>&1 &
  local pid=$! start; start=$(date +%s.%N)
  local walsender=
  until [ "$(psql -Atc "SELECT confirmed_flush_lsn >= '$end'::pg_lsn FROM pg_replication_slots WHERE slot_name = '$db'")" = t ]; do
    [ -n "$walsender" ] || walsender=$(psql -Atc "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$db'")
    sleep 0.1
  done
  local stop; stop=$(date +%s.%N)
  local ticks sys rss; read -r ticks sys < <(awk '{print $14 + $15, $15}' "/proc/$pid/stat")
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  # The walsender started with this run, so its whole CPU is this drain's.
  local walsender_ticks; walsender_ticks=$(ticks_of "$walsender")
  local broker_ticks busy_ticks; broker_ticks=$(($(ticks_of "$BROKER") - broker_before)); busy_ticks=$(($(busy) - busy_before))
  sleep 2
  local lag; lag=$("$bin" status --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["lag_bytes"])')
  kill -TERM "$pid"; wait "$pid" || true
  "$bin" teardown >/dev/null
  psql -qc "DROP DATABASE $db"
  "${RABBITMQCTL[@]}" -q delete_queue "${db}_q" >/dev/null
  "${RABBITMQCTL[@]}" -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"${db}_x\">>), false, <<\"ab\">>)." >/dev/null
  awk -v bin="$bin" -v s="$start" -v e="$stop" -v t="$ticks" -v hz="$TICK" -v n="$EVENTS" -v rss="$rss" -v lag="$lag" \
    'BEGIN { printf "%s: %.0f events/s, %.2f us CPU/event, peak RSS %.1f MB, lag after 2 s idle %d bytes\n", bin, n / (e - s), t * 1e6 / hz / n, rss / 1024, lag }'
  awk -v s="$start" -v e="$stop" -v t="$ticks" -v sys="$sys" -v w="$walsender_ticks" -v b="$broker_ticks" -v busy="$busy_ticks" -v hz="$TICK" -v n="$EVENTS" \
    'BEGIN { printf "  of it system %.2f us/event; walsender %.2f us/event, broker %.2f us/event, machine %.2f cores busy\n", sys * 1e6 / hz / n, w * 1e6 / hz / n, b * 1e6 / hz / n, busy / hz / (e - s) }'
}

run=0
for _ in $(seq 1 "$REPS"); do
  for bin in "$@"; do
    run=$((run + 1))
    drain "$bin" "wbab_$run"
  done
done
