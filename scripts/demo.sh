#!/usr/bin/env bash
# Quick start, part one: builds regfs and runs it for real on a demo store.
# Mounts regfs over a registry-shaped store, writes and reads through the mount the way
# a registry does, shows what the kernel and the backing directory see, and unmounts.
# Usage: sudo scripts/demo.sh [DIR]   (default: a fresh temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (regfs mounts a filesystem)" >&2; exit 1; }

cargo build --release --quiet
BIN=$PWD/target/release/regfs
WORK=${1:-$(mktemp -d /tmp/regfs-demo.XXXXXX)}
STORE=$WORK/store
MNT=$WORK/mnt
mkdir -p "$STORE" "$MNT"
chmod 755 "$WORK"
PID=

cleanup() {
  [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  [ -z "${1:-}" ] && rm -rf "$WORK"
}
trap 'cleanup' EXIT
trap 'exit 130' INT TERM

step() { printf '\n== %s\n' "$*"; }

step "regfs mount $STORE $MNT"
"$BIN" mount "$STORE" "$MNT" 2> "$WORK/regfs.log" &
PID=$!
for _ in $(seq 100); do grep -q " $MNT " /proc/mounts && break; sleep 0.05; done
grep " $MNT " /proc/mounts
cat "$WORK/regfs.log"

V2=$MNT/docker/registry/v2
DIGEST=$(printf 'hello layer' | sha256sum | cut -d' ' -f1)
step "a registry-style upload through the mount: _uploads/<id>/data, then rename into blobs/"
mkdir -p "$V2/repositories/demo/app/_uploads/u1" "$V2/blobs/sha256/${DIGEST:0:2}/$DIGEST"
printf 'hello layer' > "$V2/repositories/demo/app/_uploads/u1/data"
date -u +%Y-%m-%dT%H:%M:%SZ | tr -d '\n' > "$V2/repositories/demo/app/_uploads/u1/startedat"
mv "$V2/repositories/demo/app/_uploads/u1/data" "$V2/blobs/sha256/${DIGEST:0:2}/$DIGEST/data"
rm -r "$V2/repositories/demo/app/_uploads/u1"
mkdir -p "$V2/repositories/demo/app/_layers/sha256/$DIGEST"
printf 'sha256:%s' "$DIGEST" > "$V2/repositories/demo/app/_layers/sha256/$DIGEST/link"
(cd "$STORE" && find . | sort)

step "reads through the mount (kernel passthrough when the kernel grants it)"
cat "$V2/blobs/sha256/${DIGEST:0:2}/$DIGEST/data"; echo
sha256sum "$V2/blobs/sha256/${DIGEST:0:2}/$DIGEST/data"

step "a non-root registry user (nobody) writes through the mount; files are its own"
chmod 777 "$V2/repositories/demo"
su nobody -s /bin/sh -c "umask 022; mkdir -p '$V2/repositories/demo/other/_manifests' && printf x > '$V2/repositories/demo/other/_manifests/f'"
ls -ln "$STORE/docker/registry/v2/repositories/demo/other/_manifests"

step "escape attempts: a symlink planted in the store is never followed"
ln -s /etc/passwd "$STORE/planted"
cat "$MNT/planted" 2>&1 || true

step "statfs passes through"
df -h "$MNT" | sed 's/^/  /'

step "SIGTERM: the daemon unmounts and exits 0"
kill -TERM "$PID"; wait "$PID"; echo "exit status $?"; PID=
grep -q " $MNT " /proc/mounts && echo "still mounted?!" || echo "mount gone"
