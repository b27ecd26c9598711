#!/usr/bin/env bash
# Runs every test: brings the local stack up (installing what is missing), then
# `cargo test --release` against the real Kafka broker and PostgreSQL server, then the
# container checks (scripts/container.sh: the image built with podman and run on the stack).
# Extra arguments go to cargo test alone, e.g. `scripts/test.sh --test crash`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/stack.sh up >/dev/null
# Export the stack's NAME=value lines one by one: nothing else is ever evaluated.
while IFS= read -r line; do
  case $line in ORDER_CDC_*=*) export "$line" ;; esac
done < <(scripts/stack.sh env)
cargo test --release --locked "$@"
[ $# -gt 0 ] || scripts/container.sh
