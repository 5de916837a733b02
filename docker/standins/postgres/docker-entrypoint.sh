#!/usr/bin/env bash
# Entrypoint of the postgres:15 stand-in. The contract of the official image that
# docker/compose.yml relies on: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, the scripts in
# /docker-entrypoint-initdb.d run once on a new data directory by a server that listens on the
# Unix socket only, then `postgres "$@"` in the foreground as user postgres. Any other command
# runs as given.
set -euo pipefail

# `docker run postgres:15 -c foo=bar` means `postgres -c foo=bar`.
if [ "${1:0:1}" = - ]; then
  set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
  exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres stand-in: POSTGRES_PASSWORD is not set" >&2
    exit 1
  fi
  initdb --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
  # Other containers connect over the network with a password, as with the official image.
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.auto.conf"

  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
  if [ "$db" != postgres ]; then
    psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -qc "CREATE DATABASE \"$db\""
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case $f in
      *.sh) echo "postgres stand-in: running $f"; bash "$f" ;;
      *.sql) echo "postgres stand-in: running $f"; psql -v ON_ERROR_STOP=1 -U "$user" -d "$db" -q -f "$f" ;;
      *) [ -e "$f" ] && echo "postgres stand-in: ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "postgres stand-in: init done"
fi

exec "$@"
