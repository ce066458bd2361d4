#!/usr/bin/env bash
# File-operation benchmark for regfs: what a registry's filesystem driver does to the
# store, under concurrency, through a regfs mount against a plain directory.
#
#   sudo scripts/bench-fsops.sh
#
# Three workloads, each run by JOBS concurrent threads (a Python worker, scripts/lib/
# fsops.py, doing only system calls; its own cost is the same on both sides):
#   push     LAYERS small layers pushed as distribution's filesystem driver stores them:
#            per layer an upload directory, `startedat`, the data (LAYER_KB), a hash
#            state file, the data renamed into blobs/sha256/<xx>/<hex>/data, a
#            `_layers` link written, the upload directory removed (the metadata path);
#   write    FILES_PER_JOB files of FILE_MB per thread written as upload data, 1 MiB a
#            write, then fsync'd (concurrent stream writes);
#   read     every file of `write` read back, 1 MiB a read, by the same threads
#            (concurrent stream reads; warm: the files were just written).
# Native and regfs alternate, the order flipping each round; each figure is the median
# of ROUNDS, and the ratio is native time / regfs time (1.0 = as fast as the plain
# directory). Targets: push >= 0.95, write and read >= 0.9. Every round works in fresh
# directories of one scratch directory on BENCH_DIR's filesystem (the mount's backing
# directory and the plain directory are siblings there).
#
# Environment:
#   REGFS_BIN      use this binary instead of building with `cargo build --release`
#   REGFS_ARGS     extra options for `regfs mount` (word-split), e.g. "--no-passthrough"
#   BENCH_DIR      where the scratch directory goes (default /var/tmp; never tmpfs)
#   ROUNDS         rounds per workload (default 5)
#   FLOOR          1: also through bindfs (Debian's bindfs: a bare libfuse passthrough,
#                  multithreaded, kernel caches kept 60 s as regfs's default) over its
#                  own directory; columns nat/fuse (the floor any FUSE mount reaches
#                  here) and fuse/regfs (> 1: regfs faster than the bare passthrough)
#   JOBS           concurrent threads (default 8)
#   LAYERS         layers per push round (default 200)
#   LAYER_KB       size of each small layer (default 16)
#   FILES_PER_JOB  files each thread writes and reads (default 4)
#   FILE_MB        size of each of those files (default 16)
#
# Needs root (mount) and /dev/fuse. Exit status 0 when every run completed (targets
# missed are reported, not errors).
set -euo pipefail
export LC_ALL=C

ROUNDS=${ROUNDS:-5}
JOBS=${JOBS:-8}
LAYERS=${LAYERS:-200}
LAYER_KB=${LAYER_KB:-16}
FILES_PER_JOB=${FILES_PER_JOB:-4}
FILE_MB=${FILE_MB:-16}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
FLOOR=${FLOOR:-0}

BENCH_NAME=bench-fsops
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"

for v in ROUNDS JOBS LAYERS LAYER_KB FILES_PER_JOB FILE_MB; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $EUID -eq 0 ]] || die "must run as root (mounting)"
[[ -c /dev/fuse ]] || die "/dev/fuse missing; load the module with 'modprobe fuse'"
[[ -d $BENCH_DIR ]] || die "BENCH_DIR $BENCH_DIR is not a directory"
command -v python3 >/dev/null || die "python3 is needed (scripts/lib/fsops.py)"
[[ $FLOOR == 0 || $FLOOR == 1 ]] || die "FLOOR must be 0 or 1 (got '$FLOOR')"
WORKER=$ROOT/scripts/lib/fsops.py
[[ -f $WORKER ]] || die "$WORKER is missing"
extra_args=()
if [[ -n ${REGFS_ARGS:-} ]]; then
    read -r -a extra_args <<<"$REGFS_ARGS"
fi
find_regfs

SCRATCH=
DAEMON_PID=
FLOOR_PID=
cleanup() {
    local rc=$? m
    trap - EXIT INT TERM
    set +e
    [[ -n $DAEMON_PID ]] && stop_pid "$DAEMON_PID" 10
    [[ -n $FLOOR_PID ]] && stop_pid "$FLOOR_PID" 10
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then
        for m in "$SCRATCH/mnt" "$SCRATCH/fuse-mnt"; do
            if is_mounted "$m"; then
                umount "$m" 2>/dev/null || umount -l "$m"
            fi
        done
        rm -rf --one-file-system "$SCRATCH"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SCRATCH=$(mktemp -d "$BENCH_DIR/regfs-fsops.XXXXXX")
fs_type=$(df -PT "$SCRATCH" | awk 'NR == 2 { print $2 }')
[[ $fs_type != tmpfs ]] || die "BENCH_DIR is on tmpfs; use a directory on a real disk"
BACKING=$SCRATCH/backing
PLAIN=$SCRATCH/plain
mkdir -p "$BACKING/docker/registry/v2" "$PLAIN/docker/registry/v2" "$SCRATCH/mnt"

"$REGFS" mount "${extra_args[@]}" "$BACKING" "$SCRATCH/mnt" >"$SCRATCH/regfs.log" 2>&1 &
DAEMON_PID=$!
for ((i = 0; i < 100; i++)); do
    is_mounted "$SCRATCH/mnt" && break
    alive "$DAEMON_PID" || {
        cat "$SCRATCH/regfs.log" >&2
        die "regfs exited before mounting"
    }
    sleep 0.1
done
is_mounted "$SCRATCH/mnt" || die "regfs did not mount $SCRATCH/mnt within 10 s"
log "regfs mounted at $SCRATCH/mnt ($fs_type backing); plain directory $PLAIN"
WHO=(native regfs)
if ((FLOOR)); then
    mkdir -p "$SCRATCH/fuse-backing/docker/registry/v2" "$SCRATCH/fuse-mnt"
    mount_floor "$SCRATCH/fuse-backing" "$SCRATCH/fuse-mnt" "$SCRATCH/bindfs.log"
    WHO+=(fuse)
fi
declare -A ROOT_OF=([native]=$PLAIN [regfs]=$SCRATCH/mnt [fuse]=$SCRATCH/fuse-mnt)

# run WORKLOAD ROOT ROUND: prints seconds.
run() {
    python3 "$WORKER" "$1" "$2/docker/registry/v2" --round "$3" --jobs "$JOBS" \
        --layers "$LAYERS" --layer-kb "$LAYER_KB" --files-per-job "$FILES_PER_JOB" --file-mb "$FILE_MB"
}

declare -A TOOK=() # WORKLOAD|WHO -> seconds of each round
for ((r = 1; r <= ROUNDS; r++)); do
    # The order rotates every round (each target goes first in turn).
    order=()
    for ((k = 0; k < ${#WHO[@]}; k++)); do
        order+=("${WHO[(k + r - 1) % ${#WHO[@]}]}")
    done
    for w in push write read; do
        for who in "${order[@]}"; do
            s=$(run "$w" "${ROOT_OF[$who]}" "$r") || die "$w on $who (${ROOT_OF[$who]}) failed"
            TOOK[$w|$who]+="$s "
        done
    done
    # The files of this round's write/read go; the pushed blobs stay (a growing store).
    for who in "${WHO[@]}"; do
        rm -rf --one-file-system "${ROOT_OF[$who]}/docker/registry/v2/repositories/bench/_uploads"
    done
    note "round $r/$ROUNDS done (load $(cut -d' ' -f1-3 /proc/loadavg))"
done

echo
echo "regfs file operations: $JOBS threads, median of $ROUNDS rounds, ${WHO[*]} interleaved"
((FLOOR)) && echo "fuse: bindfs $(bindfs --version | awk '{ print $2 }'), a bare FUSE passthrough (nat/fuse: the floor of any FUSE mount here)"
echo "$(nproc) CPUs, $fs_type, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)${REGFS_ARGS:+, regfs options: $REGFS_ARGS}"
echo
fmt='%-8s | %-44s | %10s | %10s | %17s | %-11s'
ffmt=' | %10s | %8s | %10s'
# shellcheck disable=SC2059
{
    printf "$fmt" workload what "native s" "regfs s" "ratio (nat/regfs)" target
    ((FLOOR)) && printf "$ffmt" "fuse s" "nat/fuse" "fuse/regfs"
    echo
    printf "$fmt" "--------" "--------------------------------------------" "----------" "----------" "-----------------" "-----------"
    ((FLOOR)) && printf "$ffmt" "----------" "--------" "----------"
    echo
}
declare -A WHAT=(
    [push]="$LAYERS layers of $LAYER_KB KiB"
    [write]="$((JOBS * FILES_PER_JOB)) files of $FILE_MB MiB written"
    [read]="$((JOBS * FILES_PER_JOB)) files of $FILE_MB MiB read"
)
declare -A GOAL=([push]=0.95 [write]=0.9 [read]=0.9)
# per A B: A / B to two decimals (B at least 0.0001 s).
per() { awk -v a="$1" -v b="$2" 'BEGIN { if (b < 0.0001) b = 0.0001; printf "%.2f", a / b }'; }
for w in push write read; do
    # shellcheck disable=SC2086
    n=$(median ${TOOK[$w|native]})
    # shellcheck disable=SC2086
    g=$(median ${TOOK[$w|regfs]})
    ratio=$(per "$n" "$g")
    verdict=$(awk -v r="$ratio" -v t="${GOAL[$w]}" 'BEGIN { print (r >= t ? "PASS" : "BELOW") }')
    # shellcheck disable=SC2059
    printf "$fmt" "$w" "${WHAT[$w]}" "$n" "$g" "$ratio" ">= ${GOAL[$w]} $verdict"
    if ((FLOOR)); then
        # shellcheck disable=SC2086
        f=$(median ${TOOK[$w|fuse]})
        # shellcheck disable=SC2059
        printf "$ffmt" "$f" "$(per "$n" "$f")" "$(per "$f" "$g")"
    fi
    echo
done
