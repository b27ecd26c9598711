#!/usr/bin/env bash
# The main job end to end on the local stack: stack up, build, migrate, load demo orders
# into the reference schema, `order-cdc run --once`, then show what reached the topic.
#   DEMO_ORDERS=50000 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ORDERS=${DEMO_ORDERS:-10000}
CONFIG=config/local.toml
TOPIC=sales-orders
BROKERS=127.0.0.1:9092
KAFKA_CP="target/stack/kafka/libs/*"

scripts/stack.sh up >/dev/null
cargo build --release --locked
BIN=target/release/order-cdc

# Events on the topic (0 while it does not exist yet: GetOffsetShell then fails).
topic_events() {
  { java -Xmx128m -cp "$KAFKA_CP" org.apache.kafka.tools.GetOffsetShell --bootstrap-server $BROKERS --topic $TOPIC 2>/dev/null || true; } \
    | awk -F: '{sum += $3} END {print sum + 0}'
}

$BIN --config $CONFIG migrate
$BIN --config $CONFIG demo-load --orders "$ORDERS"
before=$(topic_events)
start=$(date +%s%N)
$BIN --config $CONFIG run --once
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))

after=$(topic_events)
orders=$(PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d order_cdc -Atc "select count(*) from sales_orders")
echo
echo "run --once took ${elapsed_ms} ms"
echo "orders loaded by this demo: $ORDERS (in sales_orders now: $orders)"
echo "events this run put on topic $TOPIC: $((after - before)) (on the topic in all: $after)"
echo
echo "one event (key, headers, value):"
java -Xmx128m -cp "$KAFKA_CP" org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server $BROKERS \
  --topic $TOPIC --from-beginning --max-messages 1 --timeout-ms 20000 \
  --property print.key=true --property print.headers=true --property key.separator=' | ' 2>/dev/null
echo
$BIN --config $CONFIG checkpoint show --pipeline orders
