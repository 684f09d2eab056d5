#!/usr/bin/env bash
# Local quickstart (what `make run` calls after `make build`): the echo upstream, then Envoy
# with both Portcullis filters (examples/local/envoy-static.yaml) in front of it, on 127.0.0.1.
# Stays in the foreground until Ctrl-C and stops both children on exit.
#
# Environment:
#   PORTCULLIS_HTTP_PORT  (10000)  Envoy listener
#   PORTCULLIS_ADMIN_PORT (9901)   Envoy admin
#   PORTCULLIS_ECHO_PORT  (18080)  echo upstream
#                                  (0 for any of the ports: the kernel picks a free one; the
#                                  banner shows the ports actually bound)
#   ENVOY_BIN                      Envoy binary (default .bin/envoy from `make setup`)
#   ECHO_UPSTREAM_BIN              echo-upstream binary (default: built with cargo)
#   PORTCULLIS_RUN_DIR             where logs and the rendered config go (default target/run)
set -euo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
HTTP_PORT="${PORTCULLIS_HTTP_PORT:-10000}"
ADMIN_PORT="${PORTCULLIS_ADMIN_PORT:-9901}"
ECHO_PORT="${PORTCULLIS_ECHO_PORT:-18080}"
ENVOY="${ENVOY_BIN:-$ROOT/.bin/envoy}"
RUN_DIR="${PORTCULLIS_RUN_DIR:-$ROOT/target/run}"

die() { printf '\033[1;31m[run]\033[0m %s\n' "$*" >&2; exit 1; }
log() { printf '\033[1;34m[run]\033[0m %s\n' "$*" >&2; }
# Sleep in the background and wait for it: a signal sent to this script alone (not its whole
# process group, as Ctrl-C does) runs the trap at once. Bash ignores SIGINT that arrives while
# it waits on a foreground `sleep` which itself exits normally.
nap() { sleep "$1" & wait $! || true; }

[ -x "$ENVOY" ] || die "Envoy not found at $ENVOY: run \`make setup\` (or set ENVOY_BIN)"
for f in ua_block headers; do
  [ -f "dist/wasm/$f.wasm" ] || die "dist/wasm/$f.wasm is missing: run \`make build-wasm\`"
done

port_free() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}
# Envoy's admin /ready says LIVE (python3 rather than curl: one prerequisite fewer).
envoy_live() {
  python3 - "$ADMIN_PORT" <<'PY' 2>/dev/null
import sys, urllib.request
url = "http://127.0.0.1:%s/ready" % sys.argv[1]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
sys.exit(0 if opener.open(url, timeout=2).read().strip() == b"LIVE" else 1)
PY
}
for p in "$HTTP_PORT" "$ADMIN_PORT" "$ECHO_PORT"; do
  [ "$p" = 0 ] && continue
  port_free "$p" || die "port $p on 127.0.0.1 is in use; stop what uses it or set PORTCULLIS_HTTP_PORT / PORTCULLIS_ADMIN_PORT / PORTCULLIS_ECHO_PORT"
done

if [ -z "${ECHO_UPSTREAM_BIN:-}" ]; then
  log "building the echo upstream"
  cargo build -q -p portcullis-integration --bin echo-upstream
  ECHO_UPSTREAM_BIN="$ROOT/target/debug/echo-upstream"
fi

mkdir -p "$RUN_DIR"
CONFIG="$RUN_DIR/envoy.yaml"
ECHO_ADDR_FILE="$RUN_DIR/echo.addr"
ADMIN_ADDR_FILE="$RUN_DIR/admin.addr"
rm -f "$ECHO_ADDR_FILE" "$ADMIN_ADDR_FILE"

pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'log "stopping"; exit 0' INT TERM

# Waits (up to 60 s) for a `host:port` file a child writes once it has bound; prints the port.
bound_port() {
  local file="$1" pid="$2" deadline=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if [ -s "$file" ]; then
      local addr; addr="$(cat "$file")"
      echo "${addr##*:}"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    nap 0.1
  done
  return 1
}

"$ECHO_UPSTREAM_BIN" --addr "127.0.0.1:$ECHO_PORT" --addr-file "$ECHO_ADDR_FILE" > "$RUN_DIR/echo.log" 2>&1 &
pids+=($!)
ECHO_PORT="$(bound_port "$ECHO_ADDR_FILE" "${pids[0]}")" || { tail -n 30 "$RUN_DIR/echo.log" >&2; die "the echo upstream did not start (log above)"; }

sed -e "s/port_value: 10000 }/port_value: $HTTP_PORT }/" \
    -e "s/port_value: 9901 }/port_value: $ADMIN_PORT }/" \
    -e "s/port_value: 18080 }/port_value: $ECHO_PORT }/" \
    examples/local/envoy-static.yaml > "$CONFIG"
"$ENVOY" -c "$CONFIG" --admin-address-path "$ADMIN_ADDR_FILE" --concurrency 2 --disable-hot-restart -l info > "$RUN_DIR/envoy.log" 2>&1 &
pids+=($!)
ADMIN_PORT="$(bound_port "$ADMIN_ADDR_FILE" "${pids[1]}")" || { tail -n 30 "$RUN_DIR/envoy.log" >&2; die "Envoy did not start (log above)"; }

ready=""
deadline=$((SECONDS + 90))
while [ "$SECONDS" -lt "$deadline" ]; do
  if envoy_live; then
    ready=1; break
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$RUN_DIR/envoy.log" "$RUN_DIR/echo.log" >&2; die "a process exited during startup (logs above)"; }
  done
  nap 0.2
done
[ -n "$ready" ] || { tail -n 30 "$RUN_DIR/envoy.log" >&2; die "Envoy did not become ready within 90s (log: $RUN_DIR/envoy.log)"; }
# The port the `http` listener bound (the one configured, or the kernel's pick for 0).
HTTP_PORT="$(python3 - "$ADMIN_PORT" <<'PY'
import json, sys, urllib.request
url = "http://127.0.0.1:%s/listeners?format=json" % sys.argv[1]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
doc = json.load(opener.open(url, timeout=5))
for l in doc.get("listener_statuses", []):
    if l.get("name") == "http":
        print(l["local_address"]["socket_address"]["port_value"])
PY
)" || die "cannot read Envoy's listeners from its admin"
[ -n "$HTTP_PORT" ] || die "Envoy has no listener named http"

U="http://127.0.0.1:$HTTP_PORT"
cat <<MSG

Portcullis is running (Ctrl-C to stop).
  proxy      $U/          (ua-block + headers in front of the echo upstream)
  admin      http://127.0.0.1:$ADMIN_PORT/    metrics: http://127.0.0.1:$ADMIN_PORT/stats?filter=portcullis
  upstream   http://127.0.0.1:$ECHO_PORT/          (answers with the request it saw, as JSON)
  logs       $RUN_DIR/envoy.log, $RUN_DIR/echo.log
  config     examples/local/envoy-static.yaml (rendered: $CONFIG)

Try:
  curl -i $U/ -A 'Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)'    # 403: ai-crawlers preset
  curl -i $U/ -A 'python-requests/2.32'                                                # 403: custom deny
  curl -i $U/ -A 'Mozilla/5.0 Googlebot/2.1 GPTBot'                                    # 200: allow wins over deny
  curl -i $U/ -H 'User-Agent:'                                                         # 403: missing user-agent
  curl -i $U/hello -A 'Mozilla/5.0' -H 'x-debug: 1' -H 'x-internal-token: s3cret'      # 200: see the JSON the upstream got
  curl -s http://127.0.0.1:$ADMIN_PORT/stats?filter=portcullis                          # counters
MSG

# Run until Ctrl-C or until a child dies.
while :; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$RUN_DIR/envoy.log" "$RUN_DIR/echo.log" >&2
      die "a child process exited unexpectedly (logs above)"
    fi
  done
  nap 1
done
