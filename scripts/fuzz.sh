#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for FUZZ_SECONDS each (default 20, what CI
# spends), starting from the committed seed corpus in fuzz/corpus/<target>. New inputs
# go to a temporary directory, so the committed corpus stays as it is; a crash or a
# hang (one input over 10 s) fails the script and leaves its input in
# fuzz/artifacts/<target>/. Installs cargo-fuzz from crates.io when missing.
#
# Longer runs: FUZZ_SECONDS=600 scripts/fuzz.sh, or one target:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run manifest -- -max_total_time=3600
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
# cargo fuzz passes nightly-only flags (-Zsanitizer, sancov); the stable toolchain
# accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo fuzz build
for target in $(cargo fuzz list); do
  mkdir -p "$work/$target"
  echo "fuzz.sh: $target for ${seconds}s"
  log="$work/$target.log"
  if ! cargo fuzz run "$target" "$work/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz.sh: $target failed; its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units)' "$log" || true
done
