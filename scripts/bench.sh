#!/usr/bin/env bash
# The benchmarks: 200,000 orders of 3 items each in a fresh database, then
#   cargo bench --bench latency: commit-to-Kafka latency (p50, p99, max) of order-cdc run at
#     its defaults under 1,000 updates/s, with change notifications and without (first, on
#     a machine not yet busy with the throughput benches' data);
#   cargo bench --bench end_to_end: order-cdc end to end next to the document query alone
#     and the raw rdkafka producer, in the same run;
#   cargo bench --bench serve: the export endpoint next to its raw page queries, and the
#     export_api and orders_api sources next to a plain client of the same listing;
#   BENCH_ORDERS=200000 scripts/bench.sh
#   BENCH_SSLMODE=require scripts/bench.sh   (loopback without TLS by default; see README)
set -euo pipefail
cd "$(dirname "$0")/.."
ORDERS=${BENCH_ORDERS:-200000}
DB=order_cdc_bench
ADMIN="postgres://postgres:postgres@127.0.0.1:5432/postgres"
URL="postgres://postgres:postgres@127.0.0.1:5432/$DB?sslmode=${BENCH_SSLMODE:-disable}"

scripts/stack.sh up >/dev/null
cargo build --release --locked
psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"

CONFIG=$(mktemp --suffix .toml)
trap 'rm -f "$CONFIG"' EXIT
cat >"$CONFIG" <<TOML
[database]
url = "$URL"

[metrics]
listen = "127.0.0.1:0"

[server]
tenant = "bench"
database_url = "$URL"
tokens = ["bench-token-0123456789"]
cursor_keys = { k1 = "bench-cursor-key-0123456789-0123456789" }
cursor_key = "k1"

[pipelines.bench]
topic = "bench"
batch_size = ${BENCH_BATCH_SIZE:-1000}

[pipelines.bench.source]
kind = "postgres"
url = "$URL"
TOML

target/release/order-cdc --config "$CONFIG" migrate
echo "loading $ORDERS orders..."
target/release/order-cdc --config "$CONFIG" demo-load --orders "$ORDERS" --items-per-order 3
psql "$URL" -qc "VACUUM ANALYZE"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# Latency first, and only once the page cache has written the load back: fsync is off on
# the test cluster, so the load leaves 1.5 GB dirty, and a latency pass run while the
# kernel wrote that back had p99 632 ms (the same pass after it: 127 ms). The throughput
# benches leave gigabytes of topics behind in turn, so they come after.
sync
ORDER_CDC_BENCH_CONFIG="$CONFIG" cargo bench --locked --bench latency
ORDER_CDC_BENCH_CONFIG="$CONFIG" cargo bench --locked --bench end_to_end --bench serve
