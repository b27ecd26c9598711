# What scripts/stack.sh and scripts/container.sh share (sourced; each script defines its
# own `log`).

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages; apt-get options (e.g. --no-install-recommends) may come first.
apt_install() {
  log "installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Wait for a condition with a deadline (seconds); never a bare sleep as synchronisation.
# Returns 1 when the deadline passes.
wait_for() {
  local what=$1 deadline=$2; shift 2
  local end=$((SECONDS + deadline))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.5
  done
  log "$what is ready"
}
