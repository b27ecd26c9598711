#!/usr/bin/env bash
# The soak (not run in CI: it takes long). For each delivery mode: 1,000,000 orders on a
# private PostgreSQL, ~2,000 updates/s the whole time, the daemon killed (kill -9) 50 times
# at random moments, a private broker restarted 10 times and the database 3 times; then
# the updates stop, `run --once` drains, and the newest version of every order must be the
# last event for its key (tests/soak.rs). Prints missing, stale, duplicates and the total
# time per mode; exits non-zero when anything is missing or stale.
#
# Sizes: SOAK_ORDERS, SOAK_KILLS, SOAK_BROKER_RESTARTS, SOAK_PG_RESTARTS,
# SOAK_UPDATES_PER_S; SOAK_DELIVERY picks the modes (default: "at_least_once exactly_once").
set -euo pipefail
cd "$(dirname "$0")/.."
modes=${SOAK_DELIVERY:-at_least_once exactly_once}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
for delivery in $modes; do
  SOAK_DELIVERY=$delivery scripts/test.sh --test soak -- --ignored --exact soak --nocapture 2>&1 | tee -a "$out" \
    || status=1
done
echo
grep -h '^SOAK RESULT' "$out" || echo "no soak result: see the output above"
exit $status
