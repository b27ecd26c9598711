#!/usr/bin/env bash
# Runs every test: brings the local stack up (installing what is missing), then
# `cargo test --release` against the real Kafka broker and PostgreSQL server.
# Extra arguments go to cargo test, e.g. `scripts/test.sh --test crash`.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/stack.sh up | sed 's/^/export /')"
cargo test --release --locked "$@"
