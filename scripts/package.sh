#!/usr/bin/env bash
# Builds the Debian package with cargo-deb: target/debian/regfs_<version>_<arch>.deb.
#
# Usage: scripts/package.sh [--profile PROFILE] [--no-build] [--fast] [--output DIR]
#
#   --profile PROFILE  the cargo profile whose binary goes in (default release; the
#                      tests use dev, the binary `cargo test` already built: no release
#                      build in CI)
#   --no-build         package the binary already built for PROFILE
#   --fast             lighter compression (a larger .deb, built faster; the tests)
#   --output DIR       where the .deb goes (default target/debian)
#
# The man page and the bash/zsh/fish completions are generated from the built binary's
# clap definition (`regfs man`, `regfs completions SHELL`) into target/deb-assets/, with
# the systemd unit pointing at /usr/bin/regfs. cargo-deb strips the binary. Installs
# cargo-deb (cargo install cargo-deb --locked) if it is missing. Prints the .deb's path.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

die() { echo "package.sh: $*" >&2; exit 1; }

PROFILE=release
BUILD=1
FAST=()
OUTPUT=$ROOT/target/debian
while [ $# -gt 0 ]; do
  case $1 in
    --profile) [ $# -ge 2 ] || die "--profile needs a name"; PROFILE=$2; shift ;;
    --no-build) BUILD= ;;
    --fast) FAST=(--fast) ;;
    --output) [ $# -ge 2 ] || die "--output needs a directory"; OUTPUT=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
case $PROFILE in
  dev|test) DIR=debug ;;
  *) DIR=$PROFILE ;;
esac

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "package.sh: installing cargo-deb (cargo install cargo-deb --locked)" >&2
  cargo install cargo-deb --locked --quiet >&2
fi

if [ -n "$BUILD" ]; then
  cargo build --profile "$PROFILE" --bin regfs >&2
fi
BIN=$ROOT/target/$DIR/regfs
[ -x "$BIN" ] || die "no regfs binary at $BIN (build it, or drop --no-build)"

ASSETS=$ROOT/target/deb-assets
rm -rf "$ASSETS"
mkdir -p "$ASSETS"
"$BIN" man >"$ASSETS/regfs.1"
"$BIN" completions bash >"$ASSETS/regfs.bash"
"$BIN" completions zsh >"$ASSETS/_regfs"
"$BIN" completions fish >"$ASSETS/regfs.fish"
sed 's|^ExecStart=/usr/local/bin/regfs |ExecStart=/usr/bin/regfs |' scripts/regfs.service >"$ASSETS/regfs.service"
grep -q '^ExecStart=/usr/bin/regfs mount ' "$ASSETS/regfs.service" ||
  die "could not point ExecStart at /usr/bin/regfs in scripts/regfs.service"
for f in regfs.1 regfs.bash _regfs regfs.fish; do
  [ -s "$ASSETS/$f" ] || die "$BIN produced an empty $f"
done

mkdir -p "$OUTPUT"
# cargo-deb maps target/release/ in the assets to the profile's directory.
cargo deb --no-build --profile "$PROFILE" "${FAST[@]}" --output "$OUTPUT" >&2
ls -t "$OUTPUT"/regfs_*.deb | head -1
