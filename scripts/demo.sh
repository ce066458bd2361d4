#!/usr/bin/env bash
# Quick start: regfs under a real registry, end to end, offline, in under a minute.
#
# Builds regfs, mounts a demo store, starts Debian's docker-registry on the mount (as its
# own user, on 127.0.0.1), pushes sample images with skopeo, moves a tag and deletes a
# manifest, then runs a GC epoch (SIGUSR1): pushes are refused while it runs, pulls keep
# working. Shows `regfs status`, the job record (`regfs jobs`) and the space freed.
#
# Usage: sudo scripts/demo.sh [DIR]
#   DIR (empty or missing) is kept afterwards with the store and the logs; without it a
#   temporary directory is used and removed. Installs docker-registry, skopeo and python3
#   when missing (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

die() { echo "demo.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (regfs mounts a filesystem): sudo $0 $*"
bash "$ROOT/scripts/install-deps.sh"
for cmd in docker-registry skopeo python3 setpriv; do
  command -v "$cmd" >/dev/null || die "$cmd is missing (apt-get install -y docker-registry skopeo python3)"
done
[ -e /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"
REG_USER=docker-registry
id "$REG_USER" >/dev/null 2>&1 || die "user $REG_USER is missing (it comes with the docker-registry package)"

if [ -n "${1:-}" ]; then
  WORK=$(realpath -m "$1"); KEEP=1
  [ ! -e "$WORK" ] || [ -z "$(ls -A "$WORK")" ] || die "$WORK is not empty"
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d /tmp/regfs-demo.XXXXXX); KEEP=
fi
chmod 755 "$WORK"
STORE=$WORK/store MNT=$WORK/mnt STATE=$WORK/state OCI=$WORK/oci SK=$WORK/skopeo
RFS_PID= REG_PID=

cleanup() {
  set +e
  exec 9>&- 2>/dev/null
  if [ -n "$REG_PID" ]; then kill "$REG_PID" 2>/dev/null; wait "$REG_PID" 2>/dev/null; fi
  if [ -n "$RFS_PID" ]; then
    kill -TERM "$RFS_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$RFS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$RFS_PID" 2>/dev/null
    wait "$RFS_PID" 2>/dev/null
  fi
  if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" 2>/dev/null || umount -l "$MNT"; fi
  if [ -n "$KEEP" ]; then echo "kept $WORK (store, logs)"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'echo; echo "interrupted"; exit 130' INT TERM

# --- output helpers
B= N=
if [ -t 1 ]; then B=$(tput bold 2>/dev/null || true) N=$(tput sgr0 2>/dev/null || true); fi
step() { printf '\n%s== %s%s\n' "$B" "$*" "$N"; }
note() { printf '   %s\n' "$@"; }
# show CMD...: prints the command, then its output indented; returns its status.
show() {
  printf '   $ %s\n' "$*"
  local rc=0
  "$@" > "$WORK/out" 2>&1 || rc=$?
  sed 's/^/     /' "$WORK/out"
  return $rc
}

REGFS=$ROOT/target/release/regfs
regfs() { "$REGFS" "$@" 9>&-; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
api() { # api METHOD PATH: the HTTP status of a request to the registry
  python3 - "$1" "http://127.0.0.1:$PORT$2" <<'EOF'
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[2], method=sys.argv[1], headers={"Accept": ", ".join([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"])})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(opener.open(req, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
EOF
}
# skopeo as nobody, with a private HOME (its blob-info cache lands there, not in
# /var/lib/containers), never holding the epoch holder's descriptor.
sk() {
  setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups \
    env -i PATH="$PATH" HOME="$SK/home" TMPDIR="$SK/tmp" XDG_RUNTIME_DIR="$SK/run" \
    XDG_DATA_HOME="$SK/home/.local/share" XDG_CONFIG_HOME="$SK/home/.config" \
    CONTAINERS_REGISTRIES_CONF="$SK/registries.conf" NO_PROXY='*' \
    skopeo --insecure-policy --command-timeout 60s "$@" 9>&-
}
push() { # push IMAGE REPO:TAG|REPO@DIGEST [--all]
  sk copy --quiet --preserve-digests --dest-tls-verify=false --dest-no-creds "${@:3}" \
    "oci:$OCI:$1" "docker://127.0.0.1:$PORT/$2"
}
pull() { # pull REF DEST [--all]
  sk copy --preserve-digests --src-tls-verify=false --src-no-creds "${@:3}" \
    "docker://127.0.0.1:$PORT/$1" "dir:$SK/pulls/$2"
}
digest() { python3 -c "import json,sys; print(next(e['digest'] for e in json.load(open(sys.argv[1]))['images'] if e['name']==sys.argv[2]))" "$WORK/images.json" "$1"; }
blobs_du() { du -sh "$STORE/docker/registry/v2/blobs" | cut -f1; }
blobs_bytes() { du -sb --apparent-size "$STORE/docker/registry/v2/blobs" | cut -f1; }

T0=$SECONDS
step "Build regfs (cargo build --release)"
cargo build --release --quiet
note "$REGFS"

# The registry configuration first: regfs reads its cache setting.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/registry.yml" <<EOF
version: 0.1
log: {level: info, formatter: text}
storage:
  cache: {blobdescriptor: inmemory}   # Debian's default; off through the drop-in's variable
  filesystem: {rootdirectory: $MNT}
  delete: {enabled: true}
  maintenance: {uploadpurging: {enabled: false}}
  redirect: {disable: true}
http: {addr: 127.0.0.1:$PORT, secret: regfs-demo}
EOF
chmod 644 "$WORK/registry.yml"

step "Mount a demo store: regfs mount STORE MNT (the registry will see MNT)"
mkdir -p "$STORE" "$MNT" "$SK"/{home,tmp,pulls}
chown "$REG_USER:$REG_USER" "$STORE"        # the registry owns its store
install -d -m 700 -o nobody "$SK/run"
chown -R nobody "$SK"
echo 'unqualified-search-registries = []' > "$SK/registries.conf"
# The GC page, its API and the metrics on loopback; the token lets the page change things.
HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PAGE="http://127.0.0.1:$HTTP_PORT/"
(umask 077; python3 -c 'import secrets; print(secrets.token_hex(16))' > "$WORK/api-token")
# --gc-min-age 0s: the demo collects what it deleted a moment ago (default: 1h).
"$REGFS" mount "$STORE" "$MNT" --state-dir "$STATE" --delete-untagged --drain-timeout 30 --gc-min-age 0s \
  --registry-config "$WORK/registry.yml" \
  --http-listen "127.0.0.1:$HTTP_PORT" --api-token-file "$WORK/api-token" \
  2> "$WORK/regfs.log" &
RFS_PID=$!
for _ in $(seq 200); do mountpoint -q "$MNT" && regfs status "$MNT" --state-dir "$STATE" >/dev/null 2>&1 && break; sleep 0.05; done
mountpoint -q "$MNT" || { cat "$WORK/regfs.log"; die "regfs did not mount"; }
note "regfs pid $RFS_PID: $STORE served at $MNT" \
     "GC settings: --delete-untagged (untagged manifests go; index children and" \
     "signatures of tagged images stay), --drain-timeout 30 s; log: $WORK/regfs.log" \
     "GC page: $PAGE (API under ${PAGE}api/v1/, metrics at ${PAGE}metrics)" \
     "  its admin token (sign-in on the page, or curl -H \"Authorization: Bearer ...\"): $(cat "$WORK/api-token")"

step "Start docker-registry on the mount, as user $REG_USER"
# As the shipped systemd drop-in runs it: the in-memory blob-descriptor cache off.
REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=none \
  setpriv --reuid="$REG_USER" --regid="$REG_USER" --clear-groups \
  docker-registry serve "$WORK/registry.yml" > "$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 200); do [ "$(api GET /v2/ 2>/dev/null)" = 200 ] && break; sleep 0.05; done
[ "$(api GET /v2/)" = 200 ] || { cat "$WORK/registry.log"; die "docker-registry did not start"; }
note "docker-registry pid $REG_PID on 127.0.0.1:$PORT, rootdirectory $MNT; log: $WORK/registry.log"

step "Generate sample images offline (scripts/oci-images.py --sample) and push them"
python3 scripts/oci-images.py "$OCI" --sample --big-mib 16 | sed 's/^/   /'
python3 scripts/oci-images.py "$OCI" --sample --big-mib 16 --json > "$WORK/images.json"
push base library/base:1
push app-v1 team/app/web:latest
push multi team/app/multi:1.0 --all
push multi-signature "team/app/multi@$(digest multi-signature)"
push big demo/big:1
note "pushed library/base:1, team/app/web:latest, team/app/multi:1.0 (2 platforms)," \
     "its signature (a referrer, by digest), demo/big:1 (16 MiB)"

step "Move a tag and delete a manifest by digest"
push app-v2 team/app/web:latest
note "team/app/web:latest now points at app-v2; app-v1 ($(digest app-v1 | cut -c1-19)) is untagged"
BIG=$(digest big)
note "DELETE /v2/demo/big/manifests/$BIG -> HTTP $(api DELETE "/v2/demo/big/manifests/$BIG")"
note "Deleting frees nothing yet: the blobs stay until a GC run."
BEFORE_DU=$(blobs_du) BEFORE_B=$(blobs_bytes)
note "blobs on disk: $BEFORE_DU ($BEFORE_B bytes)"

step "GC epoch: kill -USR1 $RFS_PID"
note "(A file kept open for writing through the mount holds the epoch in its 'closing'" \
     " state while this demo works, as a registry still writing a link file would.)"
exec 9> "$MNT/demo-epoch-holder"
kill -USR1 "$RFS_PID"
for _ in $(seq 100); do
  [ "$(regfs status "$MNT" --state-dir "$STATE" --json | json 'd["read_only"]')" = True ] && break; sleep 0.05
done
show regfs status "$MNT" --state-dir "$STATE"

step "A push during the epoch is refused"
if show push app-v1 team/app/web:v1; then die "the push succeeded during the epoch?!"; fi
note "the registry's log says why:"
grep -m1 -o 'err.detail="[^"]*read-only file system"' "$WORK/registry.log" | sed 's/^/     /'

step "A pull during the epoch works"
show pull team/app/web:latest during-epoch
note "manifest $(sha256sum "$SK/pulls/during-epoch/manifest.json" | cut -c1-12)... = app-v2 $(digest app-v2 | cut -c8-19)..." \
     "regfs status --json meanwhile: read_only $(regfs status "$MNT" --state-dir "$STATE" --json | json 'str(d["read_only"]).lower() + ", state " + d["state"]')"
exec 9>&-     # the writer finishes: the epoch marks and sweeps, then reopens the store
for _ in $(seq 200); do
  [ "$(regfs status "$MNT" --state-dir "$STATE" --json | json 'd["state"]')" = idle ] && break; sleep 0.05
done

step "After the epoch: regfs status and the job record (regfs jobs)"
show regfs status "$MNT" --state-dir "$STATE"
show regfs jobs "$MNT" --state-dir "$STATE"
regfs jobs "$MNT" --state-dir "$STATE" --json | python3 -c "$(cat <<'EOF'
import json, sys
j = json.load(sys.stdin)[-1]
r = j["report"]
print(f"     job {j['id']}: {j['outcome']}, trigger {j['trigger']}, "
      f"read-only {j['read_only_seconds']:.1f} s (of which drain {j['drain_seconds']:.1f} s)")
print(f"     {r['manifests_scanned']} manifests scanned, {r['manifests_removed']} removed; "
      f"{r['blobs_deleted']} blobs deleted, {r['bytes_freed']} bytes freed; "
      f"{r['layer_links_removed']} layer links removed")
EOF
)"

step "Space freed"
note "blobs on disk: $BEFORE_DU ($BEFORE_B bytes) before, $(blobs_du) ($(blobs_bytes) bytes) after"

step "What is left pulls whole; what was collected is gone"
show pull team/app/multi:1.0 multi --all --quiet && note "team/app/multi:1.0: index + 2 platforms pulled (skopeo checks every digest)"
show pull "team/app/multi@$(digest multi-signature)" sig --quiet && note "its signature pulled (kept: its subject is tagged)"
note "team/app/web@app-v1 (untagged): HTTP $(api GET "/v2/team/app/web/manifests/$(digest app-v1)")" \
     "demo/big@$(echo "$BIG" | cut -c1-19) (deleted): HTTP $(api GET "/v2/demo/big/manifests/$BIG")"
if show push app-v1 team/app/web:v1; then note "the push refused during the epoch works now"; fi

step "The GC page"
note "$PAGE shows the run just made (history, bytes freed, store size), the settings and" \
     "Save & start / Stop; token: $(cat "$WORK/api-token")"
if [ -t 0 ]; then
  read -r -p "   Open $PAGE in a browser on this machine; press Enter to stop the demo. " _ || true
fi

step "Done in $((SECONDS - T0)) s; stopping the registry and regfs, unmounting"
