#!/usr/bin/env bash
# Installs the official CloudEvents SDKs and OpenTelemetry that walbox's consumer tests parse
# messages with (tests/frameworks/cloudevents.rs, tests/frameworks/trace.rs), project-local and
# cached:
#   - tests/consumers/.venv: PyPI cloudevents 2.x (RabbitMQ protocol binding), pika, and
#     OpenTelemetry's API, SDK and pika instrumentation, from tests/consumers/requirements.txt;
#   - tests/consumers/node_modules: npm cloudevents, amqplib and OpenTelemetry's API and core
#     (the W3C propagator), exactly as tests/consumers/package-lock.json pins them (npm ci).
# Each part is redone only when its pin file changed (a stamp holds the file's hash), so a second
# run costs nothing. Needs python3 with venv, node and npm (installed here from Debian's
# packages when missing).
set -euo pipefail
cd "$(dirname "$0")/../tests/consumers"

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "consumers.sh: please install ${need_apt[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

stamp_of() { sha256sum "$1" | cut -d' ' -f1; }

python_stamp=$(stamp_of requirements.txt)
if [ "$(cat .venv/.walbox-stamp 2>/dev/null)" != "$python_stamp" ]; then
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$python_stamp" > .venv/.walbox-stamp
fi
.venv/bin/python -c 'import cloudevents.core.bindings.rabbitmq, pika, opentelemetry.instrumentation.pika' \
  || { echo "consumers.sh: the Python CloudEvents SDK has no RabbitMQ binding" >&2; exit 1; }

node_stamp=$(stamp_of package-lock.json)
if [ "$(cat node_modules/.walbox-stamp 2>/dev/null)" != "$node_stamp" ]; then
  npm ci --silent --no-audit --no-fund
  echo "$node_stamp" > node_modules/.walbox-stamp
fi
node -e 'require("cloudevents"); require("amqplib"); require("@opentelemetry/core")'

echo "consumers.sh: CloudEvents SDKs ready in tests/consumers (.venv, node_modules)"
