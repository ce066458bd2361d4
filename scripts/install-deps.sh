#!/usr/bin/env bash
# Installs, on Debian, what regfs's demo and tests use and the machine lacks:
# fuse3, docker-registry, skopeo, python3, systemd-analyze (and util-linux setpriv, mount),
# redis-server and redis-cli (the registry's redis cache), htpasswd (the registry's auth),
# chromium, curl and openssl (the GC page in a headless browser, its API, TLS),
# etcd (cluster mode's coordination, tests/cluster).
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
if [ ! -c /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
fi
