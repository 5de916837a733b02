#!/usr/bin/env bash
# Check the deploy/ files with the tools that run them:
#   - the Prometheus alert rules: `promtool check rules` and their unit tests
#     (`promtool test rules deploy/prometheus/walbox-alerts.test.yml`);
#   - the systemd unit: `systemd-analyze verify`, with walbox's own man page on MANPATH (the
#     unit's Documentation=man:walbox(1) is checked too) and ExecStart pointed at the walbox
#     just built (verify insists that the binary exists; nothing else in the unit is changed).
# The Grafana dashboard, the Kubernetes manifests and the sample configurations are checked by
# `cargo test` (tests/deploy.rs), against a running walbox where that matters.
#
# promtool comes from Debian's `prometheus` package. Only the package is downloaded and its
# promtool unpacked into /var/cache/walbox (installing it would also set up and start a
# Prometheus server); later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cache=${WALBOX_CACHE:-/var/cache/walbox}
promtool=$cache/promtool/usr/bin/promtool
if ! "$promtool" --version >/dev/null 2>&1; then
  echo "check-deploy: fetching promtool from Debian's prometheus package"
  mkdir -p "$cache/promtool" "$tmp/deb"
  work=$tmp/deb
  # apt-get download runs as _apt where it can; a world-writable folder lets it.
  chmod 0777 "$work"
  if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$work" && apt-get download prometheus >/dev/null)
  fi
  dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
  install -D -m 0755 "$work/x/usr/bin/promtool" "$promtool"
fi
"$promtool" --version | head -1
(cd deploy/prometheus && "$promtool" check rules walbox-alerts.yml &&
  "$promtool" test rules walbox-alerts.test.yml)

cargo build --locked --quiet --bin walbox
walbox=$PWD/target/debug/walbox
work=$tmp
"$walbox" man --out "$work/man/man1"
sed "s|^ExecStart=/usr/local/bin/walbox |ExecStart=$walbox |" deploy/systemd/walbox.service \
  >"$work/walbox.service"
grep -q "^ExecStart=$walbox " "$work/walbox.service"
if ! command -v systemd-analyze >/dev/null; then
  echo "check-deploy: installing systemd (for systemd-analyze)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
# The unit's Documentation=man:walbox(1) is checked with `man`, when there is one.
man_check=yes
command -v man >/dev/null || man_check=no
MANPATH="$work/man" systemd-analyze verify --man="$man_check" "$work/walbox.service"
echo "check-deploy: deploy/systemd/walbox.service verified"
