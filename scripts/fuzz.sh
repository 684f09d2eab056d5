#!/usr/bin/env bash
# Run every cargo-fuzz target of filters/core for SECONDS each (default 60).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]    (no TARGET: all of `cargo fuzz list`)
# Env:   FUZZ_JOBS=N      parallel libFuzzer workers per target (default 1)
#        FUZZ_FEATURES=-  build without default features (skips the oidc targets)
# cargo-fuzz needs nightly flags (-Zsanitizer); on a stable toolchain RUSTC_BOOTSTRAP=1 allows them.
# Crashes are written to filters/core/fuzz/artifacts/<target>/ and make the script exit non-zero.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FUZZ_DIR="$ROOT/filters/core/fuzz"
seconds="${1:-60}"
shift || true

case "$seconds" in
  -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a number, got '$seconds'" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
cd "$FUZZ_DIR"
feature_args=()
[ "${FUZZ_FEATURES:-}" = "-" ] && feature_args=(--no-default-features)

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

failed=()
for t in "${targets[@]}"; do
  if [ "${FUZZ_FEATURES:-}" = "-" ] && [[ "$t" == oidc_* ]]; then
    echo "[fuzz] $t: skipped (needs the oidc feature)" >&2
    continue
  fi
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  dict=()
  [[ "$t" == *_config ]] && dict=("-dict=$FUZZ_DIR/dict/config.dict")
  echo "[fuzz] $t: ${seconds}s" >&2
  mkdir -p "artifacts/$t"
  log="$FUZZ_DIR/artifacts/$t.log"
  # -jobs makes libFuzzer write fuzz-N.log files in the cwd (clobbered by concurrent runs), so
  # it is only passed on request. cargo fuzz already sets -artifact_prefix=artifacts/<target>/.
  jobs=()
  [ -n "${FUZZ_JOBS:-}" ] && jobs=("-jobs=$FUZZ_JOBS" "-workers=$FUZZ_JOBS")
  rc=0
  cargo fuzz run "${feature_args[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
      -max_total_time="$seconds" -print_final_stats=1 "${jobs[@]}" "${dict[@]}" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ] || grep -qE 'SUMMARY|panicked|deadly signal|ERROR: libFuzzer' "$log"; then
    echo "[fuzz] $t: FAILED (see $log and artifacts/$t/)" >&2
    failed+=("$t")
  else
    execs="$(grep -E 'stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)"
    echo "[fuzz] $t: ok, ${execs:-?} executions" >&2
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "[fuzz] failing targets: ${failed[*]}" >&2
  exit 1
fi
