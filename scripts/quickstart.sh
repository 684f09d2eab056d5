#!/usr/bin/env bash
# Controller quickstart: the echo upstream, a static server for dist (wasm modules and the
# dynamic module), and `portcullis run -f examples/local`, which spawns and configures Envoy
# over xDS. ua-block runs as wasm, headers as the dynamic module libportcullis.so.
# Stays in the foreground until Ctrl-C; the controller drains Envoy on exit.
#
# Environment:
#   PORTCULLIS_BIN        controller binary (default dist/bin/portcullis, else built with cargo)
#   ECHO_UPSTREAM_BIN     echo-upstream binary (default: built with cargo)
#   ENVOY_BIN             Envoy binary (default .bin/envoy from `make setup`)
#   PORTCULLIS_RUN_DIR    where logs, Envoy bootstraps and the wasm cache go (default target/quickstart)
# Ports (127.0.0.1): 10080 gateway (examples/local/gateway.yaml), 18080 echo, 18081 dist/,
# 18000 xDS, 18002 wasm endpoint, 19100 controller admin.
set -euo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
ENVOY="${ENVOY_BIN:-$ROOT/.bin/envoy}"
RUN_DIR="${PORTCULLIS_RUN_DIR:-$ROOT/target/quickstart}"
GW_PORT=10080 ECHO_PORT=18080 WASM_ORIGIN_PORT=18081 ADMIN=127.0.0.1:19100

die() { printf '\033[1;31m[quickstart]\033[0m %s\n' "$*" >&2; exit 1; }
log() { printf '\033[1;34m[quickstart]\033[0m %s\n' "$*" >&2; }
# Sleep in the background and wait for it: a signal sent to this script alone (not its whole
# process group, as Ctrl-C does) runs the trap at once. Bash ignores SIGINT that arrives while
# it waits on a foreground `sleep` which itself exits normally.
nap() { sleep "$1" & wait $! || true; }

[ -x "$ENVOY" ] || die "Envoy not found at $ENVOY: run \`make setup\` (or set ENVOY_BIN)"
for f in ua_block headers; do
  [ -f "dist/wasm/$f.wasm" ] || die "dist/wasm/$f.wasm is missing: run \`make build-wasm\`"
done
[ -f dist/dynamic/libportcullis.so ] || die "dist/dynamic/libportcullis.so is missing: run \`make build-dynamic\`"

port_free() {
  python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
for p in $GW_PORT $ECHO_PORT $WASM_ORIGIN_PORT 18000 18002 19100; do
  port_free "$p" || die "port $p on 127.0.0.1 is in use; stop what uses it first"
done

if [ -z "${PORTCULLIS_BIN:-}" ]; then
  if [ -x dist/bin/portcullis ]; then
    PORTCULLIS_BIN="$ROOT/dist/bin/portcullis"
  else
    log "building the controller"
    cargo build -q -p portcullis --bin portcullis
    PORTCULLIS_BIN="$ROOT/target/debug/portcullis"
  fi
fi
if [ -z "${ECHO_UPSTREAM_BIN:-}" ]; then
  log "building the echo upstream"
  cargo build -q -p portcullis-integration --bin echo-upstream
  ECHO_UPSTREAM_BIN="$ROOT/target/debug/echo-upstream"
fi

mkdir -p "$RUN_DIR/manifests"
# The dynamic-module registry named by the GatewayClass: libportcullis.so from the static
# server, pinned by the sha256 of this build (the controller verifies it and serves it to Envoy).
LIB_SHA="$(sha256sum dist/dynamic/libportcullis.so | cut -d' ' -f1)"
cat > "$RUN_DIR/manifests/envoyproxy.yaml" <<YAML
# Written by scripts/quickstart.sh for this build of dist/dynamic/libportcullis.so.
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata:
  name: quickstart-modules
  namespace: default
spec:
  dynamicModules:
    - name: portcullis
      source:
        type: Remote
        remote:
          url: http://127.0.0.1:$WASM_ORIGIN_PORT/dynamic/libportcullis.so
          sha256: $LIB_SHA
YAML
pids=()
cleanup() {
  trap - EXIT INT TERM
  # The controller first (it drains Envoy), then the helpers.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'log "stopping (draining Envoy)"; exit 0' INT TERM

"$ECHO_UPSTREAM_BIN" --addr "127.0.0.1:$ECHO_PORT" > "$RUN_DIR/echo.log" 2>&1 &
pids+=($!)
python3 -m http.server "$WASM_ORIGIN_PORT" --bind 127.0.0.1 --directory dist > "$RUN_DIR/wasm-origin.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$WASM_ORIGIN_PORT/" && break
  nap 0.2
done
# The controller goes first in the list so cleanup stops it (and its Envoy) before the helpers.
"$PORTCULLIS_BIN" run -f examples/local -f "$RUN_DIR/manifests" --envoy-bin "$ENVOY" --listener-address 127.0.0.1 \
  --allow-backend-cidr 127.0.0.0/8 --work-dir "$RUN_DIR/envoy" --cache-dir "$RUN_DIR/wasm-cache" > "$RUN_DIR/portcullis.log" 2>&1 &
pids=($! "${pids[@]}")

log "waiting for Envoy to take its config"
ready=""
for _ in $(seq 1 300); do
  if curl -s --max-time 2 "http://$ADMIN/status" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
gen = d["xds"]["generation"]
nodes = d["xds"]["nodes"]
ok = gen > 0 and nodes and all(n.get("syncedGeneration") == gen for n in nodes.values())
ok = ok and d["wasm"] and all(m["state"] == "ready" for m in d["wasm"])
sys.exit(0 if ok else 1)' 2>/dev/null; then
    ready=1; break
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$RUN_DIR"/*.log >&2; die "a process exited during startup (logs above)"; }
  done
  nap 0.2
done
[ -n "$ready" ] || { tail -n 40 "$RUN_DIR/portcullis.log" >&2; die "Envoy did not sync within 60s (see $RUN_DIR/portcullis.log)"; }

U="http://127.0.0.1:$GW_PORT"
cat <<MSG

Portcullis controller is running (Ctrl-C to stop).
  gateway    $U/          HTTPRoute web: headers filter, dynamic module (libportcullis.so)
             $U/api       HTTPRoute api: ua-block filter, proxy-wasm (ua_block.wasm)
  status     $PORTCULLIS_BIN status          (or curl http://$ADMIN/status, /metrics)
  manifests  examples/local/   (edit them: changes apply live, no Envoy restart)
  logs       $RUN_DIR/portcullis.log, Envoy: $RUN_DIR/envoy/*/envoy.log

Try:
  curl -i $U/api -A 'Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)'   # 403: ua-block (wasm) on /api
  curl -i $U/api -A 'python-requests/2.32'                                               # 403: custom deny
  curl -i $U/api -A 'Mozilla/5.0'                                                        # 200
  curl -i $U/ -A 'python-requests/2.32'                                                  # 200: ua-block is not on /
  curl -i $U/hello -H 'x-debug: 1' -H 'x-internal-token: s3cret'                         # headers (dynamic module): see what the upstream got
  $PORTCULLIS_BIN status
MSG

while :; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$RUN_DIR"/*.log >&2
      die "a child process exited unexpectedly (logs above)"
    fi
  done
  nap 1
done
