# shellcheck shell=bash
# Shell helpers shared by the benchmark scripts (bench-read.sh, bench-gc.sh,
# bench-registry.sh). Sourced, never run: set BENCH_NAME (the script's name, for
# messages) and ROOT (the checkout) first.

die() {
    echo "$BENCH_NAME: error: $*" >&2
    exit 1
}
log() { echo "== $*" >&2; }
note() { echo "   $*" >&2; }

# The median of the numbers given (the mean of the middle two for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

alive() { # pid: running and not a zombie
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && ${st%% *} != Z ]]
}

# stop_pid PID GRACE: SIGTERM, up to GRACE seconds to go, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1 grace=$2 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        echo "$BENCH_NAME: pid $pid ignored SIGTERM for $grace s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

is_mounted() { awk -v p="$1" '$2 == p { found = 1 } END { exit !found }' /proc/mounts; }

# mount_floor BACKING MNT LOG: bindfs (a bare libfuse passthrough, no policy,
# multithreaded) of BACKING at MNT, the kernel keeping entries, attributes and absent
# names 60 s (regfs's default --attr-timeout), started in the background with its output
# in LOG; returns once mounted and sets FLOOR_PID. The FLOOR=1 target of the benchmarks.
mount_floor() {
    local backing=$1 mnt=$2 logf=$3 i
    command -v bindfs >/dev/null || die "FLOOR=1 needs bindfs (apt-get install -y bindfs)"
    log "mounting bindfs $(bindfs --version | awk '{ print $2 }') (the bare FUSE floor): $backing at $mnt"
    bindfs -f --multithreaded -o allow_other,entry_timeout=60,attr_timeout=60,negative_timeout=60 \
        "$backing" "$mnt" >>"$logf" 2>&1 &
    FLOOR_PID=$!
    for ((i = 0; i < 100; i++)); do
        is_mounted "$mnt" && return 0
        alive "$FLOOR_PID" || { cat "$logf" >&2; die "bindfs exited before mounting $mnt"; }
        sleep 0.1
    done
    die "bindfs did not mount $mnt within 10 s"
}

# Cold-cache runs: write back, then drop the page, dentry and inode caches (root only).
drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# Sets REGFS: $REGFS_BIN when given, else a release build of this checkout.
find_regfs() {
    if [[ -n ${REGFS_BIN:-} ]]; then
        REGFS=$REGFS_BIN
        [[ -x $REGFS ]] || die "REGFS_BIN=$REGFS is not executable"
    else
        log "building regfs (cargo build --release)"
        cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
        REGFS=${CARGO_TARGET_DIR:-$ROOT/target}/release/regfs
        [[ -x $REGFS ]] || die "build finished but $REGFS is missing"
    fi
}
