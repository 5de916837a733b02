#!/usr/bin/env bash
# Container health check for walbox: GET PATH (default /healthz) from walbox's metrics listener
# and exit 0 only on HTTP 200. The listener is found through WALBOX_METRICS_ADDR, the same
# variable walbox reads; a wildcard address (0.0.0.0, [::]) is asked on 127.0.0.1.
#
#   walbox-healthcheck [PATH]
#
# It speaks HTTP/1.0 through bash's /dev/tcp, so the image needs no curl or wget. Exit 1 means
# unhealthy (Docker reserves 2), with the reason on stderr (docker inspect shows it).

path=${1:-/healthz}
addr=${WALBOX_METRICS_ADDR:-127.0.0.1:9820}
port=${addr##*:}
host=${addr%:*}
host=${host#[}
host=${host%]}
case $host in
  "" | 0.0.0.0 | ::) host=127.0.0.1 ;;
esac

unhealthy() {
  echo "walbox-healthcheck: $*" >&2
  exit 1
}

{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null ||
  unhealthy "nothing listens on $host:$port (WALBOX_METRICS_ADDR=$addr)"
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$host" >&3 ||
  unhealthy "cannot send the request to $host:$port"
IFS=' ' read -r -t 4 _ status _ <&3 || unhealthy "no answer from http://$host:$port$path"
status=${status%$'\r'}
[ "$status" = 200 ] || unhealthy "http://$host:$port$path answered ${status:-nothing}"
