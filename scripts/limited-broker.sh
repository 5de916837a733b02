#!/usr/bin/env bash
# A private RabbitMQ node whose max_message_size is small, for the poison test of a message
# too large for the broker (the machine's own broker keeps its 128 MiB default, too large to
# test cheaply, and is shared):
#
#   bash scripts/limited-broker.sh start
#   WALBOX_TEST_AMQP_PORT=5674 WALBOX_TEST_MAX_MESSAGE_SIZE=65536 \
#     cargo test --test poison -- --ignored
#   bash scripts/limited-broker.sh stop
#
# Node walboxlimited@localhost on port 5674, no plugins, its data under /tmp; `stop` removes it.
set -euo pipefail

AMQP_PORT="${WALBOX_TEST_AMQP_PORT:-5674}"
MAX_MESSAGE_SIZE="${WALBOX_TEST_MAX_MESSAGE_SIZE:-65536}"
NODE=walboxlimited@localhost
RABBIT_DIR=/tmp/walbox-limited-rabbit

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
    mkdir -p "$RABBIT_DIR"
    echo "[]." >"$RABBIT_DIR/enabled_plugins"
    printf 'listeners.tcp.local = 127.0.0.1:%s\nmax_message_size = %s\n' \
      "$AMQP_PORT" "$MAX_MESSAGE_SIZE" >"$RABBIT_DIR/rabbitmq.conf"
    # rabbitmq-server started as root runs as the rabbitmq user, which must own its files.
    if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq: "$RABBIT_DIR"; fi
    if ! rabbitmqctl -q -n "$NODE" status >/dev/null 2>&1; then
      rabbit_env rabbitmq-server -detached
    fi
    for _ in $(seq 1 90); do
      if rabbitmqctl -q -n "$NODE" await_startup >/dev/null 2>&1; then break; fi
      sleep 1
    done
    rabbitmqctl -q -n "$NODE" await_startup
    echo "limited broker: $NODE on 127.0.0.1:$AMQP_PORT, max_message_size" \
      "$(rabbitmqctl -q -n "$NODE" eval 'application:get_env(rabbit, max_message_size).')"
    ;;
  stop)
    rabbitmqctl -q -n "$NODE" stop >/dev/null 2>&1 || true
    rm -rf "$RABBIT_DIR"
    echo "limited broker removed"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
