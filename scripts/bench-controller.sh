#!/usr/bin/env bash
# Control-plane benchmark (`make bench-controller`): `portcullis translate` wall time and peak
# RSS at 100 / 1,000 / 10,000 / 50,000 HTTPRoutes, and file change -> Envoy ACK under `portcullis run`.
# Writes target/bench/controller.json, target/bench/controller.md and docs/bench/controller-*.svg.
# Extra arguments go to `portcullis-bench controller` (see --help), e.g.
#   scripts/bench-controller.sh --routes 100,1000 --converge-routes 1000
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.bin:$PATH"
bash scripts/setup.sh core
[ -x target/release/portcullis ] || cargo build --release -p portcullis --bin portcullis
[ -f dist/wasm/ua_block.wasm ] && [ -f dist/wasm/headers.wasm ] || make build-wasm
cargo build --release -p portcullis-bench
mkdir -p target/bench docs/bench
echo "[bench-controller] $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec target/release/portcullis-bench controller --update-benchmarks-md \
  --command "make bench-controller${*:+ (scripts/bench-controller.sh $*)}" "$@"
