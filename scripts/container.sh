#!/usr/bin/env bash
# The container as users run it. No Docker engine runs on these machines and no image
# registry is reachable, so docker/Dockerfile and docker/compose.yml would otherwise never
# be built or started. This script:
#   1. installs podman (Debian's packages) with a containers.conf of its own;
#   2. makes the Dockerfile's base images locally: debian:bookworm-slim from debootstrap,
#      rust:1-bookworm from it plus this machine's Rust toolchain (each skipped when
#      podman already has it: its storage outlives a CI run on the same machine);
#   3. builds docker/Dockerfile unchanged (`--pull=never`: never the network for images);
#   4. runs the image against the local stack (`--network host`) and checks migrate,
#      run --once (events counted on the topic), serve (the export), the HEALTHCHECK, the
#      non-root user and its named group, and SIGTERM (drain, exit 0, nothing lost);
#   5. prints the image size and fails over CONTAINER_MAX_MB (120);
#   6. checks docker/compose.yml with the real Compose CLI.
# Each check prints PASS or FAIL; any FAIL exits non-zero. Containers, the volume, the
# database and the topic it made are removed on exit.
#   scripts/container.sh            (scripts/test.sh runs it after cargo test)
#   CONTAINER_ORDERS=20000 scripts/container.sh     (demo orders; default 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STACK_DIR=${STACK_DIR:-$ROOT/target/stack}
WORK=$STACK_DIR/container
IMAGE=order-cdc:test
# The names the Dockerfile's FROM lines resolve to: podman expands a short name to
# docker.io/library/…, and finds it in local storage under that name without pulling.
DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
RUST_IMAGE=docker.io/library/rust:1-bookworm
ORDERS=${CONTAINER_ORDERS:-5000}
MAX_MB=${CONTAINER_MAX_MB:-120}
RUN_ID=$$-$(date +%s)
DB=order_cdc_container_${RUN_ID//-/_}
TOPIC=order-cdc-container-$RUN_ID
DRAIN_TOPIC=order-cdc-container-drain-$RUN_ID
VOLUME=order-cdc-container-$RUN_ID
DAEMON=order-cdc-daemon-$RUN_ID
SERVER=order-cdc-serve-$RUN_ID
TOKEN=container-check-token-$RUN_ID

START=$(date +%s%N)
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
log() { printf 'container: [%6.1fs] %s\n' "$(( $(ms_since "$START") ))e-3" "$*" >&2; }
PASSED=0 FAILED=0
pass() { printf 'PASS %s\n' "$*"; PASSED=$((PASSED + 1)); }
fail() { printf 'FAIL %s\n' "$*"; FAILED=$((FAILED + 1)); exit 1; }
# A step: its name, then the command; logs how long it took.
step() {
  local name=$1 t; shift; t=$(date +%s%N)
  log "$name ..."
  "$@"
  log "$name: $(ms_since "$t") ms"
}
. "$ROOT/scripts/lib.sh"
# lib.sh's wait_for, a FAIL when the deadline passes.
wait_until() { wait_for "$@" || fail "$1 within ${2}s"; }

# ---------------------------------------------------------------- 1. podman
install_podman() {
  local missing=()
  for tool in podman runc debootstrap jq curl; do command -v $tool >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] || apt_install --no-install-recommends "${missing[@]}"
  # Podman 4.3 as root here: runc (not crun), and ulimits no higher than this machine's
  # hard limit (its default nofile of 1048576 makes the runtime's setrlimit fail).
  cat >"$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
  export CONTAINERS_CONF=$WORK/containers.conf
  log "$(podman --version), runtime $(podman info --format '{{.Host.OCIRuntime.Name}}')"
}

# ---------------------------------------------------------------- 2. base images
# The Debian mirror this machine's apt uses (deb822 or one-line sources).
debian_mirror() {
  local files=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && files+=("$f")
  done
  { grep -h -E '^URIs:.*/debian/?$' "${files[@]}" | awk '{print $2}'
    grep -h -E '^deb +(\[[^]]*\] +)?[a-z]+://[^ ]*/debian/? ' "${files[@]}" | sed -E 's/^deb +(\[[^]]*\] +)?//' | awk '{print $1}'
  } 2>/dev/null | head -1 || true
}

debian_image() {
  if podman image exists $DEBIAN_IMAGE; then log "$DEBIAN_IMAGE: present"; return; fi
  local mirror rootfs=$WORK/rootfs
  mirror=$(debian_mirror); [ -n "$mirror" ] || fail "no Debian mirror in /etc/apt/sources.list*"
  rm -rf "$rootfs"
  log "debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
  # Slim like the official image: apt and dpkg keep no caches, docs or translations in
  # this image or in any image built from it.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
  cat >"$rootfs/etc/apt/apt.conf.d/slim" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT::Install-Recommends "false";
CFG
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' - $DEBIAN_IMAGE >/dev/null
  rm -rf "$rootfs"
}

# The official rust image's layout (CARGO_HOME=/usr/local/cargo, RUSTUP_HOME=/usr/local/rustup,
# rustup's proxies on PATH) with this machine's active toolchain, without its docs. It also
# trusts the CA certificates this machine added (/usr/local/share/ca-certificates): where the
# registries are reached through a TLS-inspecting proxy, cargo in the build needs them.
# Made again when the toolchain or those certificates change (the image's label says which).
rust_image() {
  local sysroot toolchain key ctx=$WORK/rust-image certs=(/usr/local/share/ca-certificates/*.crt)
  sysroot=$(rustc --print sysroot); toolchain=$(basename "$sysroot")
  [ -e "${certs[0]}" ] || certs=()
  key="$(rustc --version) / CA $(cat /dev/null "${certs[@]}" | sha256sum | cut -c1-16)"
  if [ "$(podman image inspect --format '{{index .Labels "order-cdc.made-from"}}' $RUST_IMAGE 2>/dev/null)" = "$key" ]; then
    log "$RUST_IMAGE: present ($key)"; return
  fi
  command -v rustup >/dev/null || fail "rustup is needed to copy the toolchain in (rustc at $sysroot)"
  rm -rf "$ctx"; mkdir -p "$ctx/rustup/toolchains/$toolchain" "$ctx/cargo/bin" "$ctx/ca"
  [ ${#certs[@]} -eq 0 ] || cp "${certs[@]}" "$ctx/ca/"
  for d in bin lib libexec etc; do
    [ -e "$sysroot/$d" ] && cp -a "$sysroot/$d" "$ctx/rustup/toolchains/$toolchain/"
  done
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' "$toolchain" >"$ctx/rustup/settings.toml"
  cp "$(command -v rustup)" "$ctx/cargo/bin/rustup"
  for proxy in cargo rustc rustdoc; do ln -s rustup "$ctx/cargo/bin/$proxy"; done
  cat >"$ctx/Containerfile" <<CF
FROM $DEBIAN_IMAGE
COPY ca /usr/local/share/ca-certificates
RUN apt-get update \\
 && apt-get install -y --no-install-recommends build-essential pkg-config ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
LABEL order-cdc.made-from="$key"
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN cargo --version && rustc --version
CF
  log "rust image with toolchain $toolchain"
  BUILDAH_FORMAT=docker podman build --network host --pull=never -t $RUST_IMAGE -f "$ctx/Containerfile" "$ctx" >"$WORK/rust-image.log" 2>&1 \
    || { tail -n 30 "$WORK/rust-image.log" >&2; fail "building $RUST_IMAGE"; }
  rm -rf "$ctx"
}

# ---------------------------------------------------------------- 3. the image
build_image() {
  BUILDAH_FORMAT=docker podman build --network host --pull=never -f docker/Dockerfile -t $IMAGE . >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; fail "podman build -f docker/Dockerfile"; }
  # The previous build's layers, now untagged, would pile up run after run (the layers of
  # this build stay: they are its parents, the next build's cache).
  podman image prune -f >/dev/null
  pass "the Dockerfile builds with podman (log: $WORK/build.log)"
}

# ---------------------------------------------------------------- 4. the checks
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sql() { psql "$DB_URL" -Atqc "$1"; }
kafka() { java -Xmx128m -cp "$STACK_DIR/kafka/libs/*" "$@"; }

# Events on a topic: the sum of its partitions' end offsets (0 while it does not exist).
topic_events() {
  { kafka org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$ORDER_CDC_TEST_BROKERS" --topic "$1" 2>/dev/null || true; } \
    | awk -F: '{sum += $3} END {print sum + 0}'
}
# The key of every event on a topic, one a line: exactly as many as its offsets say.
topic_keys() {
  local n; n=$(topic_events "$1")
  [ "$n" -gt 0 ] || return 0
  kafka org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$ORDER_CDC_TEST_BROKERS" --topic "$1" \
    --from-beginning --max-messages "$n" --timeout-ms 30000 --property print.key=true --property print.value=false 2>/dev/null || true
}
source_orders() { sql "select count(*) from sales_orders"; }
# A topic holds every order of the source: as many distinct keys as orders (events may
# repeat after a restart: delivery is at least once). Sets TOPIC_EVENTS and TOPIC_ORDERS.
topic_has_all() {
  local keys; keys=$(topic_keys "$1")
  TOPIC_EVENTS=$(grep -c . <<<"$keys" || true)
  TOPIC_ORDERS=$(sort -u <<<"$keys" | grep -c . || true)
  [ "$TOPIC_ORDERS" -eq "$(source_orders)" ]
}

# `podman run` of the image with the stack's settings; the config file is mounted as in
# compose, the checkpoints are on a volume. The metrics port is the container's own
# (ORDER_CDC__METRICS__LISTEN, which the HEALTHCHECK follows): on the host network the
# image's default 9464 may be taken. One-shot commands need no HEALTHCHECK (and without
# systemd podman would only log that it cannot time one).
CONTAINER_ARGS=()
run_image() {
  podman run --rm --no-healthcheck "${CONTAINER_ARGS[@]}" -e ORDER_CDC__METRICS__LISTEN=127.0.0.1:0 \
    $IMAGE --config /etc/order-cdc/order-cdc.toml "$@"
}
# A detached container NAME on metrics port PORT. Without systemd, podman logs that it
# cannot add a timer for the HEALTHCHECK; `podman healthcheck run` works all the same.
start_container() {
  local name=$1 port=$2; shift 2
  podman run -d --name "$name" "${CONTAINER_ARGS[@]}" -e ORDER_CDC__METRICS__LISTEN=127.0.0.1:$port \
    $IMAGE --config /etc/order-cdc/order-cdc.toml "$@" 2>"$WORK/podman-run.log" >/dev/null \
    || { cat "$WORK/podman-run.log" >&2; fail "podman run $name"; }
}
# SIGTERM to a container, then its exit code must be 0.
stop_cleanly() {
  podman kill --signal TERM "$1" >/dev/null
  local code; code=$(podman wait "$1")
  podman logs "$1" >"$WORK/$1.log" 2>&1
  [ "$code" = 0 ] || { tail -n 20 "$WORK/$1.log" >&2; fail "SIGTERM: $1 exited $code (log: $WORK/$1.log)"; }
  podman rm "$1" >/dev/null 2>&1
}

# A pipeline NAME from the test database's sales_orders onto TOPIC in batches of BATCH.
pipeline_toml() {
  printf '[pipelines.%s]\ntopic = "%s"\nbatch_size = %s\npoll_interval = "1s"\n\n' "$1" "$2" "$3"
  printf '[pipelines.%s.source]\nkind = "postgres"\nurl = "%s"\ntable = "sales_orders"\n' "$1" "$DB_URL"
}

setup_checks() {
  DB_URL=${ORDER_CDC_TEST_DATABASE_URL%/*}/$DB
  psql "$ORDER_CDC_TEST_DATABASE_URL" -qc "CREATE DATABASE $DB" >/dev/null
  CLEAN_DB=1
  cat >"$WORK/order-cdc.toml" <<TOML
[database]
url = "$DB_URL"

[kafka]
brokers = "$ORDER_CDC_TEST_BROKERS"

[run]
shutdown_timeout = "30s"

$(pipeline_toml orders "$TOPIC" 500)

# The daemon's: the same orders from the start onto a topic of its own, in small batches,
# so that a SIGTERM soon after its first commit finds batches in flight.
$(pipeline_toml drain "$DRAIN_TOPIC" 50)

[server]
listen = "127.0.0.1:$(free_port)"
tenant = "container"
database_url = "$DB_URL"
tokens = ["$TOKEN"]
cursor_keys = { k1 = "container-check-cursor-key-0123456789abcdef" }
cursor_key = "k1"
TOML
  SERVER_LISTEN=$(sed -n 's/^listen = "\(.*\)"/\1/p' "$WORK/order-cdc.toml")
  podman volume create "$VOLUME" >/dev/null
  CONTAINER_ARGS=(--network host -v "$WORK/order-cdc.toml:/etc/order-cdc/order-cdc.toml:ro,Z" -v "$VOLUME:/var/lib/order-cdc")
}

check_migrate() {
  run_image migrate >&2 || fail "migrate in the container"
  [ "$(sql "select count(*) from information_schema.tables where table_name = 'sales_orders'")" = 1 ] || fail "migrate: no sales_orders table"
  pass "migrate creates the schema in a fresh database ($DB)"
}

check_run_once() {
  run_image demo-load --orders "$ORDERS" >&2 || fail "demo-load in the container"
  run_image run --once --pipeline orders >&2 || fail "run --once in the container"
  topic_has_all "$TOPIC" || fail "run --once: $TOPIC_ORDERS orders on $TOPIC, $(source_orders) in the source"
  pass "run --once puts the $ORDERS demo orders on $TOPIC ($TOPIC_EVENTS events, $TOPIC_ORDERS orders; source $(source_orders))"
}

check_serve() {
  start_container "$SERVER" "$(free_port)" serve
  wait_until "serve answers on $SERVER_LISTEN" 60 curl -sf "http://$SERVER_LISTEN/openapi.json"
  # Walk the export from the start, page by page, counting the orders.
  local url="http://$SERVER_LISTEN/sales-orders/export?since=1970-01-01T00:00:00Z" status total=0 rows cursor pages=0
  while :; do
    status=$(curl -s -o "$WORK/page.json" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$url")
    [ "$status" = 200 ] || fail "serve: GET /sales-orders/export answered $status: $(head -c 300 "$WORK/page.json")"
    rows=$(jq '.data | length' "$WORK/page.json"); total=$((total + rows)); pages=$((pages + 1))
    cursor=$(jq -r '.next_cursor // empty' "$WORK/page.json")
    [ -n "$cursor" ] || break
    url="http://$SERVER_LISTEN/sales-orders/export?cursor=$cursor"
  done
  local active; active=$(sql "select count(*) from sales_orders where status = 'Active'")
  [ "$total" -eq "$active" ] || fail "serve: the export has $total orders, the database $active active ones"
  stop_cleanly "$SERVER"
  pass "serve answers the export: HTTP 200, $total orders in $pages pages (active in the database: $active)"
}

metric() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
batches_committed() { [ "$(metric "$1" 'order_cdc_batches_total{pipeline="drain"}')" -gt 0 ] 2>/dev/null; }

# The daemon (`run`) works through the orders from the start in batches of 50: SIGTERM
# right after its first commit, with batches in flight, must drain them and exit 0. Started
# again from its checkpoint it passes the HEALTHCHECK, runs as a non-root user with a named
# group, and completes the topic: nothing was lost. Then a second SIGTERM, idle, exits 0.
check_daemon() {
  local port; port=$(free_port)
  start_container "$DAEMON" "$port" run --pipeline drain
  wait_until "the daemon commits its first batch" 60 batches_committed "$port"
  stop_cleanly "$DAEMON"
  local at_stop; at_stop=$(topic_events "$DRAIN_TOPIC")
  grep -q 'waiting for in-flight deliveries' "$WORK/$DAEMON.log" || fail "SIGTERM: the daemon did not say it drains (log: $WORK/$DAEMON.log)"
  pass "SIGTERM during the backlog drains and exits 0 ($at_stop of $(source_orders) orders on $DRAIN_TOPIC by then)"

  port=$(free_port)
  start_container "$DAEMON" "$port" run --pipeline drain
  wait_until "the HEALTHCHECK passes (podman healthcheck run $DAEMON)" 60 podman healthcheck run "$DAEMON"
  pass "the image's HEALTHCHECK passes with the daemon running"

  local id; id=$(podman exec "$DAEMON" id)
  [[ $id =~ ^uid=([0-9]+)\(([^\)]+)\)\ gid=([0-9]+)\(([^\)]+)\) ]] && [ "${BASH_REMATCH[1]}" != 0 ] \
    || fail "the process runs as root or with a nameless group: $id"
  pass "the process runs as a non-root user with a named group: $id"

  wait_until "every order on $DRAIN_TOPIC after the restart" 120 topic_has_all "$DRAIN_TOPIC"
  stop_cleanly "$DAEMON"
  pass "nothing lost: resumed from its checkpoint, $DRAIN_TOPIC has all $TOPIC_ORDERS orders ($TOPIC_EVENTS events); the second SIGTERM exits 0 too"
}

check_size() {
  local bytes mb; bytes=$(podman image inspect --format '{{.Size}}' $IMAGE); mb=$((bytes / 1000000))
  log "image $IMAGE: $mb MB ($bytes bytes)"
  [ "$mb" -le "$MAX_MB" ] || fail "image size $mb MB > $MAX_MB MB"
  pass "image size $mb MB (goal <= $MAX_MB MB)"
}

# ---------------------------------------------------------------- 6. compose
# The real Docker Compose CLI (v2, installed by stack.sh) accepts docker/compose.yml, and
# its resolved form has Prometheus loading the alert rules and Grafana the dashboard.
check_compose() {
  local compose=${ORDER_CDC_COMPOSE:?ORDER_CDC_COMPOSE: scripts/stack.sh up installs the Compose CLI}
  local out; out=$("$compose" -f docker/compose.yml config -q 2>&1) || fail "docker compose config -q: $out"
  [ -z "$out" ] || fail "docker compose config -q printed: $out"
  "$compose" -f docker/compose.yml config --format json >"$WORK/compose.json" || fail "docker compose config --format json"
  local mounts
  mounts=$(jq -r '.services.prometheus.volumes[].target, .services.grafana.volumes[].target' "$WORK/compose.json")
  grep -qx /etc/prometheus/alerts.yml <<<"$mounts" || fail "compose: Prometheus does not mount the alert rules ($mounts)"
  grep -qx /var/lib/grafana/dashboards <<<"$mounts" || fail "compose: Grafana does not mount the dashboards ($mounts)"
  for source in alerts.yml prometheus.yml order-cdc.toml grafana/provisioning grafana/dashboards/order-cdc.json; do
    [ -e "docker/$source" ] || fail "compose mounts docker/$source, which is missing"
  done
  pass "the Compose CLI ($("$compose" version --short)) accepts docker/compose.yml; Prometheus mounts the rules, Grafana the dashboard"
}

# ---------------------------------------------------------------- clean-up
CLEAN_DB=
cleanup() {
  local rc=$?
  podman rm -f -t 0 "$DAEMON" "$SERVER" >/dev/null 2>&1 || true
  podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  [ -z "$CLEAN_DB" ] || psql "$ORDER_CDC_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  # Both topics and the dead-letter topics the pipelines created beside them, in one call
  # (--topic takes a regular expression).
  [ -z "$CLEAN_DB" ] || kafka org.apache.kafka.tools.TopicCommand --bootstrap-server "$ORDER_CDC_TEST_BROKERS" --delete --if-exists \
    --topic "($TOPIC|$DRAIN_TOPIC)(\.dlq)?" >/dev/null 2>&1 || true
  # A failure that printed no FAIL line (set -e) still counts as one.
  [ "$rc" = 0 ] || [ "$FAILED" -gt 0 ] || { printf 'FAIL unexpected exit %s (see above)\n' "$rc"; FAILED=1; }
  log "total $(ms_since "$START") ms, exit $rc"
  echo "container: $PASSED passed, $FAILED failed"
}
trap cleanup EXIT

# ---------------------------------------------------------------- main
mkdir -p "$WORK"
# The stack's NAME=value lines, exported one by one (as scripts/test.sh does).
while IFS= read -r line; do
  case $line in ORDER_CDC_*=*) export "$line" ;; esac
done < <(scripts/stack.sh up)

step "compose file" check_compose
step "podman" install_podman
step "base image $DEBIAN_IMAGE" debian_image
step "base image $RUST_IMAGE" rust_image
step "podman build $IMAGE" build_image
step "image size" check_size
step "fresh database and topic" setup_checks
step "migrate" check_migrate
step "run --once" check_run_once
step "serve" check_serve
step "daemon: SIGTERM, healthcheck, user, nothing lost" check_daemon
log "every container check passed"
