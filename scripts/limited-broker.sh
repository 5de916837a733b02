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

# shellcheck source=scripts/private-rabbit.sh
. "$(dirname "$0")/private-rabbit.sh"

case "${1:-}" in
  start)
    private_rabbit_start "$NODE" "$AMQP_PORT" "$RABBIT_DIR" "max_message_size = $MAX_MESSAGE_SIZE"
    echo "limited broker: $NODE on 127.0.0.1:$AMQP_PORT, max_message_size" \
      "$(rabbitmqctl -q -n "$NODE" eval 'application:get_env(rabbit, max_message_size).')"
    ;;
  stop)
    private_rabbit_stop "$NODE" "$RABBIT_DIR"
    echo "limited broker removed"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
