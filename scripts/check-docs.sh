#!/usr/bin/env bash
# Build the docs (mdBook, docs/) and check every link in them, in README.md and in the other
# Markdown files readers start from (scripts/check_links.py); a broken link fails.
#
# mdbook comes from crates.io (Debian bookworm has no package): installed once with
# `cargo install --locked` into ~/.cargo/bin at the version below, without the `serve` and
# `watch` features (a web server and a file watcher CI does not need: fewer crates to build),
# and reused after that. Cold, that build took 11.7 minutes on the 2-core development machine
# at the lowest priority under a load average of 10 to 17 (other builds running; with every
# feature, 19 minutes); an idle machine needs a fraction of that. Warm, this script takes
# about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

MDBOOK_VERSION=0.5.4
mdbook=${MDBOOK:-$HOME/.cargo/bin/mdbook}
if ! "$mdbook" --version 2>/dev/null | grep -qx "mdbook v$MDBOOK_VERSION"; then
  echo "check-docs: installing mdbook $MDBOOK_VERSION (cargo install; once per machine)"
  cargo install --locked --quiet mdbook --version "$MDBOOK_VERSION" \
    --no-default-features --features search
  mdbook=$HOME/.cargo/bin/mdbook
fi

rm -rf docs/book
"$mdbook" build docs
python3 scripts/check_links.py docs/book README.md docker/README.md benches/README.md \
  examples/consumers/README.md
