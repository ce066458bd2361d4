#!/usr/bin/env bash
# Installs, on Debian, what regfs's demo and tests use and the machine lacks:
# fuse3, docker-registry, skopeo, python3, systemd-analyze (and util-linux setpriv, mount),
# redis-server and redis-cli (the registry's redis cache), htpasswd (the registry's auth),
# chromium, curl and openssl (the GC page in a headless browser, its API, TLS),
# etcd (cluster mode's coordination, tests/cluster), promtool (Debian's prometheus
# package, without its recommends: the alerting rules in contrib/, tests/contrib.rs), and
# cargo-deb (the Debian package, scripts/package.sh, tests/package.rs).
# Idempotent; run as root. Used by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
declare -A wanted=(
  [fusermount3]=fuse3
  [umount]=mount
  [setpriv]=util-linux
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [python3]=python3
  [systemd-analyze]=systemd
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [htpasswd]=apache2-utils
  [chromium]=chromium
  [curl]=curl
  [openssl]=openssl
  [etcd]=etcd-server
)
missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${wanted[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# promtool alone: the prometheus package without the node exporter it recommends
# (about 20 MB, 16 s here). The server it ships is not wanted: where systemd runs, its
# postinst starts it, so it is stopped and disabled again.
if ! command -v promtool >/dev/null 2>&1; then
  echo "install-deps.sh: installing prometheus (for promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ -d /run/systemd/system ]; then
    systemctl disable --now --quiet prometheus.service 2>/dev/null || true
  fi
fi
# cargo-deb builds the Debian package (crates.io; a few minutes to compile, once).
if ! command -v cargo-deb >/dev/null 2>&1 && command -v cargo >/dev/null 2>&1; then
  echo "install-deps.sh: installing cargo-deb (cargo install cargo-deb --locked)"
  cargo install cargo-deb --locked --quiet
fi
if [ ! -c /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
fi
