#!/usr/bin/env bash
# Run cargo-fuzz targets for SECONDS each (default 60), one after the other.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]    (no TARGET: every target of every fuzz crate)
# Fuzz crates: filters/core/fuzz, controller/fuzz, ratelimit-server/fuzz (each its own
#        workspace); a TARGET is looked up in them by name (`cargo fuzz list`).
# Env:   FUZZ_JOBS=N      parallel libFuzzer workers per target (default 1)
#        FUZZ_FEATURES=-  build filters/core/fuzz without default features (skips the oidc targets)
# cargo-fuzz needs nightly flags (-Zsanitizer); on a stable toolchain RUSTC_BOOTSTRAP=1 allows them.
# Crashes are written to <crate>/fuzz/artifacts/<target>/ and make the script exit non-zero.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FUZZ_CRATES=(filters/core/fuzz controller/fuzz ratelimit-server/fuzz)
seconds="${1:-60}"
shift || true

case "$seconds" in
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a number, got '$seconds'" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1

# Each fuzz crate resolves its own dependencies; start from the workspace's lockfile so the
# fuzzed versions are the ones that ship.
for c in "${FUZZ_CRATES[@]}"; do
  [ -f "$ROOT/$c/Cargo.lock" ] || cp "$ROOT/Cargo.lock" "$ROOT/$c/Cargo.lock"
done

# "crate target" pairs, in crate order.
declare -A crate_of=()
all=()
for c in "${FUZZ_CRATES[@]}"; do
  while read -r t; do
    [ -n "$t" ] || continue
    crate_of[$t]="$c"
    all+=("$t")
  done < <(cd "$ROOT/$c" && cargo fuzz list)
done

if [ $# -gt 0 ]; then
  targets=("$@")
  for t in "${targets[@]}"; do
    if [ -z "${crate_of[$t]:-}" ]; then
      echo "fuzz.sh: no fuzz target '$t' (targets: ${all[*]})" >&2
      exit 2
    fi
  done
else
  targets=("${all[@]}")
fi

failed=()
for t in "${targets[@]}"; do
  crate="${crate_of[$t]}"
  FUZZ_DIR="$ROOT/$crate"
  feature_args=()
  if [ "$crate" = filters/core/fuzz ] && [ "${FUZZ_FEATURES:-}" = "-" ]; then
    if [[ "$t" == oidc_* ]]; then
      echo "[fuzz] $t: skipped (needs the oidc feature)" >&2
      continue
    fi
    feature_args=(--no-default-features)
  fi
  cd "$FUZZ_DIR"
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  dict=()
  if [ -f "dict/$t.dict" ]; then
    dict=("-dict=$FUZZ_DIR/dict/$t.dict")
  elif [[ "$t" == *_config ]] && [ -f dict/config.dict ]; then
    dict=("-dict=$FUZZ_DIR/dict/config.dict")
  fi
  echo "[fuzz] $crate $t: ${seconds}s" >&2
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
    echo "[fuzz] $t: FAILED (see $log and $crate/artifacts/$t/)" >&2
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
