#!/usr/bin/env bash
# The test command (README, CI): installs what is missing on a fresh Debian machine,
# then checks formatting and lints and runs every test, FUSE mounts included.
# Run as root: the tests mount FUSE filesystems for real.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root: the tests mount FUSE filesystems (try: sudo $0)"

bash scripts/install-deps.sh

if [ ! -c /dev/fuse ]; then
  # The tests fail (CI=true) or skip loudly without it; say why up front.
  echo "test.sh: /dev/fuse is missing; FUSE tests cannot run here" >&2
  [ "${CI:-}" = true ] && exit 1
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets

# The write-ordering protocols under a deterministic scheduler (shuttle): the library is
# built with its primitives. REGFS_SCHEDULES schedules per scenario and GC setting.
cargo test --features shuttle --test online_schedules

# The fuzz targets from their seed corpus, FUZZ_SECONDS (default 20) each.
bash scripts/fuzz.sh
