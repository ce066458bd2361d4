#!/usr/bin/env bash
# Registry benchmark for regfs: docker-registry on a regfs mount vs. docker-registry on a
# plain directory, pushing and pulling the same images with skopeo, side by side; with
# CLUSTER=1 also on a node of a two-node regfs cluster (cluster mode against a node alone).
#
#   sudo scripts/bench-registry.sh
#   sudo CLUSTER=1 scripts/bench-registry.sh
#   sudo NO_ACCESS_TIMES=1 scripts/bench-registry.sh
#   sudo BEFORE_BIN=/tmp/regfs-before scripts/bench-registry.sh
#   sudo FLOOR=1 scripts/bench-registry.sh
#
# Setup, in a scratch directory on a real disk (never tmpfs):
#   * two stores: store-plain (a plain directory) and store-regfs (served by
#     `regfs mount` at mnt-regfs);
#   * with CLUSTER=1 a third store, store-cluster: a two-node regfs cluster over one
#     backing directory (backing-cluster), node bench-1 at mnt-cluster and node bench-2
#     at mnt-cluster-2, both members of one etcd started here (127.0.0.1, free ports,
#     its data in the scratch directory, lease TTL 10 s); the registry runs on node 1,
#     node 2 only holds its membership and its own kernel's view of the store (as an
#     idle replica would). `etcd` must be installed (apt-get install etcd-server);
#   * with NO_ACCESS_TIMES=1 one more, store-noat: regfs mounted with --no-access-times
#     (no access-recording layer in its policy chain), to measure what recording pushes
#     and pulls for retention costs (regfs/noat, goal within 2%: >= 0.98x);
#   * with BEFORE_BIN=PATH one more, store-before: regfs run by that binary (a build
#     from before a change), to measure one change side by side in one run: columns
#     before/plain and regfs/before (> 1: the change made regfs faster);
#   * with FLOOR=1 one more, store-fuse: bindfs (Debian's bindfs, a plain libfuse
#     passthrough with no policy, multithreaded, the kernel keeping entries, attributes
#     and absent names as long as regfs lets it) over its own backing directory: what
#     any FUSE passthrough costs the registry on this kernel and machine. Columns
#     fuse/plain (the floor a FUSE mount reaches) and regfs/fuse (what regfs adds);
#   * a registry per store (Debian's docker-registry, distribution 2.8), each as the
#     docker-registry user on a free 127.0.0.1 port, with the same configuration
#     apart from rootdirectory and port (log level warn; the blob-descriptor cache is
#     Debian's default, inmemory, unless REG_CACHE=none);
#   * skopeo runs as nobody with a private HOME/TMPDIR/XDG tree (its blob-info cache
#     stays in the scratch directory).
# Images (scripts/oci-images.py): `big` (BIG_MIB MiB of incompressible layers, 64 MiB at
# most per layer) and `many` (LAYERS small layers).
#
# Every push really uploads: each round r pushes its own variant of both images,
# generated beforehand with `--seed rR` (different content, so different digests for
# every layer, config and manifest), to a fresh tag (bench/big:rR, bench/many:rR). A
# registry therefore never holds a blob of round r before round r's push; this is
# checked on every push: skopeo must report copying every layer and skipping none.
#
# Each round, with the order of the targets rotated every round:
#   push  skopeo copy oci:LAYOUT:REF docker://127.0.0.1:PORT/bench/REF:rR
#   pull, warm   skopeo copy docker://... dir:FRESH_DIR (right after the pushes: the
#                store's data is still in the page cache)
#   pull, cold   the same after `sync; echo 3 > /proc/sys/vm/drop_caches` (COLD=0 skips)
# Untimed between runs: `sync` (so that write-back of one run does not land in the next),
# the source layout is read once before every push (so pushes read it from the cache),
# pulled copies are checked (manifest digest, blob count) and removed.
# Every run is timed with `date +%s.%N`; MiB/s = the image's bytes (every blob plus the
# manifest) / seconds; figures are medians over ROUNDS rounds. The table compares
# regfs/plain against the targets (pulls >= 0.9x, pushes >= 0.8x) and says PASS or
# BELOW; with CLUSTER=1 it adds cluster/regfs (a cluster node against a node alone,
# target >= 0.9x every case). Exit status 0 whenever every run completed (BELOW included); 1 on errors.
# Everything (registries, regfs, mounts, the scratch directory) is cleaned up on exit,
# Ctrl-C or SIGTERM.
#
# Environment:
#   REGFS_BIN   use this binary instead of building with `cargo build --release`
#   REGFS_ARGS  extra options for `regfs mount` (word-split), e.g. "--threads 4"
#   BENCH_DIR   where the scratch directory goes (default /var/tmp; must not be tmpfs;
#               it holds ROUNDS variants of the images, and both stores: about
#               3 x ROUNDS x BIG_MIB MiB)
#   ROUNDS      rounds, median taken (default 5)
#   BIG_MIB     size of the big image in MiB (default 200)
#   LAYERS      layers of the many-layers image (default 200)
#   COLD        1 (default) also times pulls after dropping the page cache; 0 skips them
#   REG_CACHE   the registry's storage.cache.blobdescriptor: inmemory (default) or none
#   CLUSTER     1: also a registry on a node of a two-node regfs cluster (needs etcd)
#   NO_ACCESS_TIMES  1: also a registry on regfs without access times (--no-access-times)
#   BEFORE_BIN  also a registry on regfs run by this binary (e.g. a build of the commit
#               before a change; REGFS_ARGS apply to it too)
#   FLOOR       1: also a registry on a bindfs mount (a bare FUSE passthrough; needs
#               bindfs, apt-get install -y bindfs)
#   KEEP_SCRATCH=1  keep the scratch directory (logs, stores, layouts) for inspection
#
# Needs root (mount, setpriv, /proc/sys/vm/drop_caches), /dev/fuse, docker-registry,
# skopeo, python3 (scripts/install-deps.sh installs them).
set -euo pipefail
export LC_ALL=C # decimal points in date/awk output
umask 022       # the layouts must be readable by nobody (skopeo)

ROUNDS=${ROUNDS:-5}
BIG_MIB=${BIG_MIB:-200}
LAYERS=${LAYERS:-200}
COLD=${COLD:-1}
REG_CACHE=${REG_CACHE:-inmemory}
CLUSTER=${CLUSTER:-0}
CLUSTER_TARGET=0.9
NO_ACCESS_TIMES=${NO_ACCESS_TIMES:-0}
BEFORE_BIN=${BEFORE_BIN:-}
FLOOR=${FLOOR:-0}
ACCESS_TARGET=0.98
BENCH_DIR=${BENCH_DIR:-/var/tmp}
PULL_TARGET=0.9
PUSH_TARGET=0.8
REG_USER=docker-registry
SK_USER=nobody
SK_TIMEOUT=900s # skopeo --command-timeout: generous, the machine may be busy

BENCH_NAME=bench-registry
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"

for v in ROUNDS BIG_MIB LAYERS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $COLD == 0 || $COLD == 1 ]] || die "COLD must be 0 or 1 (got '$COLD')"
[[ $REG_CACHE == inmemory || $REG_CACHE == none ]] || die "REG_CACHE must be inmemory or none"
[[ $CLUSTER == 0 || $CLUSTER == 1 ]] || die "CLUSTER must be 0 or 1 (got '$CLUSTER')"
[[ $NO_ACCESS_TIMES == 0 || $NO_ACCESS_TIMES == 1 ]] || die "NO_ACCESS_TIMES must be 0 or 1 (got '$NO_ACCESS_TIMES')"
[[ -z $BEFORE_BIN || -x $BEFORE_BIN ]] || die "BEFORE_BIN=$BEFORE_BIN is not executable"
[[ $FLOOR == 0 || $FLOOR == 1 ]] || die "FLOOR must be 0 or 1 (got '$FLOOR')"
[[ $EUID -eq 0 ]] || die "must run as root (mounting, setpriv, dropping caches)"
[[ -c /dev/fuse ]] || die "/dev/fuse missing; load the module with 'modprobe fuse'"
if ((COLD)); then
    [[ -w /proc/sys/vm/drop_caches ]] || die "/proc/sys/vm/drop_caches is not writable (COLD=0 skips cold pulls)"
fi
[[ -d $BENCH_DIR ]] || die "BENCH_DIR $BENCH_DIR is not a directory"
[[ $BENCH_DIR != *[[:space:]]* ]] || die "BENCH_DIR must not contain whitespace"
extra_args=()
if [[ -n ${REGFS_ARGS:-} ]]; then
    read -r -a extra_args <<<"$REGFS_ARGS"
fi

if ! command -v docker-registry >/dev/null || ! command -v skopeo >/dev/null; then
    bash "$ROOT/scripts/install-deps.sh" >&2
fi
for cmd in docker-registry skopeo python3 setpriv sync mountpoint; do
    command -v "$cmd" >/dev/null || die "$cmd is missing (scripts/install-deps.sh installs it)"
done
if ((CLUSTER)); then
    command -v etcd >/dev/null || die "CLUSTER=1 needs etcd (apt-get install -y etcd-server)"
fi
TARGETS=(plain regfs)
((CLUSTER)) && TARGETS+=(cluster)
((NO_ACCESS_TIMES)) && TARGETS+=(noat)
[[ -n $BEFORE_BIN ]] && TARGETS+=(before)
((FLOOR)) && TARGETS+=(fuse)
id "$REG_USER" >/dev/null 2>&1 || die "user $REG_USER is missing (it comes with the docker-registry package)"
id "$SK_USER" >/dev/null 2>&1 || die "user $SK_USER is missing"

find_regfs

# ---------------------------------------------------------------------------------
# Scratch directory, processes and cleanup.

SCRATCH=
declare -A RFS_PID=() # mount point -> its regfs mount daemon
ETCD_PID= # the cluster's etcd (CLUSTER=1)
CHILD=    # the skopeo (or other) child being waited for
TOOK=     # seconds of the last push or pull
declare -A REG_PID=() PORT=() STORE=()



cleanup() {
    local rc=$? name
    trap - EXIT INT TERM
    set +e
    if [[ -n $CHILD ]]; then
        stop_pid "$CHILD" 5
        CHILD=
    fi
    for name in "${!REG_PID[@]}"; do
        stop_pid "${REG_PID[$name]}" 10
        unset "REG_PID[$name]"
    done
    for name in "${!RFS_PID[@]}"; do
        stop_pid "${RFS_PID[$name]}" 15 # SIGTERM makes regfs unmount
        if is_mounted "$name"; then
            umount "$name" 2>/dev/null || umount -l "$name"
        fi
        unset "RFS_PID[$name]"
    done
    if [[ -n $ETCD_PID ]]; then
        stop_pid "$ETCD_PID" 10
        ETCD_PID=
    fi
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then
        for name in "$SCRATCH"/mnt-*; do
            if is_mounted "$name"; then
                umount "$name" 2>/dev/null || umount -l "$name"
            fi
        done
        if [[ ${KEEP_SCRATCH:-0} == 1 ]]; then
            echo "bench-registry: kept $SCRATCH (logs, stores, layouts)" >&2
        else
            # --one-file-system: never reach through a mount that somehow survived.
            rm -rf --one-file-system "$SCRATCH"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench-registry: interrupted; cleaning up" >&2; exit 130' INT
trap 'echo "bench-registry: terminated; cleaning up" >&2; exit 143' TERM

# run_child OUT CMD...: runs CMD in the background (stdin /dev/null, stdout and stderr to
# the file OUT) and waits for it, so that INT/TERM reach the traps at once and cleanup can
# stop CMD by its pid. Returns CMD's status. (The redirections are CMD's alone: the
# shell's own stderr stays the terminal for the traps' messages.)
run_child() {
    local rc=0 out=$1
    shift
    "$@" </dev/null >"$out" 2>&1 &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=
    return "$rc"
}

SCRATCH=$(mktemp -d "$BENCH_DIR/regfs-bench-registry.XXXXXX")
chmod 755 "$SCRATCH" # the registry's user and skopeo's user traverse it
read -r fs_dev fs_type fs_mnt < <(df -PT "$SCRATCH" | awk 'NR == 2 { print $1, $2, $7 }')
case $fs_type in
tmpfs | ramfs | devtmpfs)
    die "$SCRATCH is on $fs_type; cold pulls would be meaningless. Set BENCH_DIR to a disk" ;;
esac
fs_opts=$(awk -v m="$fs_mnt" '$2 == m { o = $4 } END { print o }' /proc/mounts)
log "scratch dir $SCRATCH: $fs_type on $fs_dev (mounted at $fs_mnt, $fs_opts)"

started=$(date +%s.%N)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------
# Images: one layout per round, each with its own variant of big and many.

declare -A BYTES=() DIGEST=() NLAYERS=()
log "generating $ROUNDS variants of big ($BIG_MIB MiB) and many ($LAYERS layers)"
for ((r = 1; r <= ROUNDS; r++)); do
    oci=$SCRATCH/oci/r$r
    run_child "$SCRATCH/images-r$r.json" python3 "$ROOT/scripts/oci-images.py" "$oci" \
        --big-mib "$BIG_MIB" --many-layers "$LAYERS" --seed "bench-registry-r$r" --json ||
        { cat "$SCRATCH/images-r$r.json" >&2; die "oci-images.py failed for round $r"; }
    # name, digest, bytes (every blob + the manifest), layer count
    while read -r name digest bytes nl; do
        DIGEST[$name/$r]=$digest
        BYTES[$name/$r]=$bytes
        NLAYERS[$name/$r]=$nl
    done < <(python3 -c '
import json, sys
for e in json.load(open(sys.argv[1]))["images"]:
    print(e["name"], e["digest"], e["bytes"] + e["size"], len(e["layers"]))
' "$SCRATCH/images-r$r.json")
    [[ -n ${DIGEST[big/$r]:-} && -n ${DIGEST[many/$r]:-} ]] || die "round $r: images missing from the layout"
done
# Every variant must be new: no blob shared between rounds or images.
python3 - "$SCRATCH"/images-r*.json <<'EOF' || die "image variants share blobs; pushes would skip them"
import json, sys
seen = {}
for path in sys.argv[1:]:
    for e in json.load(open(path))["images"]:
        for b in e["blobs"] + [e["digest"]]:
            if b in seen:
                sys.exit(f"{b} in {seen[b]} and {path}:{e['name']}")
            seen[b] = f"{path}:{e['name']}"
EOF
note "big: ${NLAYERS[big/1]} layers, ${BYTES[big/1]} bytes; many: ${NLAYERS[many/1]} layers, ${BYTES[many/1]} bytes (per variant)"

# ---------------------------------------------------------------------------------
# Stores, regfs, registries, skopeo's private world.

STORE[plain]=$SCRATCH/store-plain
STORE[regfs]=$SCRATCH/mnt-regfs
mkdir -p "$SCRATCH/store-plain" "$SCRATCH/backing-regfs" "$SCRATCH/mnt-regfs" "$SCRATCH/state"
chown "$REG_USER:$REG_USER" "$SCRATCH/store-plain" "$SCRATCH/backing-regfs"

# mount_regfs BACKING MNT LOG ARGS...: `regfs mount` of BACKING at MNT (its log in LOG),
# started in the background; returns once mounted. Sets passthrough from its log. The
# binary is $MOUNT_BIN when set, else $REGFS.
mount_regfs() {
    local backing=$1 mnt=$2 logf=$3 i pid bin=${MOUNT_BIN:-$REGFS}
    shift 3
    log "mounting regfs ($bin): $backing at $mnt"
    "$bin" mount "${extra_args[@]}" "$@" "$backing" "$mnt" >>"$logf" 2>&1 &
    pid=$!
    RFS_PID[$mnt]=$pid
    for ((i = 0; i < 300; i++)); do
        is_mounted "$mnt" && break
        alive "$pid" || { cat "$logf" >&2; die "regfs exited before mounting $mnt"; }
        sleep 0.1
    done
    is_mounted "$mnt" || { cat "$logf" >&2; die "regfs did not mount $mnt within 30 s"; }
    if grep -q 'kernel read passthrough: on' "$logf"; then
        passthrough=on
    else
        passthrough="NOT reported on"
        note "WARNING: regfs did not report 'kernel read passthrough: on' (kernel $(uname -r)):"
        sed 's/^/     /' "$logf" >&2
    fi
    note "regfs pid $pid at $mnt, kernel read passthrough: $passthrough"
}

mount_regfs "$SCRATCH/backing-regfs" "$SCRATCH/mnt-regfs" "$SCRATCH/regfs.log" \
    --state-dir "$SCRATCH/state"
if ((NO_ACCESS_TIMES)); then
    STORE[noat]=$SCRATCH/mnt-noat
    mkdir -p "$SCRATCH/backing-noat" "$SCRATCH/mnt-noat" "$SCRATCH/state-noat"
    chown "$REG_USER:$REG_USER" "$SCRATCH/backing-noat"
    mount_regfs "$SCRATCH/backing-noat" "$SCRATCH/mnt-noat" "$SCRATCH/regfs-noat.log" \
        --state-dir "$SCRATCH/state-noat" --no-access-times
fi
if [[ -n $BEFORE_BIN ]]; then
    STORE[before]=$SCRATCH/mnt-before
    mkdir -p "$SCRATCH/backing-before" "$SCRATCH/mnt-before" "$SCRATCH/state-before"
    chown "$REG_USER:$REG_USER" "$SCRATCH/backing-before"
    MOUNT_BIN=$BEFORE_BIN mount_regfs "$SCRATCH/backing-before" "$SCRATCH/mnt-before" \
        "$SCRATCH/regfs-before.log" --state-dir "$SCRATCH/state-before"
fi
if ((FLOOR)); then
    STORE[fuse]=$SCRATCH/mnt-fuse
    mkdir -p "$SCRATCH/backing-fuse" "$SCRATCH/mnt-fuse"
    chown "$REG_USER:$REG_USER" "$SCRATCH/backing-fuse"
    mount_floor "$SCRATCH/backing-fuse" "$SCRATCH/mnt-fuse" "$SCRATCH/bindfs.log"
    RFS_PID[$SCRATCH/mnt-fuse]=$FLOOR_PID
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

if ((CLUSTER)); then
    STORE[cluster]=$SCRATCH/mnt-cluster
    mkdir -p "$SCRATCH/backing-cluster" "$SCRATCH/mnt-cluster" "$SCRATCH/mnt-cluster-2" \
        "$SCRATCH/state-cluster" "$SCRATCH/state-cluster-2"
    chown "$REG_USER:$REG_USER" "$SCRATCH/backing-cluster"
    etcd_client=$(free_port)
    etcd_peer=$(free_port)
    log "starting etcd on 127.0.0.1:$etcd_client"
    etcd --name bench --data-dir "$SCRATCH/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_client" \
        --advertise-client-urls "http://127.0.0.1:$etcd_client" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-cluster "bench=http://127.0.0.1:$etcd_peer" \
        </dev/null >>"$SCRATCH/etcd.log" 2>&1 &
    ETCD_PID=$!
    for ((i = 0; i < 200; i++)); do
        curl -s --noproxy '*' --max-time 2 "http://127.0.0.1:$etcd_client/health" | grep -q '"health":"true"' && break
        alive "$ETCD_PID" || { cat "$SCRATCH/etcd.log" >&2; die "etcd exited"; }
        sleep 0.1
    done
    note "etcd pid $ETCD_PID on 127.0.0.1:$etcd_client"
    for n in 1 2; do
        suffix=
        ((n == 1)) || suffix=-$n
        mount_regfs "$SCRATCH/backing-cluster" "$SCRATCH/mnt-cluster$suffix" \
            "$SCRATCH/regfs-cluster$suffix.log" --state-dir "$SCRATCH/state-cluster$suffix" \
            --cluster-endpoints "http://127.0.0.1:$etcd_client" --cluster-node "bench-$n" \
            --cluster-lease-ttl 10s
    done
    # A member mounts closed and opens once it has joined: wait until it takes writes.
    for mnt in "$SCRATCH/mnt-cluster" "$SCRATCH/mnt-cluster-2"; do
        for ((i = 0; i < 300; i++)); do
            if : 2>/dev/null >"$mnt/.bench-probe"; then
                rm -f "$mnt/.bench-probe"
                break
            fi
            sleep 0.1
        done
        ((i < 300)) || die "cluster node at $mnt did not open for writes within 30 s"
    done
fi

http_status() { # URL: the HTTP status code, 000 when nothing answers
    curl -s -o /dev/null -w '%{http_code}' --noproxy '*' --max-time 5 "$1" || true
}

# start_registry NAME: docker-registry on STORE[NAME], as REG_USER, on a free port.
start_registry() {
    local name=$1 attempt port cfg logf=$SCRATCH/registry-$1.log i cache=
    if [[ $REG_CACHE == inmemory ]]; then
        cache=$'  cache:\n    blobdescriptor: inmemory\n'
    fi
    for ((attempt = 0; attempt < 4; attempt++)); do
        port=$(free_port)
        cfg=$SCRATCH/registry-$name.yml
        cat >"$cfg" <<EOF
version: 0.1
log:
  level: warn
  formatter: text
  fields:
    service: registry
storage:
${cache}  filesystem:
    rootdirectory: ${STORE[$name]}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
  redirect:
    disable: true
http:
  addr: 127.0.0.1:$port
  secret: regfs-bench-not-a-secret
EOF
        chmod 644 "$cfg"
        setpriv --reuid="$REG_USER" --regid="$REG_USER" --clear-groups \
            docker-registry serve "$cfg" </dev/null >>"$logf" 2>&1 &
        REG_PID[$name]=$!
        for ((i = 0; i < 150; i++)); do
            if [[ $(http_status "http://127.0.0.1:$port/v2/") == 200 ]]; then
                PORT[$name]=$port
                note "registry $name: pid ${REG_PID[$name]} on 127.0.0.1:$port, rootdirectory ${STORE[$name]}"
                return 0
            fi
            alive "${REG_PID[$name]}" || break
            sleep 0.1
        done
        stop_pid "${REG_PID[$name]}" 5
        unset "REG_PID[$name]"
        grep -q 'address already in use' "$logf" || break
    done
    cat "$logf" >&2
    die "docker-registry ($name) did not start"
}
log "starting the registries as $REG_USER"
for t in "${TARGETS[@]}"; do
    start_registry "$t"
done

SK=$SCRATCH/skopeo
mkdir -p "$SK/home/.config" "$SK/home/.local/share" "$SK/home/.cache" "$SK/tmp" "$SK/run" "$SCRATCH/pulls"
echo 'unqualified-search-registries = []' >"$SK/registries.conf"
chmod 700 "$SK/run"
chown -R "$SK_USER" "$SK" "$SCRATCH/pulls"
# skopeo as nobody, with a private HOME (its blob-info cache lands there).
sk() {
    setpriv --reuid="$SK_USER" --regid="$(id -g "$SK_USER")" --clear-groups \
        env -i PATH="$PATH" HOME="$SK/home" TMPDIR="$SK/tmp" XDG_RUNTIME_DIR="$SK/run" \
        XDG_CONFIG_HOME="$SK/home/.config" XDG_DATA_HOME="$SK/home/.local/share" \
        XDG_CACHE_HOME="$SK/home/.cache" REGISTRY_AUTH_FILE="$SK/home/auth.json" \
        CONTAINERS_REGISTRIES_CONF="$SK/registries.conf" NO_PROXY='*' \
        skopeo --insecure-policy --command-timeout "$SK_TIMEOUT" --tmpdir "$SK/tmp" "$@"
}


# secs T0 T1
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
mibs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.6f", b / 1048576 / s }'; }

# push TARGET IMAGE ROUND: sets TOOK to the seconds taken. Dies unless skopeo copied
# every layer and skipped none. (No $(...) around push and pull: skopeo must be a child
# of the main shell, for the traps and cleanup.)
push() {
    local t=$1 img=$2 r=$3 out=$SCRATCH/push.out t0 t1 copied skipped
    cat "$SCRATCH/oci/r$r"/blobs/sha256/* >/dev/null # the source, from the page cache
    sync
    t0=$(date +%s.%N)
    run_child "$out" sk copy --preserve-digests --dest-tls-verify=false --dest-no-creds \
        "oci:$SCRATCH/oci/r$r:$img" "docker://127.0.0.1:${PORT[$t]}/bench/$img:r$r" ||
        { cat "$out" >&2; die "push of $img r$r to $t failed"; }
    t1=$(date +%s.%N)
    copied=$(grep -c '^Copying blob' "$out" || true)
    skipped=$(grep -ci 'skipped' "$out" || true)
    if ((skipped > 0 || copied != NLAYERS[$img/$r])); then
        cat "$out" >&2
        die "push of $img r$r to $t: $copied of ${NLAYERS[$img/$r]} layers copied, $skipped skipped"
    fi
    TOOK=$(secs "$t0" "$t1")
}

# pull TARGET IMAGE ROUND warm|cold: sets TOOK to the seconds taken; checks and removes the copy.
pull() {
    local t=$1 img=$2 r=$3 temp=$4 dest=$SCRATCH/pulls/$1-$2-r$3-$4 out=$SCRATCH/pull.out
    local t0 t1 got nfiles
    sync
    [[ $temp == cold ]] && drop_caches
    t0=$(date +%s.%N)
    run_child "$out" sk copy --src-tls-verify=false --src-no-creds \
        "docker://127.0.0.1:${PORT[$t]}/bench/$img:r$r" "dir:$dest" ||
        { cat "$out" >&2; die "pull of $img r$r from $t failed"; }
    t1=$(date +%s.%N)
    got=sha256:$(sha256sum "$dest/manifest.json" | cut -d' ' -f1)
    [[ $got == "${DIGEST[$img/$r]}" ]] || die "pull of $img r$r from $t: manifest $got, pushed ${DIGEST[$img/$r]}"
    # dir: holds manifest.json, version and one file per blob (layers + config).
    nfiles=$(find "$dest" -maxdepth 1 -type f | wc -l)
    ((nfiles == NLAYERS[$img/$r] + 3)) || die "pull of $img r$r from $t: $nfiles files in $dest"
    rm -rf "$dest"
    TOOK=$(secs "$t0" "$t1")
}

# ---------------------------------------------------------------------------------
# Rounds.

CASES=("push big" "pull big, warm")
((COLD)) && CASES+=("pull big, cold")
CASES+=("push many" "pull many, warm")
((COLD)) && CASES+=("pull many, cold")
declare -A SAMPLES=() # "case|target" -> space-separated MiB/s
declare -A SECS=()    # "case|target" -> space-separated seconds
record() { # CASE TARGET SECONDS BYTES
    SECS[$1|$2]+="$3 "
    SAMPLES[$1|$2]+="$(mibs "$4" "$3") "
}

for ((r = 1; r <= ROUNDS; r++)); do
    # The targets rotated by one each round (alone: plain first, then regfs first).
    order=()
    for ((k = 0; k < ${#TARGETS[@]}; k++)); do
        order+=("${TARGETS[((r - 1 + k) % ${#TARGETS[@]})]}")
    done
    log "round $r/$ROUNDS (${order[0]} first; load average $(cut -d' ' -f1-3 /proc/loadavg))"
    for img in big many; do
        b=${BYTES[$img/$r]}
        line="$img:"
        for t in "${order[@]}"; do
            push "$t" "$img" "$r"
            record "push $img" "$t" "$TOOK" "$b"
            line+=" push $t ${TOOK}s"
        done
        temps=(warm)
        ((COLD)) && temps+=(cold)
        for temp in "${temps[@]}"; do
            for t in "${order[@]}"; do
                pull "$t" "$img" "$r" "$temp"
                record "pull $img, $temp" "$t" "$TOOK" "$b"
                line+=", pull-$temp $t ${TOOK}s"
            done
        done
        note "$line"
    done
done

# ---------------------------------------------------------------------------------
# Report.

# What the registries logged at level error. "blob unknown" answers to skopeo's HEAD
# requests before each upload are expected (they show the blobs were new); others are not.
reg_unknown() { grep 'level=error' "$SCRATCH/registry-$1.log" | grep -c 'err.code="blob unknown"' || true; }
reg_errors() { grep 'level=error' "$SCRATCH/registry-$1.log" | grep -vc 'err.code="blob unknown"' || true; }
# MiB/s with enough digits for the many-layers image's small figures.
fmt_mibs() { awk -v v="$1" 'BEGIN { printf (v >= 100 ? "%.0f" : v >= 10 ? "%.1f" : v >= 1 ? "%.2f" : "%.4f"), v }'; }
rfs_errors() { cat "$SCRATCH"/regfs*.log | grep -c -E '\bERROR\b' || true; }

ended=$(date +%s.%N)
elapsed=$(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.0f", b - a }')
echo
echo "regfs registry benchmark: docker-registry $(docker-registry --version 2>/dev/null | awk '{ print $NF }') on a regfs mount vs. on a plain directory"
((CLUSTER)) && echo "  and on node 1 of a two-node regfs cluster over one store (etcd on 127.0.0.1; cluster = that registry)"
((NO_ACCESS_TIMES)) && echo "  and on regfs with --no-access-times (noat: no access-recording layer; regfs/noat is what recording costs)"
[[ -n $BEFORE_BIN ]] && echo "  and on regfs run by $BEFORE_BIN (before: regfs/before > 1 means the change made regfs faster)"
((FLOOR)) && echo "  and on bindfs $(bindfs --version | awk '{ print $2 }') (fuse: a bare FUSE passthrough; fuse/plain is the floor of any FUSE mount here, regfs/fuse what regfs adds)"
echo "images: big = $BIG_MIB MiB in ${NLAYERS[big/1]} layers (${BYTES[big/1]} bytes), many = ${NLAYERS[many/1]} layers (${BYTES[many/1]} bytes);"
echo "  a fresh variant (--seed) of each per round, so every push uploads every blob; median of $ROUNDS rounds"
echo "skopeo $(skopeo --version | awk '{ print $3 }') as $SK_USER; registries as $REG_USER (cache: $REG_CACHE); regfs passthrough $passthrough${REGFS_ARGS:+, regfs options: $REGFS_ARGS}"
echo "scratch on $fs_type ($fs_dev at $fs_mnt, $fs_opts), kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
echo "load average at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  (the machine is shared and noisy: other work skews single runs; compare ratios, not absolutes)"
echo "warm pull: right after the push (data in the page cache); cold pull: after sync + drop_caches"
echo
fmt='%-18s | %11s | %11s | %6s | %7s | %-6s'
cfmt=' | %13s | %13s | %7s | %s'
bfmt=' | %13s | %12s | %12s'
# shellcheck disable=SC2059
{
    printf "$fmt" "case" "plain MiB/s" "regfs MiB/s" "ratio" "target" "result"
    ((CLUSTER)) && printf "$cfmt" "cluster MiB/s" "cluster/regfs" "target" "result"
    ((NO_ACCESS_TIMES)) && printf "$cfmt" "noat MiB/s" "regfs/noat" "target" "result"
    [[ -n $BEFORE_BIN ]] && printf "$bfmt" "before MiB/s" "before/plain" "regfs/before"
    ((FLOOR)) && printf "$bfmt" "fuse MiB/s" "fuse/plain" "regfs/fuse"
    echo
    printf "$fmt" "------------------" "-----------" "-----------" "------" "-------" "------"
    ((CLUSTER)) && printf "$cfmt" "-------------" "-------------" "-------" "------"
    ((NO_ACCESS_TIMES)) && printf "$cfmt" "-------------" "-------------" "-------" "------"
    [[ -n $BEFORE_BIN ]] && printf "$bfmt" "-------------" "------------" "------------"
    ((FLOOR)) && printf "$bfmt" "-------------" "------------" "------------"
    echo
}
# ratio A B: A / B to two decimals; judged RATIO TARGET: PASS or BELOW.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
judged() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t ? "PASS" : "BELOW") }'; }
secs_lines=()
for c in "${CASES[@]}"; do
    # shellcheck disable=SC2086 # the samples are space-separated numbers
    p=$(median ${SAMPLES[$c|plain]})
    # shellcheck disable=SC2086
    g=$(median ${SAMPLES[$c|regfs]})
    # shellcheck disable=SC2086
    ps=$(median ${SECS[$c|plain]})
    # shellcheck disable=SC2086
    gs=$(median ${SECS[$c|regfs]})
    if [[ $c == push* ]]; then target=$PUSH_TARGET; else target=$PULL_TARGET; fi
    r=$(ratio "$g" "$p")
    # shellcheck disable=SC2059
    printf "$fmt" "$c" "$(fmt_mibs "$p")" "$(fmt_mibs "$g")" "$r" ">= $target" "$(judged "$r" "$target")"
    secs_line=$(printf '%-18s   plain %7.2f s   regfs %7.2f s' "$c" "$ps" "$gs")
    if ((CLUSTER)); then
        # shellcheck disable=SC2086
        k=$(median ${SAMPLES[$c|cluster]})
        # shellcheck disable=SC2086
        ks=$(median ${SECS[$c|cluster]})
        r=$(ratio "$k" "$g")
        # shellcheck disable=SC2059
        printf "$cfmt" "$(fmt_mibs "$k")" "$r" ">= $CLUSTER_TARGET" "$(judged "$r" "$CLUSTER_TARGET")"
        secs_line+=$(printf '   cluster %7.2f s' "$ks")
    fi
    if ((NO_ACCESS_TIMES)); then
        # shellcheck disable=SC2086
        n=$(median ${SAMPLES[$c|noat]})
        # shellcheck disable=SC2086
        ns=$(median ${SECS[$c|noat]})
        r=$(ratio "$g" "$n")
        # shellcheck disable=SC2059
        printf "$cfmt" "$(fmt_mibs "$n")" "$r" ">= $ACCESS_TARGET" "$(judged "$r" "$ACCESS_TARGET")"
        secs_line+=$(printf '   noat %7.2f s' "$ns")
    fi
    if [[ -n $BEFORE_BIN ]]; then
        # shellcheck disable=SC2086
        b=$(median ${SAMPLES[$c|before]})
        # shellcheck disable=SC2086
        bs=$(median ${SECS[$c|before]})
        # shellcheck disable=SC2059
        printf "$bfmt" "$(fmt_mibs "$b")" "$(ratio "$b" "$p")" "$(ratio "$g" "$b")"
        secs_line+=$(printf '   before %7.2f s' "$bs")
    fi
    if ((FLOOR)); then
        # shellcheck disable=SC2086
        b=$(median ${SAMPLES[$c|fuse]})
        # shellcheck disable=SC2086
        bs=$(median ${SECS[$c|fuse]})
        # shellcheck disable=SC2059
        printf "$bfmt" "$(fmt_mibs "$b")" "$(ratio "$b" "$p")" "$(ratio "$g" "$b")"
        secs_line+=$(printf '   fuse %7.2f s' "$bs")
    fi
    echo
    secs_lines+=("$secs_line")
done
echo
echo "median seconds per run:"
printf '  %s\n' "${secs_lines[@]}"
echo
echo "registry log, level=error: 'blob unknown' answers to skopeo's HEAD before each upload (expected:"
unknown=() others=()
for t in "${TARGETS[@]}"; do
    unknown+=("$t $(reg_unknown "$t")")
    others+=("$t $(reg_errors "$t")")
done
echo "  they show the blobs were new) $(IFS=,; echo "${unknown[*]}" | sed 's/,/, /g'); other errors: $(IFS=,; echo "${others[*]}" | sed 's/,/, /g')"
echo "regfs daemon logs: $(rfs_errors) ERROR lines"
echo "total time ${elapsed} s"
