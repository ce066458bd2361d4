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
