#!/usr/bin/env bash
# Installs regfs as a systemd service under Debian's docker-registry, or removes it.
#
# Usage: sudo scripts/install.sh [--prefix DIR] [--no-build]
#        sudo scripts/install.sh --uninstall [--purge] [--prefix DIR]
#
#   --prefix DIR   where the binary and man page go (default /usr/local)
#   --no-build     do not run `cargo build --release`; install target/release/regfs
#   --uninstall    remove what an install put in place; /etc/regfs/regfs.toml stays
#   --purge        with --uninstall: remove /etc/regfs/regfs.toml too
#
# Environment:
#   DESTDIR=DIR    install under DIR instead of / (a staging root, e.g. for tests or
#                  packaging); systemctl is not run then, and root is not required
#   REGFS_BIN=FILE install this binary instead of target/release/regfs (implies --no-build)
#
# Installs PREFIX/bin/regfs, /etc/systemd/system/regfs.service (ExecStart pointing at
# PREFIX/bin/regfs), the drop-in /etc/systemd/system/docker-registry.service.d/regfs.conf,
# /etc/regfs/regfs.toml (only if absent: an operator's configuration is never
# overwritten), bash, zsh and fish completions and the man page PREFIX/share/man/man1/
# regfs.1. Running it again is harmless: files are replaced by the same content.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=$ROOT/scripts

die() { echo "install.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

PREFIX=/usr/local
BUILD=1
UNINSTALL=
PURGE=
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift ;;
    --prefix=*) PREFIX=${1#--prefix=} ;;
    --no-build) BUILD= ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
[ -z "$PURGE" ] || [ -n "$UNINSTALL" ] || die "--purge goes with --uninstall"
case $PREFIX in
  /*) PREFIX=${PREFIX%/}; [ -n "$PREFIX" ] || PREFIX=/ ;;
  *) die "--prefix must be an absolute path: $PREFIX" ;;
esac
[ "$PREFIX" != / ] || die "--prefix / is not supported (use /usr)"

DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
if [ -n "$DESTDIR" ]; then
  mkdir -p "$DESTDIR"
  DESTDIR=$(cd "$DESTDIR" && pwd)
elif [ "$(id -u)" != 0 ]; then
  die "run as root: it installs into $PREFIX and /etc (try: sudo $0; or DESTDIR=DIR to stage)"
fi
if [ -n "${REGFS_BIN:-}" ]; then
  BIN=$REGFS_BIN
  BUILD=
else
  BIN=$ROOT/target/release/regfs
fi

# Installed paths, without DESTDIR (as the running system sees them).
BIN_DST=$PREFIX/bin/regfs
UNIT_DST=/etc/systemd/system/regfs.service
DROPIN_DIR=/etc/systemd/system/docker-registry.service.d
DROPIN_DST=$DROPIN_DIR/regfs.conf
CONF_DIR=/etc/regfs
CONF_DST=$CONF_DIR/regfs.toml
BASH_DST=/usr/share/bash-completion/completions/regfs
ZSH_DST=/usr/share/zsh/vendor-completions/_regfs
FISH_DST=/usr/share/fish/vendor_completions.d/regfs.fish
MAN_DST=$PREFIX/share/man/man1/regfs.1

# systemctl only on the live system, and only if systemd runs it.
systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

say() { printf '  %-9s %s\n' "$1" "$2"; }

# put MODE SOURCE DEST: installs SOURCE as DESTDIR/DEST, saying whether anything changed.
put() {
  local mode=$1 src=$2 dst=$DESTDIR$3 verb=installed
  if [ -e "$dst" ]; then
    if cmp -s "$src" "$dst" && [ "$(stat -c %a "$dst")" = "${mode#0}" ]; then
      say unchanged "$3"
      return
    fi
    verb=updated
  fi
  install -D -m "$mode" "$src" "$dst"
  say "$verb" "$3"
}

# remove DEST: removes DESTDIR/DEST if present.
remove() {
  local dst=$DESTDIR$1
  if [ -e "$dst" ] || [ -L "$dst" ]; then
    rm -f "$dst"
    say removed "$1"
  else
    say absent "$1"
  fi
}

# rmdir_empty DIR: removes DESTDIR/DIR if it is an empty directory.
rmdir_empty() {
  local dir=$DESTDIR$1
  if [ -d "$dir" ] && [ -z "$(ls -A "$dir")" ]; then
    rmdir "$dir"
    say removed "$1/"
  fi
}

if [ -n "$UNINSTALL" ]; then
  echo "Uninstalling regfs${DESTDIR:+ from $DESTDIR}"
  if systemd_running; then
    if systemctl is-active --quiet regfs.service; then
      echo "  stopping regfs.service (docker-registry.service stops with it)"
      systemctl stop regfs.service
    fi
    if systemctl is-enabled --quiet regfs.service 2>/dev/null; then
      systemctl disable --quiet regfs.service
      say disabled regfs.service
    fi
  fi
  remove "$BIN_DST"
  remove "$UNIT_DST"
  remove "$DROPIN_DST"
  rmdir_empty "$DROPIN_DIR"
  remove "$BASH_DST"
  remove "$ZSH_DST"
  remove "$FISH_DST"
  remove "$MAN_DST"
  if [ -n "$PURGE" ]; then
    remove "$CONF_DST"
    rmdir_empty "$CONF_DIR"
  elif [ -e "$DESTDIR$CONF_DST" ]; then
    say kept "$CONF_DST (your configuration; --uninstall --purge removes it)"
  fi
  if systemd_running; then
    systemctl daemon-reload
    echo "  ran       systemctl daemon-reload"
    echo
    echo "docker-registry.service no longer needs regfs. Start it again if it should run:"
    echo "  systemctl start docker-registry"
  fi
  exit 0
fi

if [ -n "$BUILD" ]; then
  command -v cargo >/dev/null ||
    die "cargo is not in PATH: build as your user (cargo build --release), then run: sudo $0 --no-build"
  echo "Building regfs (cargo build --release)"
  (cd "$ROOT" && cargo build --release)
fi
if [ ! -f "$BIN" ] || [ ! -x "$BIN" ]; then
  die "no regfs binary at $BIN (build it with: cargo build --release)"
fi
for f in "$SRC/regfs.service" "$SRC/docker-registry.service.d/regfs.conf" "$SRC/regfs.toml"; do
  [ -f "$f" ] || die "missing $f"
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "Installing regfs${DESTDIR:+ under $DESTDIR}"
put 0755 "$BIN" "$BIN_DST"

sed "s|^ExecStart=/usr/local/bin/regfs |ExecStart=$BIN_DST |" "$SRC/regfs.service" >"$TMP/regfs.service"
grep -q "^ExecStart=$BIN_DST mount " "$TMP/regfs.service" ||
  die "could not point ExecStart at $BIN_DST in $SRC/regfs.service"
put 0644 "$TMP/regfs.service" "$UNIT_DST"
put 0644 "$SRC/docker-registry.service.d/regfs.conf" "$DROPIN_DST"

if [ -e "$DESTDIR$CONF_DST" ]; then
  say kept "$CONF_DST (exists; never overwritten: compare with $SRC/regfs.toml)"
else
  install -D -m 0644 "$SRC/regfs.toml" "$DESTDIR$CONF_DST"
  say installed "$CONF_DST"
fi
if ! check=$("$BIN" config check "$DESTDIR$CONF_DST" 2>&1); then
  echo "install.sh: warning: $CONF_DST does not pass \`regfs config check\`:" >&2
  echo "  $check" >&2
  echo "  regfs.service will not start until it does." >&2
fi

"$BIN" completions bash >"$TMP/regfs.bash"
"$BIN" completions zsh >"$TMP/_regfs"
"$BIN" completions fish >"$TMP/regfs.fish"
"$BIN" man >"$TMP/regfs.1"
for f in regfs.bash _regfs regfs.fish regfs.1; do
  [ -s "$TMP/$f" ] || die "$BIN produced an empty $f"
done
put 0644 "$TMP/regfs.bash" "$BASH_DST"
put 0644 "$TMP/_regfs" "$ZSH_DST"
put 0644 "$TMP/regfs.fish" "$FISH_DST"
put 0644 "$TMP/regfs.1" "$MAN_DST"

if systemd_running; then
  systemctl daemon-reload
  echo "  ran       systemctl daemon-reload"
  if systemctl is-active --quiet regfs.service; then
    echo "  note      regfs.service is running the previous binary until"
    echo "            systemctl restart regfs (which restarts docker-registry too)"
  fi
elif [ -z "$DESTDIR" ]; then
  echo "  note      systemd is not running: skipped systemctl daemon-reload"
fi

cat <<EOF

Next steps:
  1. Edit $CONF_DST (storage, mount point, [gc] schedule in UTC), then check it:
       regfs config check $CONF_DST
  2. Point the registry at the mount: in /etc/docker/registry/config.yml,
     storage.filesystem.rootdirectory must be regfs's mountpoint
     (/var/lib/docker-registry, Debian's default, needs no change).
  3. Start regfs now and at boot; from then on the registry starts after it and stops
     before it (stop a running registry first, so nothing writes beneath the mount):
       systemctl stop docker-registry
       systemctl enable --now regfs
       systemctl start docker-registry
  4. Collect garbage on demand, and see the state and past runs:
       systemctl kill -s SIGUSR1 --kill-whom=main regfs
       regfs status /var/lib/docker-registry
       regfs jobs /var/lib/docker-registry
EOF
