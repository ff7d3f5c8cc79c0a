#!/usr/bin/env bash
# Installs and starts the stand-in services the tests use, on loopback, when the environment
# does not already name real ones:
#   Kafka protocol: Tansu (crates.io `tansu`), when KAFKA_BOOTSTRAP is unset;
#   MongoDB wire:   SecantusDB (PyPI `SecantusDB`), when MONGODB_URI is unset;
#   a browser:      Debian's `chromium`, for the dashboard test, when missing.
# Installs are cached under $DIFFSTREAM_TOOLS (default ~/.cache/diffstream/tools) and skipped
# when present. Users with Docker get the real Apache Kafka and MongoDB from docker-compose.yml.
#
#   scripts/services.sh install     install what is missing
#   scripts/services.sh start       start them; prints `export` lines for KAFKA_BOOTSTRAP and MONGODB_URI
#   scripts/services.sh stop        stop what `start` started
set -euo pipefail

TOOLS=${DIFFSTREAM_TOOLS:-$HOME/.cache/diffstream/tools}
STATE=${DIFFSTREAM_STATE:-${TMPDIR:-/tmp}/diffstream-services}
TANSU_VERSION=0.6.0
SECANTUS_VERSION=0.7.0b3
TANSU=$TOOLS/tansu/bin/tansu
SECANTUS=$TOOLS/secvenv/bin/secantusd-py
KAFKA_PORT=${DIFFSTREAM_KAFKA_PORT:-19092}
MONGO_PORT=${DIFFSTREAM_MONGO_PORT:-27018}

log() { echo "services: $*" >&2; }

install() {
  mkdir -p "$TOOLS"
  if ! command -v chromium >/dev/null 2>&1; then
    # the dashboard test loads the page in it, headless
    log "installing chromium (Debian's package; about 1 min)"
    if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo -n"; fi
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } >&2 \
      || log "could not install chromium; the dashboard test will fail until \`apt-get install chromium\` is run"
  fi
  if [[ ! -x "$TANSU" ]]; then
    # also when KAFKA_BOOTSTRAP names a real broker: the frozen-broker test freezes one of its own
    log "installing tansu $TANSU_VERSION (a Kafka-protocol broker; 13-16 min on 2 cores, cached afterwards)"
    # dynostore carries the in-memory storage engine; without it the broker refuses to start.
    cargo install "tansu@$TANSU_VERSION" --locked --features dynostore --root "$TOOLS/tansu" >&2
  fi
  if [[ ! -x "$SECANTUS" ]]; then
    # also when MONGODB_URI names a real server: the outage test stops and starts one of its own
    log "installing SecantusDB $SECANTUS_VERSION (a MongoDB-wire server; about 1.5 min)"
    python3 -m venv "$TOOLS/secvenv" >&2
    "$TOOLS/secvenv/bin/pip" install --quiet "SecantusDB==$SECANTUS_VERSION" >&2
  fi
}

wait_port() { # name port pidfile log
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    if ! kill -0 "$(cat "$3")" 2>/dev/null; then
      log "$1 exited while starting; its log ($4):"; tail -n 20 "$4" >&2; return 1
    fi
    sleep 0.1
  done
  log "$1 did not open port $2 within 30 s; see $4"; return 1
}

start() {
  mkdir -p "$STATE"
  if [[ -z "${KAFKA_BOOTSTRAP:-}" ]]; then
    [[ -x "$TANSU" ]] || { log "tansu is not installed: run scripts/services.sh install"; exit 1; }
    stop_one tansu
    "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine memory://tansu/ >"$STATE/tansu.log" 2>&1 &
    echo $! >"$STATE/tansu.pid"
    wait_port tansu "$KAFKA_PORT" "$STATE/tansu.pid" "$STATE/tansu.log"
    log "tansu listening on 127.0.0.1:$KAFKA_PORT"
    echo "export KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
    # tests that meet a documented Tansu limitation say so (see shared notes on Tansu)
    echo "export DIFFSTREAM_TEST_BROKER=tansu"
  else
    echo "export KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
  fi
  if [[ -z "${MONGODB_URI:-}" ]]; then
    [[ -x "$SECANTUS" ]] || { log "SecantusDB is not installed: run scripts/services.sh install"; exit 1; }
    stop_one secantus
    "$SECANTUS" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path :memory: >"$STATE/secantus.log" 2>&1 &
    echo $! >"$STATE/secantus.pid"
    wait_port secantusdb "$MONGO_PORT" "$STATE/secantus.pid" "$STATE/secantus.log"
    log "SecantusDB listening on 127.0.0.1:$MONGO_PORT"
    echo "export MONGODB_URI='mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true'"
  else
    echo "export MONGODB_URI='$MONGODB_URI'"
  fi
  # The outage tests start, freeze and stop servers of their own.
  if [[ -x "$SECANTUS" ]]; then echo "export DIFFSTREAM_SECANTUS=$SECANTUS"; fi
  if [[ -x "$TANSU" ]]; then echo "export DIFFSTREAM_TANSU=$TANSU"; fi
}

stop_one() {
  local pidfile="$STATE/$1.pid"
  if [[ -f "$pidfile" ]]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

stop() { stop_one tansu; stop_one secantus; }

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: scripts/services.sh install|start|stop" >&2; exit 2 ;;
esac
