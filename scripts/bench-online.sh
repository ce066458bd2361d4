#!/usr/bin/env bash
# Online GC benchmark: docker-registry on a regfs mount under a steady push and pull load
# while GC runs, once with read-only epochs and once online, on a generated store.
#
#   sudo scripts/bench-online.sh                 # 250,000 blobs, both modes
#   sudo BLOBS=2000 RUNS=1 WARM=5 scripts/bench-online.sh   # a quick look that it works
#   sudo NODES=3 MODES=online scripts/bench-online.sh         # cluster mode: 3 nodes, one etcd
#
# Per mode, on a fresh copy of one generated store (scripts/gen-store.py, BLOBS blobs, 20%
# garbage), in a scratch directory on a real disk:
#   * `regfs mount --gc-mode MODE --gc-min-age 0s` over the copy, Debian's docker-registry
#     (distribution 2.8) on the mount as the docker-registry user, its blob-descriptor
#     cache off (REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=none, as the shipped drop-in; online
#     mode requires it), on a free 127.0.0.1 port;
#   * a push loop (skopeo as nobody, no retries: a refused push counts as refused) pushing
#     fresh images (scripts/soak-images.py: every push uploads a new layer and config) and a
#     pull loop pulling one image again and again, each operation timed;
#   * WARM seconds of load without GC, then RUNS runs of `regfs gc --wait` with GAP seconds
#     of load between them, then the load stops.
# An operation is "during GC" when its time overlaps a run (job started_at..ended_at), else
# "without GC". Printed per mode: runs, run duration (median) and against read-only mode,
# pushes during runs and how many were refused (per run), the pause (online: the job's
# pause_seconds; read-only: the time writes were refused, read_only_seconds) p50/p99, and
# push and pull latency p50/p99 during GC and without GC, with the ratio of the p50s and
# p99s. Goals (issue 12): online refuses 0 pushes, pause p99 <= 50 ms, latency <= 1.5x.
#
# Environment:
#   BLOBS      blobs in the generated store (default 250000)
#   RUNS       GC runs per mode (default 3; the first collects the garbage)
#   WARM       seconds of load before the first run (default 20)
#   GAP        seconds of load between runs (default 5)
#   MODES      the modes, in order (default "read-only online")
#   PUSH_IMAGES  fresh images for the push loop per mode (default 400)
#   REGFS_BIN  use this binary instead of building with `cargo build --release`
#   BENCH_DIR  where the scratch directory goes (default /var/tmp; not tmpfs)
#   NODES      regfs nodes over the store (default 1). Above 1, cluster mode: one etcd
#              (etcd on PATH) on 127.0.0.1, every node a `regfs mount` of the same copy at
#              its own mount point (--cluster-node nN, lease TTL 10 s), a registry on
#              nodes 2 and 3 (node 2 alone with NODES=2), one push loop through each and
#              the pull loop through node 2, GC triggered on node 1. Refused pushes count
#              over every push loop; the pause is the collector's job's (the cluster's:
#              from asking for the members' records since the planned doomed set until
#              every member has resumed); each member's own hold and its load of the
#              planned set (before the pause) are noted per run from its log.
#   KEEP_SCRATCH=1  keep the scratch directory (logs, job records, operation logs)
#
# Needs root, /dev/fuse, docker-registry, skopeo, python3, setpriv. Everything started is
# stopped by its pid on exit, Ctrl-C or SIGTERM; the scratch directory is removed.
set -euo pipefail
export LC_ALL=C
umask 022

BLOBS=${BLOBS:-250000}
RUNS=${RUNS:-3}
WARM=${WARM:-20}
GAP=${GAP:-5}
MODES=${MODES:-read-only online}
PUSH_IMAGES=${PUSH_IMAGES:-400}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
REG_USER=docker-registry
SK_USER=nobody

BENCH_NAME=bench-online
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"

NODES=${NODES:-1}
for v in BLOBS RUNS PUSH_IMAGES NODES; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
for v in WARM GAP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number of seconds (got '${!v}')"
done
read -r -a MODE_LIST <<<"$MODES"
for m in "${MODE_LIST[@]}"; do
    [[ $m == read-only || $m == online ]] || die "MODES: '$m' is neither read-only nor online"
done
[[ $EUID -eq 0 ]] || die "must run as root (mounting, setpriv)"
[[ -c /dev/fuse ]] || die "/dev/fuse missing; load the module with 'modprobe fuse'"
[[ -d $BENCH_DIR ]] || die "BENCH_DIR $BENCH_DIR is not a directory"
for cmd in docker-registry skopeo python3 setpriv curl; do
    command -v "$cmd" >/dev/null || die "$cmd is missing (scripts/install-deps.sh installs it)"
done
if ((NODES > 1)); then
    command -v etcd >/dev/null || die "etcd is missing (cluster mode, NODES=$NODES; apt-get install etcd-server)"
fi
id "$REG_USER" >/dev/null 2>&1 || die "user $REG_USER is missing (it comes with the docker-registry package)"
find_regfs

SCRATCH= RFS_PIDS=() REG_PIDS=() LOAD_PIDS=() ETCD_PID=
cleanup() {
    local rc=$? p m
    trap - EXIT INT TERM
    set +e
    [[ -n $SCRATCH ]] && touch "$SCRATCH/stop"
    for p in "${LOAD_PIDS[@]}" "${REG_PIDS[@]}"; do stop_pid "$p" 10; done
    for p in "${RFS_PIDS[@]}"; do stop_pid "$p" 15; done
    [[ -n $ETCD_PID ]] && stop_pid "$ETCD_PID" 10
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then
        for m in "$SCRATCH"/mnt*; do
            [[ -d $m ]] || continue
            is_mounted "$m" && { umount "$m" 2>/dev/null || umount -l "$m"; }
        done
        if [[ ${KEEP_SCRATCH:-0} == 1 ]]; then
            echo "bench-online: kept $SCRATCH" >&2
        else
            rm -rf --one-file-system "$SCRATCH"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench-online: interrupted" >&2; exit 130' INT
trap 'echo "bench-online: terminated" >&2; exit 143' TERM

SCRATCH=$(mktemp -d "$BENCH_DIR/regfs-bench-online.XXXXXX")
chmod 755 "$SCRATCH"
fs_type=$(df -PT "$SCRATCH" | awk 'NR == 2 { print $2 }')
[[ $fs_type != tmpfs ]] || die "$SCRATCH is on tmpfs; set BENCH_DIR to a disk"

log "generating a store of $BLOBS blobs"
t0=$EPOCHREALTIME
python3 "$ROOT/scripts/gen-store.py" "$SCRATCH/pristine" --blobs "$BLOBS" --quiet ||
    die "gen-store.py failed"
chown -R "$REG_USER:$REG_USER" "$SCRATCH/pristine"
note "generated in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"

SK=$SCRATCH/skopeo
mkdir -p "$SK/home/.config" "$SK/home/.local/share" "$SK/home/.cache" "$SK/tmp" "$SK/run" "$SCRATCH/pulls"
echo 'unqualified-search-registries = []' >"$SK/registries.conf"
chmod 700 "$SK/run"
sk() {
    setpriv --reuid="$SK_USER" --regid="$(id -g "$SK_USER")" --clear-groups \
        env -i PATH="$PATH" HOME="$SK/home" TMPDIR="$SK/tmp" XDG_RUNTIME_DIR="$SK/run" \
        XDG_CONFIG_HOME="$SK/home/.config" XDG_DATA_HOME="$SK/home/.local/share" \
        XDG_CACHE_HOME="$SK/home/.cache" REGISTRY_AUTH_FILE="$SK/home/auth.json" \
        CONTAINERS_REGISTRIES_CONF="$SK/registries.conf" NO_PROXY='*' \
        skopeo --insecure-policy --command-timeout 120s --tmpdir "$SK/tmp" "$@"
}
families=$(((PUSH_IMAGES + 1) / 2))
for m in "${MODE_LIST[@]}"; do
    python3 "$ROOT/scripts/soak-images.py" "$SCRATCH/oci-$m" --families "$families" --variants 2 \
        --seed "bench-online-$m" >/dev/null || die "soak-images.py failed"
done
python3 "$ROOT/scripts/soak-images.py" "$SCRATCH/oci-pull" --families 1 --variants 1 --seed pull >/dev/null
chown -R "$SK_USER" "$SK" "$SCRATCH/pulls"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
has_gc_mode=0
"$REGFS" mount --help | grep -q -- '--gc-mode' && has_gc_mode=1

# push_loop MODE PORT [FIRST]: fresh images until $SCRATCH/stop, counting from FIRST
# (several loops at once start apart); "push T0 T1 RC" lines.
push_loop() {
    local i=${3:-0} t0 rc name
    while [[ ! -e $SCRATCH/stop ]]; do
        name="f$((i / 2 % families))-v$((i % 2))"
        t0=$EPOCHREALTIME rc=0
        sk copy --quiet --preserve-digests --dest-tls-verify=false --dest-no-creds \
            "oci:$SCRATCH/oci-$1:$name" "docker://127.0.0.1:$2/bench/push$((i % 16)):$i" \
            >>"$SCRATCH/push-$1.err" 2>&1 || rc=$?
        echo "push $t0 $EPOCHREALTIME $rc" >>"$SCRATCH/ops-$1.log"
        i=$((i + 1))
    done
}
# pull_loop MODE PORT: one image again and again; "pull T0 T1 RC" lines.
pull_loop() {
    local t0 rc dest=$SCRATCH/pulls/p
    while [[ ! -e $SCRATCH/stop ]]; do
        t0=$EPOCHREALTIME rc=0
        sk copy --quiet --src-tls-verify=false --src-no-creds \
            "docker://127.0.0.1:$2/bench/pull:1" "dir:$dest" >>"$SCRATCH/pull-$1.err" 2>&1 || rc=$?
        echo "pull $t0 $EPOCHREALTIME $rc" >>"$SCRATCH/ops-$1.log"
        rm -rf "$dest"
        sleep 0.2
    done
}

# start_etcd MODE: one etcd for the cluster, its data in the scratch directory; sets
# ETCD_URL and ETCD_PID.
start_etcd() {
    local client peer i
    client=$(free_port)
    peer=$(free_port)
    ETCD_URL=http://127.0.0.1:$client
    etcd --name bench --data-dir "$SCRATCH/etcd-$1" --listen-client-urls "$ETCD_URL" \
        --advertise-client-urls "$ETCD_URL" --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" >>"$SCRATCH/etcd-$1.log" 2>&1 &
    ETCD_PID=$!
    for ((i = 0; i < 150; i++)); do
        curl -s -o /dev/null --noproxy '*' -X POST -d '{}' "$ETCD_URL/v3/maintenance/status" && return 0
        alive "$ETCD_PID" || { cat "$SCRATCH/etcd-$1.log" >&2; die "etcd exited"; }
        sleep 0.1
    done
    die "etcd did not answer within 15 s"
}

# registry_config MODE N PORT: node N's docker-registry config (its storage at node N's
# mount); regfs judges the registry's cache by it too.
registry_config() {
    local cfg=$SCRATCH/registry-$1-$2.yml
    cat >"$cfg" <<CONFIG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $SCRATCH/mnt$2
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
  redirect:
    disable: true
http:
  addr: 127.0.0.1:$3
  secret: regfs-bench-not-a-secret
CONFIG
    chmod 644 "$cfg"
}

# start_registry MODE N PORT: docker-registry on node N's mount, serving PORT.
start_registry() {
    local i
    REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=none setpriv --reuid="$REG_USER" --regid="$REG_USER" \
        --clear-groups docker-registry serve "$SCRATCH/registry-$1-$2.yml" </dev/null \
        >>"$SCRATCH/registry-$1-$2.log" 2>&1 &
    REG_PIDS+=($!)
    for ((i = 0; i < 150; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --noproxy '*' "http://127.0.0.1:$3/v2/") == 200 ]] && return 0
        alive "${REG_PIDS[-1]}" || { cat "$SCRATCH/registry-$1-$2.log" >&2; die "docker-registry (node $2) exited"; }
        sleep 0.1
    done
    die "docker-registry (node $2) did not answer within 15 s"
}

run_mode() {
    local mode=$1 store=$SCRATCH/store-$1 flags=() cluster=() i r n p
    local load_nodes=() ports=()
    log "mode $mode: copying the store"
    cp -a "$SCRATCH/pristine" "$store"
    if ((has_gc_mode)); then
        flags=(--gc-mode "$mode")
    elif [[ $mode == online ]]; then
        die "$REGFS has no --gc-mode: online mode is not in this build"
    fi
    if ((NODES > 1)); then
        start_etcd "$mode"
        load_nodes=(2)
        ((NODES > 2)) && load_nodes+=(3)
    else
        load_nodes=(1)
    fi
    for ((n = 1; n <= NODES; n++)); do
        ports[n]=$(free_port)
        registry_config "$mode" "$n" "${ports[n]}"
        mkdir -p "$SCRATCH/mnt$n" "$SCRATCH/state-$mode-$n"
        cluster=()
        if ((NODES > 1)); then
            cluster=(--cluster-endpoints "$ETCD_URL" --cluster-node "n$n" --cluster-lease-ttl 10s
                --cluster-prefix "/bench-$mode/")
        fi
        "$REGFS" mount "${flags[@]}" "${cluster[@]}" --gc-min-age 0s \
            --registry-config "$SCRATCH/registry-$mode-$n.yml" --state-dir "$SCRATCH/state-$mode-$n" \
            "$store" "$SCRATCH/mnt$n" >>"$SCRATCH/regfs-$mode-$n.log" 2>&1 &
        RFS_PIDS+=($!)
        for ((i = 0; i < 150; i++)); do
            is_mounted "$SCRATCH/mnt$n" && break
            alive "${RFS_PIDS[-1]}" || { cat "$SCRATCH/regfs-$mode-$n.log" >&2; die "regfs (node $n) exited"; }
            sleep 0.1
        done
        is_mounted "$SCRATCH/mnt$n" || die "regfs (node $n) did not mount within 15 s"
    done
    for n in "${load_nodes[@]}"; do
        start_registry "$mode" "$n" "${ports[n]}"
    done
    p=${ports[${load_nodes[0]}]}
    sk copy --quiet --preserve-digests --dest-tls-verify=false --dest-no-creds \
        "oci:$SCRATCH/oci-pull:f0-v0" "docker://127.0.0.1:$p/bench/pull:1" >&2 ||
        die "the first push (of the image the pull loop pulls) failed"
    rm -f "$SCRATCH/stop"
    i=0
    for n in "${load_nodes[@]}"; do
        push_loop "$mode" "${ports[n]}" "$((i * families))" &
        LOAD_PIDS+=($!)
        i=$((i + 1))
    done
    pull_loop "$mode" "$p" &
    LOAD_PIDS+=($!)
    note "load running through node(s) ${load_nodes[*]}; $WARM s without GC"
    sleep "$WARM"
    for ((r = 1; r <= RUNS; r++)); do
        "$REGFS" gc --wait --json "$SCRATCH/mnt1" --state-dir "$SCRATCH/state-$mode-1" \
            >"$SCRATCH/job-$mode-$r.json" 2>>"$SCRATCH/gc-$mode.err" ||
            note "WARNING: run $r failed (see $SCRATCH/job-$mode-$r.json)"
        note "run $r/$RUNS: $(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); r=j.get("report") or {}; print(j["outcome"], r.get("blobs_deleted"), "blobs deleted")' "$SCRATCH/job-$mode-$r.json" 2>/dev/null || echo '?')"
        sleep "$GAP"
    done
    if ((NODES > 1)) && [[ $mode == online ]]; then
        # Each member's own pause (writes held, ms) and its load of the planned doomed
        # set before it (writes flowing), per run, from its log.
        for ((n = 2; n <= NODES; n++)); do
            note "node $n: writes held (ms) $(grep -ho 'held_ms=[0-9]*' "$SCRATCH/regfs-$mode-$n.log" | cut -d= -f2 | tr '\n' ' '); planned set loaded in (ms) $(grep -ho 'load_ms=[0-9]*' "$SCRATCH/regfs-$mode-$n.log" | cut -d= -f2 | tr '\n' ' ')"
        done
    fi
    touch "$SCRATCH/stop"
    wait "${LOAD_PIDS[@]}" 2>/dev/null || true
    LOAD_PIDS=()
    for p in "${REG_PIDS[@]}"; do stop_pid "$p" 10; done
    REG_PIDS=()
    for p in "${RFS_PIDS[@]}"; do stop_pid "$p" 15; done
    RFS_PIDS=()
    if [[ -n $ETCD_PID ]]; then
        stop_pid "$ETCD_PID" 10
        ETCD_PID=
    fi
    rm -rf --one-file-system "$store"
}

for m in "${MODE_LIST[@]}"; do
    run_mode "$m"
done

echo
echo "regfs online GC benchmark: $BLOBS blobs (20% garbage), $RUNS runs per mode, $NODES node(s), $(nproc) CPUs, kernel $(uname -r)"
echo "load: one skopeo push loop (fresh images, no retries) and one pull loop; $WARM s warm-up, $GAP s between runs"
python3 - "$SCRATCH" "${MODE_LIST[@]}" <<'EOF'
import glob, json, sys
from datetime import datetime

scratch, modes = sys.argv[1], sys.argv[2:]

def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

rows, base_dur = [], None
for mode in modes:
    jobs = [json.load(open(p)) for p in sorted(glob.glob(f"{scratch}/job-{mode}-*.json"))]
    spans = [(ts(j["started_at"]), ts(j["ended_at"])) for j in jobs if j.get("ended_at")]
    ops = [l.split() for l in open(f"{scratch}/ops-{mode}.log")]
    during = lambda a, b: any(a < e and b > s for s, e in spans)
    lat = {}
    refused = {i: [0, 0] for i in range(len(spans))}
    for kind, a, b, rc in ops:
        a, b = float(a), float(b)
        key = (kind, "gc" if during(a, b) else "idle")
        if rc == "0":
            lat.setdefault(key, []).append(b - a)
        if kind == "push":
            for i, (s, e) in enumerate(spans):
                if a < e and b > s:
                    refused[i][0] += 1
                    refused[i][1] += rc != "0"
    durs = sorted(e - s for s, e in spans)
    dur = pct(durs, 50)
    if mode == "read-only":
        base_dur = dur
    pause = [j.get("pause_seconds") if mode == "online" else j.get("read_only_seconds") for j in jobs]
    pause = [p for p in pause if p is not None]
    print(f"\n== {mode}: {len(jobs)} runs, run duration median {dur:.2f} s"
          + (f" ({dur / base_dur:.2f}x read-only mode)" if base_dur and mode != "read-only" else ""))
    for i, (n, bad) in refused.items():
        print(f"   run {i + 1}: {bad} of {n} pushes during the run refused;"
              f" {(jobs[i].get('report') or {}).get('blobs_deleted')} blobs deleted")
    what = "pause (writes held)" if mode == "online" else "read-only window (writes refused)"
    print(f"   {what}: p50 {pct(pause, 50) * 1000:.2f} ms, p99 {pct(pause, 99) * 1000:.2f} ms")
    for kind in ("push", "pull"):
        g, i = lat.get((kind, "gc"), []), lat.get((kind, "idle"), [])
        p50g, p99g, p50i, p99i = pct(g, 50), pct(g, 99), pct(i, 50), pct(i, 99)
        print(f"   {kind} latency: during GC p50 {p50g:.3f} s p99 {p99g:.3f} s (n={len(g)}); "
              f"without GC p50 {p50i:.3f} s p99 {p99i:.3f} s (n={len(i)}); "
              f"ratio p50 {p50g / p50i:.2f}x p99 {p99g / p99i:.2f}x" if g and i else
              f"   {kind} latency: too few samples (during GC {len(g)}, without {len(i)})")
EOF
