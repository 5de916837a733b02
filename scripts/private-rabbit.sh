# Sourced by scripts that need a private RabbitMQ node beside the machine's own, so their
# tests can restart or reconfigure it without disturbing anything else.
#
#   private_rabbit_start NODE PORT DIR [EXTRA_CONF_LINE...]   start (if needed) and wait
#   private_rabbit_stop NODE DIR                              stop and remove its files
#
# The node listens on 127.0.0.1:PORT (distribution port PORT+20000), has no plugins and keeps
# its configuration, database and logs under DIR.

private_rabbit_env() { # node, port, dir, command...
  local node=$1 port=$2 dir=$3
  shift 3
  env RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT="$((port + 20000))" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" "$@"
}

private_rabbit_start() { # node, port, dir, extra configuration lines...
  local node=$1 port=$2 dir=$3
  shift 3
  mkdir -p "$dir"
  echo "[]." >"$dir/enabled_plugins"
  printf '%s\n' "listeners.tcp.local = 127.0.0.1:$port" "$@" >"$dir/rabbitmq.conf"
  # rabbitmq-server started as root runs as the rabbitmq user, which must own its files.
  if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq: "$dir"; fi
  if ! rabbitmqctl -q -n "$node" status >/dev/null 2>&1; then
    private_rabbit_env "$node" "$port" "$dir" rabbitmq-server -detached
  fi
  for _ in $(seq 1 90); do
    if rabbitmqctl -q -n "$node" await_startup >/dev/null 2>&1; then break; fi
    sleep 1
  done
  rabbitmqctl -q -n "$node" await_startup
}

private_rabbit_stop() { # node, dir
  rabbitmqctl -q -n "$1" stop >/dev/null 2>&1 || true
  rm -rf "$2"
}
