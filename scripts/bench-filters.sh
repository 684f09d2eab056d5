#!/usr/bin/env bash
# Data-plane benchmark (`make bench-filters`): every filter, as proxy-wasm and as the dynamic
# module dist/dynamic/libportcullis.so, against no filter, Envoy's native equivalent and Lua.
# One Envoy per variant (--concurrency 1) pinned to core 0, wrk (1 thread, 16 connections) and
# the real-upstream Envoy pinned to core 1; variants interleaved, 5 rounds. The `c4` rows run
# Envoy with 4 workers sharing every core with wrk; a last phase checks exactness of a local
# limit across those workers.
# Writes target/bench/filters.json, target/bench/filters.md and docs/bench/filters-*.svg.
# Extra arguments go to `portcullis-bench filters` (see --help), e.g.
#   scripts/bench-filters.sh --rounds 1 --duration 1 --only ua-wasm,ua-lua
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.bin:$PATH"
bash scripts/setup.sh core
# Load generator (Debian wrk), installed the way scripts/setup.sh installs packages.
if ! command -v wrk >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "[bench-filters] apt: installing wrk" >&2
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null 2>&1; then
    $sudo apt-get update -q >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk
  fi
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }
# `make bench-filters` builds ua_block and headers (make build); ratelimit and oidc are built here.
for f in ratelimit oidc; do
  if [ ! -f "dist/wasm/$f.wasm" ]; then
    cargo build --profile wasm --target wasm32-wasip1 -p "$f"
    mkdir -p dist/wasm
    wasm-opt --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
      --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue -O3 \
      "target/wasm32-wasip1/wasm/$f.wasm" -o "dist/wasm/$f.wasm"
  fi
done
# `make bench-filters` builds the dynamic module too (make build); run directly, build it here.
if [ ! -f dist/dynamic/libportcullis.so ]; then
  echo "[bench-filters] dist/dynamic/libportcullis.so missing: make build-dynamic" >&2
  make build-dynamic
fi
cargo build --release -p portcullis-bench
mkdir -p target/bench docs/bench
if [ "$(nproc)" -lt 2 ]; then
  echo "[bench-filters] fewer than 2 cores: Envoy and wrk share core 0" >&2
  set -- --load-cpus 0 "$@"
fi
echo "[bench-filters] $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec target/release/portcullis-bench filters --update-benchmarks-md \
  --command "make bench-filters${*:+ (scripts/bench-filters.sh $*)}" "$@"
