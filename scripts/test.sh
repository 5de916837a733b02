#!/usr/bin/env bash
# The one test command (README "Testing"; docs/src/development/testing.md): make this machine
# ready (PostgreSQL with wal_level=logical, RabbitMQ), then check formatting and lints and run
# the whole suite against the real servers. Every test makes and drops its own database, slot,
# publication, exchange and queues; at the end this script checks that no walbox test slot was
# left behind.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ready.sh

# Tags this run's database, slot and exchange names (tests/common), so the leftover check below
# looks only at what this run created.
WALBOX_TEST_RUN="${WALBOX_TEST_RUN:-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')}"
export WALBOX_TEST_RUN

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

# The docs (mdBook, link-checked: a broken link fails) and the deploy/ files checked by the
# tools that run them (promtool test rules, systemd-analyze verify). README "Testing".
bash scripts/check-docs.sh
bash scripts/check-deploy.sh
cargo test --locked --all-targets -- --test-threads="${WALBOX_TEST_THREADS:-4}"

# The poison test of a message over the broker's max_message_size needs a broker configured
# for it: a private node (scripts/limited-broker.sh), so the machine's broker stays as it is.
bash scripts/limited-broker.sh start
trap 'bash scripts/limited-broker.sh stop >/dev/null 2>&1 || true' EXIT
WALBOX_TEST_AMQP_PORT=5674 WALBOX_TEST_MAX_MESSAGE_SIZE=65536 \
  cargo test --locked --test poison -- --ignored

leftover=$(psql -h "${PGHOST:-127.0.0.1}" -U "${PGUSER:-postgres}" -d postgres -Atc \
  "select slot_name from pg_replication_slots where slot_name like 'wbt\_${WALBOX_TEST_RUN}\_%'")
if [ -n "$leftover" ]; then
  echo "test.sh: tests left replication slots behind: $leftover" >&2
  exit 1
fi

# The container path (#15): build docker/Dockerfile with podman and run the compose quick start
# with docker-compose against local stand-in base images; it installs what it needs and keeps
# its images and build cache between runs (docs/src/development/container-test.md). It never
# touches the machine's own PostgreSQL and RabbitMQ. WALBOX_CONTAINER_TEST=0 skips it.
if [ "${WALBOX_CONTAINER_TEST:-1}" != 0 ]; then
  bash scripts/container-test.sh
fi

# Framework consumers (#11): the official CloudEvents SDKs (PyPI cloudevents with its RabbitMQ
# binding, npm cloudevents) installed project-local and cached by scripts/consumers.sh, then the
# tests that parse every walbox CloudEvents message with them (ignored by a plain cargo test).
bash scripts/consumers.sh
cargo test --locked --test frameworks -- --ignored --test-threads=2

# High availability (docs/src/operations/high-availability.md): a PostgreSQL 17 primary with a
# standby and a three-node RabbitMQ 4.0 cluster on private ports, from a Debian trixie userland
# that scripts/trixie-servers.sh builds once and caches under /var/cache/walbox. The five
# failover scenarios run once each (quick mode); WALBOX_HA_ROUNDS=N repeats each N times (long mode).
(
  trap 'bash scripts/trixie-servers.sh stop >/dev/null 2>&1 || true' EXIT
  bash scripts/trixie-servers.sh start
  cargo test --locked --test ha -- --ignored --test-threads=1 --nocapture
  # The stream target on the same servers: exactly once across kills and a leader move, a
  # super stream across kills, rows with logical decoding messages across kills (3 kills
  # each; WALBOX_STREAM_ROUNDS=N for more), a failover to the synchronized standby, an event
  # too large for a frame, the rewound-LSN stop, a super stream's routing change after a
  # partition's leader hung (a node frozen and killed), and over TLS (exactly once across 2
  # kills; a wrong CA, a host the certificate lacks, no client certificate: exit 1). About 170 s.
  cargo test --locked --test stream -- --ignored --test-threads=1 --nocapture
  # PostgreSQL 17 specifics, counted: the replay window's bookmark synchronized to the
  # standby, the cut-over backfill (slot made with FAILOVER and an exported snapshot) and
  # logical decoding messages, in the usual test world on the trixie primary. About 45 s.
  WALBOX_TEST_PG_PORT=$((${WALBOX_HA_PORT_BASE:-46000} + 432)) \
    WALBOX_TEST_AMQP_PORT=$((${WALBOX_HA_PORT_BASE:-46000} + 672)) \
    cargo test --locked --test pg17 -- --ignored --test-threads=1 --nocapture
)
