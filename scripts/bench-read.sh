#!/usr/bin/env bash
# Read benchmark for regfs: native filesystem vs. a regfs mount of it.
#
#   sudo scripts/bench-read.sh
#
# Measures, on a scratch directory on a real disk (never tmpfs):
#   * blob reads: sequential read of a SIZE_MB file (dd bs=1M), cold (page cache
#     dropped before every run) and warm, through a normal regfs mount (kernel read
#     passthrough) and, for comparison, through a second mount with --no-passthrough.
#     Native and regfs read two identical copies of the blob, each its own: reading one
#     file from both sides let the second reader of each round find it in the VM host's
#     cache, which skewed cold figures by whichever side happened to read second;
#   * metadata: a walk that reads every directory and stats every entry of a tree of
#     FILES small files (find -printf %s), cold (fresh mount + dropped caches) and warm;
#     native and regfs walk two trees made the same way, for the same reason.
# Native and regfs runs alternate (the order flips each round); every figure is the
# median of ROUNDS runs. The table compares against the targets (blob >= 0.95x native,
# metadata >= 0.5x native) and says PASS or BELOW. Exit status: 0 when every run
# completed (BELOW included); 1 on setup errors, or when walks through regfs met errors
# (then the row says ERROR: e.g. EMFILE when the tree has more entries than the daemon's
# open-file limit allows), after printing the table. Everything is cleaned up on exit.
#
# Environment:
#   REGFS_BIN   use this binary instead of building with `cargo build --release`
#   REGFS_ARGS  extra options for every `regfs mount` (word-split), e.g. "--threads 4"
#   BENCH_DIR   where the scratch directory goes (default /var/tmp; must not be tmpfs)
#   ROUNDS      runs per case, median taken (default 9: cold reads on a VM disk vary by 2x)
#   WARM_PASSES back-to-back reads of the blob in one warm run (default 3: one warm
#               read of 1 GiB takes only ~0.1 s, too short to time on its own)
#   SIZE_MB     blob size in MiB (default 1024)
#   FILES       files in the metadata tree, 100 per directory (default 100000)
#
# Needs root (mount, /proc/sys/vm/drop_caches) and /dev/fuse.
set -euo pipefail
export LC_ALL=C # decimal points in dd output and $EPOCHREALTIME

ROUNDS=${ROUNDS:-9}
SIZE_MB=${SIZE_MB:-1024}
FILES=${FILES:-100000}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
PER_DIR=100
BLOB_TARGET=0.95
WARM_PASSES=${WARM_PASSES:-3}
META_TARGET=0.5

BENCH_NAME=bench-read
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"

for v in ROUNDS SIZE_MB FILES WARM_PASSES; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $EUID -eq 0 ]] || die "must run as root (mounting, dropping caches)"
[[ -c /dev/fuse ]] || die "/dev/fuse missing; load the module with 'modprobe fuse'"
[[ -w /proc/sys/vm/drop_caches ]] || die "/proc/sys/vm/drop_caches is not writable; cold runs need it"
[[ -d $BENCH_DIR ]] || die "BENCH_DIR $BENCH_DIR is not a directory"
[[ $BENCH_DIR != *[[:space:]]* ]] || die "BENCH_DIR must not contain whitespace"
extra_args=()
if [[ -n ${REGFS_ARGS:-} ]]; then
    read -r -a extra_args <<<"$REGFS_ARGS"
fi

find_regfs

# ---------------------------------------------------------------------------------
# Scratch directory, mounts and cleanup.

SCRATCH=
declare -A DAEMON_PID=() # mount name -> daemon pid



# Stops the daemon of mount NAME by its pid (SIGTERM makes it unmount), then makes
# sure nothing is left mounted there.
stop_mount() {
    local name=$1 mnt=$SCRATCH/mnt-$1 pid
    pid=${DAEMON_PID[$name]:-}
    if [[ -n $pid ]]; then
        stop_pid "$pid" 10
        unset "DAEMON_PID[$name]"
    fi
    if is_mounted "$mnt"; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
    fi
}

cleanup() {
    local rc=$? name mnt
    trap - EXIT INT TERM
    set +e
    for name in "${!DAEMON_PID[@]}"; do
        stop_mount "$name"
    done
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then
        for mnt in "$SCRATCH"/mnt-*; do
            if is_mounted "$mnt"; then
                umount "$mnt" 2>/dev/null || umount -l "$mnt"
            fi
        done
        # --one-file-system: never reach through a mount that somehow survived.
        rm -rf --one-file-system "$SCRATCH"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench-read: interrupted; cleaning up" >&2; exit 130' INT
trap 'echo "bench-read: terminated; cleaning up" >&2; exit 143' TERM

SCRATCH=$(mktemp -d "$BENCH_DIR/regfs-bench.XXXXXX")
BACKING=$SCRATCH/storage
# The blobs lie where the registry keeps blob data: regfs serves a file by kernel
# passthrough by its role, and blob data is what pulls read (the digests are made up).
BLOB_DIR=docker/registry/v2/blobs/sha256
BLOB_REL=$BLOB_DIR/b1/$(printf 'b1%.0s' {1..32})/data
COPY_REL=$BLOB_DIR/b2/$(printf 'b2%.0s' {1..32})/data
mkdir -p "$(dirname "$BACKING/$BLOB_REL")" "$(dirname "$BACKING/$COPY_REL")" \
    "$BACKING/tree" "$BACKING/tree-copy"

read -r fs_dev fs_type fs_mnt < <(df -PT "$SCRATCH" | awk 'NR == 2 { print $1, $2, $7 }')
case $fs_type in
tmpfs | ramfs | devtmpfs)
    die "$SCRATCH is on $fs_type; cold numbers would be meaningless. Set BENCH_DIR to a disk" ;;
esac
log "scratch dir $SCRATCH: filesystem $fs_type on $fs_dev (mounted at $fs_mnt)"

# Mounts STORAGE at $SCRATCH/mnt-NAME in the background, with extra options.
start_mount() {
    local name=$1 mnt=$SCRATCH/mnt-$1 logf=$SCRATCH/regfs-$1.log i
    shift
    mkdir -p "$mnt"
    "$REGFS" mount "${extra_args[@]}" "$@" "$BACKING" "$mnt" >>"$logf" 2>&1 &
    DAEMON_PID[$name]=$!
    for ((i = 0; i < 100; i++)); do
        if is_mounted "$mnt"; then
            return 0
        fi
        if ! alive "${DAEMON_PID[$name]}"; then
            cat "$logf" >&2
            die "regfs ($name) exited before mounting"
        fi
        sleep 0.1
    done
    cat "$logf" >&2
    die "regfs ($name) did not mount $mnt within 10 s"
}


# ---------------------------------------------------------------------------------
# Measurements.

# Sequential read of FILE, PASSES times in a row (default 1); prints MiB/s over all
# passes, from dd's own byte counts and times. Fails unless every pass completed.
read_mibs() {
    local f=$1 passes=${2:-1} i
    for ((i = 0; i < passes; i++)); do
        dd if="$f" of=/dev/null bs=1M 2>&1 >/dev/null
    done | awk -v want="$passes" '
        / copied, / { for (i = 1; i <= NF; i++) if ($i == "s,") s += $(i - 1); b += $1; n++ }
        END { if (n != want || s <= 0) exit 1; printf "%.1f\n", b / 1048576 / s }'
}

# Walk of DIR that reads every directory and stats every entry; prints "SECONDS ERRORS".
# A walk that meets errors (find's messages, or its exit status) is reported, not fatal.
walk() {
    local t0 t1 rc=0 nerr errf=$SCRATCH/walk.err
    t0=$EPOCHREALTIME
    find "$1" -printf '%s\n' >/dev/null 2>"$errf" || rc=$?
    t1=$EPOCHREALTIME
    nerr=$(wc -l <"$errf")
    ((rc == 0 || nerr > 0)) || nerr=1
    if ((nerr > 0)); then
        note "walk of $1 failed: find exit $rc, $nerr error(s), first: $(head -n 1 "$errf")"
    fi
    awk -v a="$t0" -v b="$t1" -v e="$nerr" 'BEGIN { printf "%.3f %d\n", b - a, e }'
}


ROWS=()  # "label|unit|native|regfs|ratio|target|errors"
FAILED=0 # walks that met errors

# add_row LABEL UNIT NATIVE REGFS KIND TARGET [ERRORS]; KIND=throughput (regfs/native)
# or time (native/regfs), so that higher is better either way.
add_row() {
    local ratio
    if [[ $5 == throughput ]]; then
        ratio=$(awk -v n="$3" -v r="$4" 'BEGIN { printf "%.2f", r / n }')
    else
        ratio=$(awk -v n="$3" -v r="$4" 'BEGIN { printf "%.2f", n / r }')
    fi
    ROWS+=("$1|$2|$3|$4|$ratio|$6|${7:-0}")
}

# blob_case LABEL MOUNT cold|warm TARGET
blob_case() {
    local label=$1 name=$2 temp=$3 target=$4 r native mnt passes=1
    local nat=() reg=()
    native=$BACKING/$BLOB_REL
    mnt=$SCRATCH/mnt-$name/$COPY_REL
    if [[ $temp == warm ]]; then
        passes=$WARM_PASSES
        log "$label ($ROUNDS rounds of $passes back-to-back reads)"
    else
        log "$label ($ROUNDS rounds)"
    fi
    # An unmeasured run of each first: it warms the cache for warm runs, and the first
    # cold read after the file was written is an outlier (the VM host's cache, readahead
    # state), so it is left out of cold runs too.
    [[ $temp == cold ]] && drop_caches
    read_mibs "$native" >/dev/null || die "reading $native failed"
    [[ $temp == cold ]] && drop_caches
    read_mibs "$mnt" >/dev/null || die "reading $mnt failed"
    for ((r = 1; r <= ROUNDS; r++)); do
        local order=(native regfs) n g
        ((r % 2)) || order=(regfs native)
        for who in "${order[@]}"; do
            [[ $temp == cold ]] && drop_caches
            if [[ $who == native ]]; then
                n=$(read_mibs "$native" "$passes") || die "reading $native failed"
            else
                g=$(read_mibs "$mnt" "$passes") || die "reading $mnt failed"
            fi
        done
        nat+=("$n")
        reg+=("$g")
        note "round $r/$ROUNDS: native $n MiB/s, regfs $g MiB/s"
    done
    add_row "$label" "MiB/s" "$(median "${nat[@]}")" "$(median "${reg[@]}")" throughput "$target"
}

# meta_case LABEL cold|warm  (on mount "pt"; cold runs remount it first)
meta_case() {
    local label=$1 temp=$2 r native=$BACKING/tree mnt=$SCRATCH/mnt-pt/tree-copy
    local nat=() reg=() errs=0 ne ge g_note
    log "$label ($ROUNDS rounds)"
    if [[ $temp == warm ]]; then
        walk "$native" >/dev/null
        walk "$mnt" >/dev/null
    fi
    for ((r = 1; r <= ROUNDS; r++)); do
        local order=(native regfs) n g
        ((r % 2)) || order=(regfs native)
        for who in "${order[@]}"; do
            if [[ $who == native ]]; then
                [[ $temp == cold ]] && drop_caches
                read -r n ne < <(walk "$native")
                ((ne == 0)) || die "walking the native tree failed"
            else
                if [[ $temp == cold ]]; then
                    stop_mount pt
                    start_mount pt
                    drop_caches
                fi
                read -r g ge < <(walk "$mnt")
                errs=$((errs + ge))
            fi
        done
        nat+=("$n")
        reg+=("$g")
        if ((ge > 0)); then g_note=" ($ge errors)"; else g_note=""; fi
        note "round $r/$ROUNDS: native $n s, regfs $g s$g_note"
    done
    ((errs == 0)) || FAILED=1
    add_row "$label" "s" "$(median "${nat[@]}")" "$(median "${reg[@]}")" time "$META_TARGET" "$errs"
}

# ---------------------------------------------------------------------------------
# Data.

started=$EPOCHREALTIME
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "creating a $SIZE_MB MiB blob"
chunk_mb=$((SIZE_MB < 64 ? SIZE_MB : 64))
head -c "${chunk_mb}M" /dev/urandom >"$SCRATCH/chunk"
{
    for ((i = 0; i < SIZE_MB / chunk_mb; i++)); do cat "$SCRATCH/chunk"; done
    head -c "$((SIZE_MB % chunk_mb))M" "$SCRATCH/chunk"
} >"$BACKING/$BLOB_REL"
rm -f "$SCRATCH/chunk"
cp "$BACKING/$BLOB_REL" "$BACKING/$COPY_REL"

ndirs=$(((FILES + PER_DIR - 1) / PER_DIR))
log "creating $FILES small files in $ndirs directories, twice"
# make_tree DIR: FILES files, PER_DIR per directory, created in the same order each time
# (the order decides where the inodes land, and so how much a cold walk reads).
make_tree() {
    if command -v python3 >/dev/null; then
        python3 - "$1" "$FILES" "$PER_DIR" <<'EOF'
import os, sys
root, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = b"sha256:" + b"0" * 64  # the size of a registry link file
for d in range((n + per - 1) // per):
    dp = os.path.join(root, "d%05d" % d)
    os.mkdir(dp)
    for f in range(min(per, n - d * per)):
        fd = os.open(os.path.join(dp, "f%03d" % f), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)
EOF
    else
        local d dp left
        for ((d = 0; d < ndirs; d++)); do
            dp=$1/$(printf 'd%05d' "$d")
            mkdir "$dp"
            left=$((FILES - d * PER_DIR))
            seq -f "$dp/f%03g" 0 $(((left < PER_DIR ? left : PER_DIR) - 1)) | xargs touch
        done
    fi
}
make_tree "$BACKING/tree"
make_tree "$BACKING/tree-copy"
sync

# ---------------------------------------------------------------------------------
# Mounts: "pt" is regfs as deployed (read passthrough), "nopt" the same with
# --no-passthrough, so the table shows what passthrough buys. One at a time: regfs
# refuses a second daemon on a store that one already serves.

log "mounting regfs ($REGFS)"
start_mount pt
if grep -q 'kernel read passthrough: on' "$SCRATCH/regfs-pt.log"; then
    note "passthrough mount: kernel read passthrough is on (kernel $(uname -r))"
else
    note "WARNING: the passthrough mount did not report 'kernel read passthrough: on'"
    note "(kernel $(uname -r)); its rows measure reads through the daemon:"
    sed 's/^/     /' "$SCRATCH/regfs-pt.log" >&2
fi
# Sanity: the mount shows the same data as the backing directory.
cmp "$BACKING/$BLOB_REL" "$SCRATCH/mnt-pt/$COPY_REL" || die "blob differs through the passthrough mount"
blob_case "blob read, cold" pt cold "$BLOB_TARGET"
blob_case "blob read, warm" pt warm "$BLOB_TARGET"
stop_mount pt

log "mounting regfs --no-passthrough"
start_mount nopt --no-passthrough
cmp "$BACKING/$BLOB_REL" "$SCRATCH/mnt-nopt/$COPY_REL" || die "blob differs through the --no-passthrough mount"
blob_case "blob read, cold, --no-passthrough" nopt cold "$BLOB_TARGET"
blob_case "blob read, warm, --no-passthrough" nopt warm "$BLOB_TARGET"
stop_mount nopt

log "mounting regfs for the metadata walks"
start_mount pt
# regfs keeps one open file per inode the kernel has cached, so a walk of the whole tree
# needs RLIMIT_NOFILE above the number of entries. The daemon raises its soft limit to
# the hard one (and the hard one to fs.nr_open if it has CAP_SYS_RESOURCE) and logs it.
entries=$((FILES + ndirs + 1))
nofile=$(sed -n 's/.* nofile=\([0-9]*\).*/\1/p' "$SCRATCH/regfs-pt.log" | tail -n 1)
note "regfs open-file limit: ${nofile:-unknown} (tree: $entries entries; shell hard limit $(ulimit -Hn))"
if [[ -n $nofile ]] && ((nofile < entries + 1000)); then
    note "WARNING: the daemon may open more files than its limit allows ($nofile) while the"
    note "kernel caches the tree's $entries inodes: walks through the mount may fail with EMFILE."
    note "Raise the hard limit (ulimit -Hn, needs CAP_SYS_RESOURCE) or use a smaller FILES."
fi
meta_case "metadata walk, cold" cold
meta_case "metadata walk, warm" warm
stop_mount pt

# ---------------------------------------------------------------------------------
# Report.

elapsed=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
echo
echo "regfs read benchmark: $SIZE_MB MiB blob, $FILES files in $ndirs dirs, median of $ROUNDS rounds"
echo "scratch on $fs_type ($fs_dev at $fs_mnt), kernel $(uname -r), $(nproc) CPUs${REGFS_ARGS:+, regfs options: $REGFS_ARGS}"
echo "load average at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the numbers)"
echo "ratio: regfs/native for throughput, native/regfs for time; higher is better, 1.00 = native speed"
echo
fmt='%-36s | %15s | %15s | %6s | %7s | %s\n'
# shellcheck disable=SC2059
printf "$fmt" "case" "native" "regfs" "ratio" "target" "result"
# shellcheck disable=SC2059
printf "$fmt" "$(printf '%.0s-' {1..36})" "---------------" "---------------" "------" "-------" "------"
for row in "${ROWS[@]}"; do
    IFS='|' read -r label unit n g ratio target errs <<<"$row"
    result=$(awk -v r="$ratio" -v t="$target" 'BEGIN { print (r >= t ? "PASS" : "BELOW") }')
    if ((errs > 0)); then
        result="ERROR ($errs walk errors through regfs)"
        ratio="-"
    fi
    if [[ $unit == s ]]; then digits=3; else digits=1; fi
    n=$(printf "%.${digits}f" "$n")
    g=$(printf "%.${digits}f" "$g")
    # shellcheck disable=SC2059
    printf "$fmt" "$label" "$n $unit" "$g $unit" "$ratio" ">= $target" "$result"
done
echo
echo "--no-passthrough rows are for comparison only: they show what kernel read passthrough buys."
echo "total time ${elapsed} s"
if ((FAILED)); then
    echo
    echo "ERROR: walks through regfs met errors (see the messages above), so those timings are"
    echo "of incomplete walks. regfs open-file limit: ${nofile:-unknown}; tree entries: $entries."
    exit 1
fi
