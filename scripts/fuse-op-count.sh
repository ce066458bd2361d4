#!/usr/bin/env bash
# FUSE requests a push costs: Debian's docker-registry on a regfs mount, one skopeo push
# of an image of many small layers, and the deltas of regfs's request counters
# (`regfs_fuse_operations_total`, `regfs_fuse_errors_total` at /metrics) across it,
# per operation, in total and per blob stored. Request counts of one push are
# deterministic (the same image, the same registry, a fresh store), so they compare
# changes of the mount while the machine is busy, where wall times cannot.
#
#   sudo scripts/fuse-op-count.sh
#   sudo LAYERS=200 REGFS_ARGS="--threads 4" scripts/fuse-op-count.sh
#
# Setup, in a scratch directory under BENCH_DIR (removed on exit): a backing directory
# served by `regfs mount --http-listen 127.0.0.1:PORT` (its state dir in the scratch
# directory), docker-registry (as the docker-registry user, log level warn, blob
# descriptor cache inmemory as Debian ships it) on the mount, and skopeo as nobody
# with a private HOME/TMPDIR. The image: `scripts/oci-images.py --many-layers LAYERS`
# (LAYERS layers + a config + the manifest = LAYERS + 2 blobs). The counters are read
# right before the push and once the push has returned, after a `sync` and a settle
# pause (releases and forgets the kernel sends late land in the count).
#
# Output: a table (op, requests, per blob, errors by errno) on stdout, and how many fsync
# requests were answered without syncing the backing file (`regfs_fsyncs_answered_total`);
# and the daemon's CPU time over the push (user + system, from /proc, in clock ticks: a
# guide, not a count); with JSON=1 one JSON object instead ({"blobs": N, "total": N,
# "fsyncs_answered": N, "daemon_cpu_ms": N, "ops": {op: {"count": N, "errors": {errno: N}}}}).
#
# Environment:
#   REGFS_BIN   the regfs binary (default: target/debug/regfs of this checkout, built
#               with `cargo build` if missing; request counts do not depend on the profile)
#   REGFS_ARGS  extra options for `regfs mount` (word-split)
#   LAYERS      layers of the pushed image (default 100)
#   BENCH_DIR   where the scratch directory goes (default /var/tmp)
#   SETTLE      seconds to wait after the push before reading the counters (default 2)
#   JSON        1: print JSON instead of the table
#   KEEP_SCRATCH=1  keep the scratch directory (logs, store)
set -euo pipefail
export LC_ALL=C
umask 022

LAYERS=${LAYERS:-100}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
SETTLE=${SETTLE:-2}
JSON=${JSON:-0}
REG_USER=docker-registry
SK_USER=nobody

BENCH_NAME=fuse-op-count
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"

[[ $LAYERS =~ ^[1-9][0-9]*$ ]] || die "LAYERS must be a positive integer (got '$LAYERS')"
[[ $SETTLE =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "SETTLE must be a number of seconds (got '$SETTLE')"
[[ $EUID -eq 0 ]] || die "must run as root (mounting, setpriv)"
[[ -c /dev/fuse ]] || die "/dev/fuse missing; load the module with 'modprobe fuse'"
[[ -d $BENCH_DIR ]] || die "BENCH_DIR $BENCH_DIR is not a directory"
for cmd in docker-registry skopeo python3 setpriv curl; do
    command -v "$cmd" >/dev/null || die "$cmd is missing (scripts/install-deps.sh installs it)"
done
extra_args=()
if [[ -n ${REGFS_ARGS:-} ]]; then
    read -r -a extra_args <<<"$REGFS_ARGS"
fi
if [[ -n ${REGFS_BIN:-} ]]; then
    REGFS=$REGFS_BIN
else
    REGFS=${CARGO_TARGET_DIR:-$ROOT/target}/debug/regfs
    [[ -x $REGFS ]] || cargo build --manifest-path "$ROOT/Cargo.toml" >&2
fi
[[ -x $REGFS ]] || die "$REGFS is not executable"

SCRATCH= RFS_PID= REG_PID= CHILD=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [[ -n $CHILD ]] && stop_pid "$CHILD" 5
    [[ -n $REG_PID ]] && stop_pid "$REG_PID" 10
    [[ -n $RFS_PID ]] && stop_pid "$RFS_PID" 15 # SIGTERM makes regfs unmount
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then
        if is_mounted "$SCRATCH/mnt"; then
            umount "$SCRATCH/mnt" 2>/dev/null || umount -l "$SCRATCH/mnt"
        fi
        if [[ ${KEEP_SCRATCH:-0} == 1 ]]; then
            echo "$BENCH_NAME: kept $SCRATCH" >&2
        else
            rm -rf --one-file-system "$SCRATCH"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run_child() { # OUT CMD...: CMD in the background, waited for (so traps can stop it)
    local rc=0 out=$1
    shift
    "$@" </dev/null >"$out" 2>&1 &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=
    return "$rc"
}
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
http_status() { curl -s -o /dev/null -w '%{http_code}' --noproxy '*' --max-time 5 "$1" || true; }

SCRATCH=$(mktemp -d "$BENCH_DIR/regfs-fuse-op-count.XXXXXX")
chmod 755 "$SCRATCH"
mkdir -p "$SCRATCH/backing" "$SCRATCH/mnt" "$SCRATCH/state"
chown "$REG_USER:$REG_USER" "$SCRATCH/backing"

log "image: $LAYERS small layers"
run_child "$SCRATCH/images.json" python3 "$ROOT/scripts/oci-images.py" "$SCRATCH/oci" \
    --many-layers "$LAYERS" --seed fuse-op-count --json ||
    { cat "$SCRATCH/images.json" >&2; die "oci-images.py failed"; }
blobs=$((LAYERS + 2))

metrics_port=$(free_port)
log "mounting regfs ($REGFS) with --http-listen 127.0.0.1:$metrics_port"
"$REGFS" mount "${extra_args[@]}" --state-dir "$SCRATCH/state" \
    --http-listen "127.0.0.1:$metrics_port" "$SCRATCH/backing" "$SCRATCH/mnt" \
    >>"$SCRATCH/regfs.log" 2>&1 &
RFS_PID=$!
for ((i = 0; i < 300; i++)); do
    is_mounted "$SCRATCH/mnt" && [[ $(http_status "http://127.0.0.1:$metrics_port/metrics") == 200 ]] && break
    alive "$RFS_PID" || { cat "$SCRATCH/regfs.log" >&2; die "regfs exited"; }
    sleep 0.1
done
is_mounted "$SCRATCH/mnt" || { cat "$SCRATCH/regfs.log" >&2; die "regfs did not mount within 30 s"; }
grep -q 'kernel read passthrough: on' "$SCRATCH/regfs.log" || note "WARNING: passthrough not reported on"

port=$(free_port)
cat >"$SCRATCH/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $SCRATCH/mnt
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
  redirect:
    disable: true
http:
  addr: 127.0.0.1:$port
  secret: regfs-fuse-op-count-not-a-secret
EOF
chmod 644 "$SCRATCH/registry.yml"
setpriv --reuid="$REG_USER" --regid="$REG_USER" --clear-groups \
    docker-registry serve "$SCRATCH/registry.yml" </dev/null >>"$SCRATCH/registry.log" 2>&1 &
REG_PID=$!
for ((i = 0; i < 150; i++)); do
    [[ $(http_status "http://127.0.0.1:$port/v2/") == 200 ]] && break
    alive "$REG_PID" || { cat "$SCRATCH/registry.log" >&2; die "docker-registry exited"; }
    sleep 0.1
done
[[ $(http_status "http://127.0.0.1:$port/v2/") == 200 ]] || die "docker-registry did not start"

SK=$SCRATCH/skopeo
mkdir -p "$SK/home" "$SK/tmp" "$SK/run"
echo 'unqualified-search-registries = []' >"$SK/registries.conf"
chmod 700 "$SK/run"
chown -R "$SK_USER" "$SK"

snapshot() { # OUT: the counters now
    curl -s --noproxy '*' --max-time 10 "http://127.0.0.1:$metrics_port/metrics" |
        grep -E '^regfs_(fuse_(operations|errors)|fsyncs_answered)_total' >"$1" || true
}
cpu_ticks() { # the daemon's user + system CPU time so far, in clock ticks
    sed 's/.*) //' "/proc/$RFS_PID/stat" | awk '{ print $12 + $13 }'
}
snapshot "$SCRATCH/before"
cpu0=$(cpu_ticks)
log "pushing (skopeo copy, $blobs blobs)"
run_child "$SCRATCH/push.out" setpriv --reuid="$SK_USER" --regid="$(id -g "$SK_USER")" --clear-groups \
    env -i PATH="$PATH" HOME="$SK/home" TMPDIR="$SK/tmp" XDG_RUNTIME_DIR="$SK/run" \
    CONTAINERS_REGISTRIES_CONF="$SK/registries.conf" NO_PROXY='*' \
    skopeo --insecure-policy --tmpdir "$SK/tmp" copy --preserve-digests \
    --dest-tls-verify=false --dest-no-creds \
    "oci:$SCRATCH/oci:many" "docker://127.0.0.1:$port/count/many:1" ||
    { cat "$SCRATCH/push.out" >&2; die "push failed"; }
sync
sleep "$SETTLE"
snapshot "$SCRATCH/after"
cpu_ms=$((($(cpu_ticks) - cpu0) * 1000 / $(getconf CLK_TCK)))

python3 - "$SCRATCH/before" "$SCRATCH/after" "$blobs" "$JSON" "$cpu_ms" <<'EOF'
import json, re, sys
def read(path):
    ops, errs = {}, {}
    for line in open(path):
        if line.startswith("regfs_fsyncs_answered_total "):
            ops["fsync answered without syncing"] = float(line.split()[1])
            continue
        m = re.match(r'(regfs_fuse_\w+)_total\{([^}]*)\}\s+(\S+)', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        v = float(m.group(3))
        if m.group(1) == "regfs_fuse_operations":
            ops[labels["op"]] = v
        else:
            errs[(labels["op"], labels["errno"])] = v
    return ops, errs
(o0, e0), (o1, e1) = read(sys.argv[1]), read(sys.argv[2])
blobs, as_json, cpu_ms = int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
ops = {}
for op in o1:
    n = int(o1[op] - o0.get(op, 0))
    if n:
        ops[op] = {"count": n, "errors": {}}
for (op, errno), v in e1.items():
    n = int(v - e0.get((op, errno), 0))
    if n:
        ops.setdefault(op, {"count": 0, "errors": {}})["errors"][errno] = n
answered = ops.pop("fsync answered without syncing", {"count": 0})["count"]
total = sum(o["count"] for o in ops.values())
if as_json:
    print(json.dumps({"blobs": blobs, "total": total, "ops": ops,
                      "fsyncs_answered": answered, "daemon_cpu_ms": cpu_ms}, sort_keys=True))
    sys.exit()
print(f"{'op':<12} {'requests':>9} {'per blob':>9}  errors (errno: count)")
for op, o in sorted(ops.items(), key=lambda kv: -kv[1]["count"]):
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(o["errors"].items()))
    print(f"{op:<12} {o['count']:>9} {o['count'] / blobs:>9.1f}  {errs}")
print(f"{'total':<12} {total:>9} {total / blobs:>9.1f}  ({blobs} blobs)")
print(f"fsync requests answered without syncing the backing file: {answered}"
      f" ({answered / blobs:.1f} per blob)")
print(f"daemon CPU (user + system): {cpu_ms} ms, {cpu_ms * 1000 / max(total, 1):.0f} us per request")
EOF
