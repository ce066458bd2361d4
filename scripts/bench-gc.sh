#!/usr/bin/env bash
# Garbage-collection benchmark: `regfs gc --offline` against the registry's own collector
# (`docker-registry garbage-collect`, Debian's distribution 2.8) on the same store.
#
#   scripts/bench-gc.sh
#
# Generates a synthetic store of BLOBS blobs with scripts/gen-store.py (about 20% garbage,
# untagged images, moved tags, OCI indexes and referrers), then for each mode (default,
# --delete-untagged) and RUNS runs:
#   * copies the pristine store twice (cp -a), points the copy of config.yml at copy 1;
#   * times `docker-registry garbage-collect [--delete-untagged] COPY1/config.yml` and
#     `regfs gc --offline COPY2 --min-age 0s [--delete-untagged] --json` (the generated
#     store is fresh: the default minimum age would keep all of it), each after a `find` over its
#     copy so that both start with a warm cache; which one runs first alternates;
#   * compares the blob directories left in the two copies (comm), in both directions:
#       kept only by regfs     regfs deleted less. Expected with --delete-untagged, where
#                              regfs keeps the children of tagged indexes and the referrers
#                              of kept manifests that 2.8 deletes; in default mode a miss.
#       kept only by registry  regfs deleted a blob the registry kept: a SERIOUS finding
#                              (possible data loss); the script exits 1 after the report.
# The registry's own deletions are also checked against what gen-store.py predicted for
# 2.8, and after the first run of each mode the registry's collector is run in dry-run
# default mode over regfs's copy, as an outside check that regfs left no garbage behind
# that the registry would still find (reported, never fatal).
# Prints a table: medians, speedup (registry / regfs), target (>= 10x default, >= 20x
# --delete-untagged) and whether both deleted the same blobs.
#
# Environment:
#   REGFS_BIN        use this binary instead of building with `cargo build --release`
#   REGFS_GC_FLAGS   more flags for every `regfs gc --offline` run, split on spaces (e.g.
#                    --temp-files-everywhere: list every link directory for leftover
#                    *.tmp files, as the daemon's runs do)
#   REGISTRY_BIN     the registry binary (default docker-registry)
#   BLOBS            blobs in the store (default 50000)
#   RUNS             runs per mode, median taken (default 3)
#   SEED             gen-store.py --seed (default 1)
#   GARBAGE_FRACTION gen-store.py --garbage-fraction (default 0.2)
#   BENCH_DIR        where the scratch directory goes (default /var/tmp; it holds three
#                    copies of the store: about 3 x 1.1 GB and 3 x 280k inodes at 50k blobs)
#   BENCH_FS         dir (default): the scratch directory is on BENCH_DIR's filesystem as
#                    mounted; ext4-image: on a fresh ext4 filesystem made in an image file
#                    in BENCH_DIR and loop-mounted with nodiscard. Deleting is most of both
#                    collectors' work, and a filesystem mounted with online `discard`
#                    (as this VM's root is) waits for the disk on every freed block; the
#                    image shows the collectors' own costs on a filesystem mounted as
#                    Debian mounts one by default (TRIM left to fstrim.timer).
#   FLOOR            1 (default): after the first run of each mode, delete the paths regfs's
#                    plan names from two more fresh copies with scripts/delete-floor.py (GNU
#                    rm -rf, 1 and 16 processes) and print that time: what the filesystem
#                    takes to delete those paths with the standard tool. 0 skips it.
#   KEEP_SCRATCH=1   keep the scratch directory (copies, logs, blob lists) for inspection
#   GROWTH_SIZES     e.g. "50000 200000 1000000": instead of the runs above, how each
#                    collector's cost grows with the store. For each size, one store is
#                    generated (no copies: only dry runs, which delete nothing) and each
#                    collector's dry run, default and --delete-untagged, is timed RUNS
#                    times, interleaved (which one runs first alternates), warm cache; the
#                    table gives median wall seconds, peak RSS (GNU time's %M) and the
#                    ratio, and per collector the growth of time per blob against the
#                    first size. A store takes about 22 KiB and 5.6 inodes per blob on a
#                    4 KiB-block ext4 (1M blobs: ~22 GB, ~5.6M inodes); with
#                    BENCH_FS=ext4-image the image is made with 1 KiB blocks and
#                    inline_data (small files and directories in the inode), about
#                    2 KiB per blob.
#
# Slow on purpose: every run makes two fresh copies of the store. With the defaults on a
# 2-CPU VM whose ext4 creates an inode in ~0.3 ms it took ~30 minutes; BLOBS=5000 RUNS=1
# takes a couple of minutes.
#
# Exit status: 0 when every command succeeded and regfs never deleted a blob the
# registry kept; 1 otherwise (a target missed is reported, not an error).
set -euo pipefail
export LC_ALL=C # decimal points in $EPOCHREALTIME and awk

BLOBS=${BLOBS:-50000}
RUNS=${RUNS:-3}
SEED=${SEED:-1}
GARBAGE_FRACTION=${GARBAGE_FRACTION:-0.2}
FLOOR=${FLOOR:-1}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
REGISTRY_BIN=${REGISTRY_BIN:-docker-registry}
read -r -a EXTRA <<<"${REGFS_GC_FLAGS:-}"
MODES=(default delete-untagged)
declare -A TARGET=([default]=10 [delete-untagged]=20)

BENCH_NAME=bench-gc
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"

for v in BLOBS RUNS SEED; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((RUNS >= 1)) || die "RUNS must be at least 1"
((BLOBS >= 10)) || die "BLOBS must be at least 10"
[[ $FLOOR == 0 || $FLOOR == 1 ]] || die "FLOOR must be 0 or 1 (got '$FLOOR')"
[[ $GARBAGE_FRACTION =~ ^(0(\.[0-9]+)?|\.[0-9]+)$ ]] || die "GARBAGE_FRACTION must be in [0, 1) (got '$GARBAGE_FRACTION')"
[[ -d $BENCH_DIR ]] || die "BENCH_DIR $BENCH_DIR is not a directory"
BENCH_FS=${BENCH_FS:-dir}
[[ $BENCH_FS == dir || $BENCH_FS == ext4-image ]] || die "BENCH_FS must be dir or ext4-image (got '$BENCH_FS')"
[[ $BENCH_DIR != *[[:space:]:#\'\"]* ]] || die "BENCH_DIR must not contain whitespace, ':', '#' or quotes"
command -v python3 >/dev/null || die "python3 is needed (scripts/gen-store.py)"
REGISTRY=$(command -v "$REGISTRY_BIN") ||
    die "$REGISTRY_BIN not found; install it with 'apt-get install -y docker-registry' or set REGISTRY_BIN"

GEN=$ROOT/scripts/gen-store.py
[[ -f $GEN ]] || die "$GEN is missing"
find_regfs
# Fail before generating anything if this regfs has no offline collector.
"$REGFS" gc --help >/dev/null 2>&1 || die "'$REGFS gc --help' fails: this regfs has no gc command"

# ---------------------------------------------------------------------------------
# Scratch directory and cleanup.

SCRATCH=
IMAGE="" IMAGE_MNT=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [[ -n $IMAGE_MNT ]]; then
        if [[ ${KEEP_SCRATCH:-0} == 1 ]]; then
            echo "bench-gc: image $IMAGE left mounted at $IMAGE_MNT" >&2
        else
            umount "$IMAGE_MNT" && rmdir "$IMAGE_MNT" && rm -f "$IMAGE"
        fi
    fi
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then
        if [[ ${KEEP_SCRATCH:-0} == 1 ]]; then
            echo "bench-gc: scratch directory kept: $SCRATCH" >&2
        else
            rm -rf --one-file-system "$SCRATCH"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

GROWTH_SIZES=${GROWTH_SIZES:-}
for n in $GROWTH_SIZES; do
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 10)) || die "GROWTH_SIZES holds '$n', not a blob count of at least 10"
done
if [[ -n $GROWTH_SIZES ]]; then
    command -v /usr/bin/time >/dev/null && /usr/bin/time -f %M true 2>/dev/null ||
        die "GNU time (/usr/bin/time) is needed for peak RSS: apt-get install -y time"
    max_blobs=$(printf '%s\n' $GROWTH_SIZES | sort -n | tail -n 1)
fi

if [[ $BENCH_FS == ext4-image && -n $GROWTH_SIZES ]]; then
    # One store at a time, small files and directories inline: ~2 KiB per blob.
    IMAGE=$(mktemp "$BENCH_DIR/regfs-gc-bench.XXXXXX.img")
    truncate -s $((max_blobs * 8 * 1024 + (1 << 30))) "$IMAGE"
    mkfs.ext4 -q -F -b 1024 -I 256 -O inline_data -N $((max_blobs * 7 + 100000)) "$IMAGE" ||
        die "mkfs.ext4 $IMAGE failed"
    IMAGE_MNT=$(mktemp -d "$BENCH_DIR/regfs-gc-bench.XXXXXX.mnt")
    mount -o loop,nodiscard "$IMAGE" "$IMAGE_MNT" || die "cannot loop-mount $IMAGE (root needed)"
    SCRATCH=$(mktemp -d "$IMAGE_MNT/scratch.XXXXXX")
elif [[ $BENCH_FS == ext4-image ]]; then
    IMAGE=$(mktemp "$BENCH_DIR/regfs-gc-bench.XXXXXX.img")
    # Room for three copies of the store: per blob and copy 64 KiB and 7 inodes (it uses
    # about 22 KiB and 5.6), plus spare.
    truncate -s $((BLOBS * 3 * 64 * 1024 + (1 << 30))) "$IMAGE"
    mkfs.ext4 -q -F -N $((BLOBS * 3 * 7 + 100000)) "$IMAGE" || die "mkfs.ext4 $IMAGE failed"
    IMAGE_MNT=$(mktemp -d "$BENCH_DIR/regfs-gc-bench.XXXXXX.mnt")
    mount -o loop,nodiscard "$IMAGE" "$IMAGE_MNT" || die "cannot loop-mount $IMAGE (root needed)"
    SCRATCH=$(mktemp -d "$IMAGE_MNT/scratch.XXXXXX")
else
    SCRATCH=$(mktemp -d "$BENCH_DIR/regfs-gc-bench.XXXXXX")
fi
PRISTINE=$SCRATCH/pristine
C1=$SCRATCH/copy-registry
C2=$SCRATCH/copy-regfs
C3=$SCRATCH/copy-floor
LOGS=$SCRATCH/logs
mkdir -p "$LOGS"
read -r fs_dev fs_type < <(df -PT "$SCRATCH" | awk 'NR == 2 { print $1, $2 }')
fs_opts=$(findmnt -n -o OPTIONS --target "$SCRATCH" || echo unknown)
log "scratch dir $SCRATCH ($fs_type on $fs_dev, mounted $fs_opts)"

# A median printed to three decimals (report fields come with many more).
median3() { printf '%.3f\n' "$(median "$@")"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'; }

# Sorted names of the blob directories (64-hex digests) left in store DIR.
list_blobs() {
    find "$1/docker/registry/v2/blobs/sha256" -mindepth 2 -maxdepth 2 -type d -printf '%f\n' | sort
}

# Field of gen-store.json's "expected_deleted_blobs".
expected() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["expected_deleted_blobs"][sys.argv[2]])' \
        "$PRISTINE/gen-store.json" "$1"
}

# Points the config.yml of store copy DIR at DIR.
retarget_config() {
    local dir=$1
    sed -i "s|^\([[:space:]]*rootdirectory:\).*|\1 $dir|" "$dir/config.yml"
    grep -qx "[[:space:]]*rootdirectory: $dir" "$dir/config.yml" ||
        die "could not point $dir/config.yml at $dir"
}

# ---------------------------------------------------------------------------------
# Growth: dry runs only, one store per size.

# timed WHO MODE SIZE RUN: one dry run of WHO (registry or regfs) on $PRISTINE; sets
# RUN_S and RUN_KB (peak RSS).
timed() {
    local who=$1 mode=$2 size=$3 run=$4 flags=() out rc=0
    out=$LOGS/growth-$who-$mode-$size-$run
    [[ $mode == delete-untagged ]] && flags=(--delete-untagged)
    find "$PRISTINE" >/dev/null
    if [[ $who == registry ]]; then
        /usr/bin/time -f '%e %M' -o "$out.time" \
            "$REGISTRY" garbage-collect --dry-run "${flags[@]}" "$PRISTINE/config.yml" >"$out.log" 2>&1 || rc=$?
    else
        /usr/bin/time -f '%e %M' -o "$out.time" \
            "$REGFS" gc --offline "$PRISTINE" --min-age 0s --dry-run "${flags[@]}" "${EXTRA[@]}" --json >"$out.log" 2>"$out.err" || rc=$?
    fi
    ((rc == 0)) || die "$who dry run ($mode, $size blobs) exited $rc (log: $out.log)"
    read -r RUN_S RUN_KB < <(tail -n 1 "$out.time")
}

if [[ -n $GROWTH_SIZES ]]; then
    declare -A G_S=() G_KB=()
    for size in $GROWTH_SIZES; do
        rm -rf --one-file-system "$PRISTINE"
        log "growth: generating a store of $size blobs (seed $SEED)"
        t0=$EPOCHREALTIME
        python3 "$GEN" "$PRISTINE" --blobs "$size" --seed "$SEED" --garbage-fraction "$GARBAGE_FRACTION" \
            --quiet || die "gen-store.py failed for $size blobs"
        note "generated in $(elapsed "$t0" "$EPOCHREALTIME") s; $(du -sh "$PRISTINE" | cut -f1)"
        sync
        for mode in "${MODES[@]}"; do
            declare -A times=() rss=()
            for ((r = 1; r <= RUNS; r++)); do
                order=(registry regfs)
                ((r % 2)) || order=(regfs registry)
                for who in "${order[@]}"; do
                    timed "$who" "$mode" "$size" "$r"
                    times[$who]+="$RUN_S "
                    rss[$who]+="$RUN_KB "
                done
            done
            for who in registry regfs; do
                # shellcheck disable=SC2086
                G_S[$who,$mode,$size]=$(median3 ${times[$who]})
                # shellcheck disable=SC2086
                G_KB[$who,$mode,$size]=$(median ${rss[$who]})
            done
            note "$size blobs, $mode: registry ${G_S[registry,$mode,$size]} s," \
                "$((${G_KB[registry,$mode,$size]%.*} / 1024)) MiB; regfs ${G_S[regfs,$mode,$size]} s," \
                "$((${G_KB[regfs,$mode,$size]%.*} / 1024)) MiB (load $(cut -d' ' -f1-3 /proc/loadavg))"
            unset times rss
        done
    done
    rm -rf --one-file-system "$PRISTINE"
    echo
    echo "regfs gc growth: dry runs (mark and plan, nothing deleted), median of $RUNS, warm cache"
    echo "$(nproc) CPUs, scratch on $fs_type ($fs_dev, mounted $fs_opts), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "registry: $("$REGISTRY" --version 2>&1 | head -n 1); extra regfs gc flags: ${REGFS_GC_FLAGS:-none}"
    echo
    gfmt='%-16s | %9s | %12s | %12s | %12s | %12s | %9s | %14s | %14s\n'
    # shellcheck disable=SC2059
    printf "$gfmt" mode blobs "registry s" "registry MiB" "regfs s" "regfs MiB" ratio "registry us/b" "regfs us/b"
    # shellcheck disable=SC2059
    printf "$gfmt" "----------------" "---------" "------------" "------------" "------------" "------------" "---------" "--------------" "--------------"
    for mode in "${MODES[@]}"; do
        for size in $GROWTH_SIZES; do
            rs=${G_S[registry,$mode,$size]} fs=${G_S[regfs,$mode,$size]}
            # shellcheck disable=SC2059
            printf "$gfmt" "$mode" "$size" "$rs" "$((${G_KB[registry,$mode,$size]%.*} / 1024))" \
                "$fs" "$((${G_KB[regfs,$mode,$size]%.*} / 1024))" \
                "$(awk -v p="$rs" -v o="$fs" 'BEGIN { if (o < 0.001) o = 0.001; printf "%.1fx", p / o }')" \
                "$(awk -v t="$rs" -v n="$size" 'BEGIN { printf "%.1f", t * 1e6 / n }')" \
                "$(awk -v t="$fs" -v n="$size" 'BEGIN { printf "%.1f", t * 1e6 / n }')"
        done
    done
    echo "(us/b: microseconds per blob; constant means linear growth. RSS goal for regfs: < 256 MiB at 1M blobs)"
    exit 0
fi

# ---------------------------------------------------------------------------------
# The store.

log "generating a store of $BLOBS blobs (seed $SEED, garbage fraction $GARBAGE_FRACTION)"
t0=$EPOCHREALTIME
python3 "$GEN" "$PRISTINE" --blobs "$BLOBS" --seed "$SEED" --garbage-fraction "$GARBAGE_FRACTION" \
    2> >(sed 's/^/   /' >&2)
gen_s=$(elapsed "$t0" "$EPOCHREALTIME")
sync
list_blobs "$PRISTINE" >"$SCRATCH/blobs-pristine"
total=$(wc -l <"$SCRATCH/blobs-pristine")
((total == BLOBS)) || die "gen-store.py wrote $total blob directories, not $BLOBS"
declare -A EXPECT_REG=(
    [default]=$(expected default)
    [delete-untagged]=$(expected delete_untagged_registry_2_8)
)
EXPECT_AWARE=$(expected delete_untagged_index_aware)
note "generated in $gen_s s; $(du -sh "$PRISTINE" | cut -f1), $(find "$PRISTINE" | wc -l) inodes"
note "expected deletions: default ${EXPECT_REG[default]}, registry 2.8 --delete-untagged" \
    "${EXPECT_REG[delete-untagged]}, index/referrer-aware --delete-untagged $EXPECT_AWARE"

# ---------------------------------------------------------------------------------
# Runs.

SERIOUS=0
SERIOUS_FILES=()
declare -A ROW_REG=() ROW_REGFS=() ROW_SAME=() ROW_MARK=() ROW_SWEEP=() ROW_FLOOR=()
declare -A ROW_REG_DRY=() ROW_REGFS_DRY=()

# JSON field FIELD of regfs's report FILE.
field() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# floor_run MODE THREADS: bare deletion of what regfs's plan names, on a fresh copy;
# prints seconds.
floor_run() {
    local mode=$1 threads=$2 flags=() plan=$LOGS/floor-plan-$1.json
    [[ $mode == delete-untagged ]] && flags=(--delete-untagged)
    rm -rf --one-file-system "$C3"
    cp -a "$PRISTINE" "$C3"
    "$REGFS" gc --offline "$C3" --min-age 0s "${flags[@]}" "${EXTRA[@]}" --dry-run --json --list >"$plan" ||
        die "regfs gc --dry-run --list on $C3 failed"
    sync
    find "$C3" >/dev/null
    python3 "$ROOT/scripts/delete-floor.py" "$C3" "$plan" --processes "$threads" ||
        die "delete-floor.py failed on $C3"
}

# run_registry MODE RUN [dry]: times the registry's collector on C1 (with --dry-run when
# the third argument is "dry"); sets RUN_S and REG_SUMMARY.
run_registry() {
    local mode=$1 out=$LOGS/registry-$1-$2${3:+-$3}.log flags=() t0 t1 rc=0
    [[ $mode == delete-untagged ]] && flags=(--delete-untagged)
    [[ ${3:-} == dry ]] && flags+=(--dry-run)
    find "$C1" >/dev/null
    t0=$EPOCHREALTIME
    "$REGISTRY" garbage-collect "${flags[@]}" "$C1/config.yml" >"$out" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    if ((rc != 0)); then
        tail -n 20 "$out" >&2
        die "docker-registry garbage-collect ${flags[*]} exited $rc (log: $out)"
    fi
    RUN_S=$(elapsed "$t0" "$t1")
    REG_SUMMARY=$(grep -E '^[0-9]+ blobs marked' "$out" | tail -n 1 || true)
    [[ -n $REG_SUMMARY ]] || note "WARNING: no summary line in the registry's output ($out)"
    if grep -qiE 'level=(error|fatal|panic)|panic:' "$out"; then
        note "WARNING: the registry's collector logged errors:"
        grep -iE 'level=(error|fatal|panic)|panic:' "$out" | head -n 5 | sed 's/^/     /' >&2
    fi
}

# run_regfs MODE RUN [dry]: times `regfs gc --offline` on C2 (with --dry-run when the
# third argument is "dry"); sets RUN_S.
run_regfs() {
    local mode=$1 out=$LOGS/regfs-$1-$2${3:+-$3}.json err=$LOGS/regfs-$1-$2${3:+-$3}.err flags=() t0 t1 rc=0
    [[ $mode == delete-untagged ]] && flags=(--delete-untagged)
    [[ ${3:-} == dry ]] && flags+=(--dry-run)
    find "$C2" >/dev/null
    t0=$EPOCHREALTIME
    "$REGFS" gc --offline "$C2" --min-age 0s "${flags[@]}" "${EXTRA[@]}" --json >"$out" 2>"$err" || rc=$?
    t1=$EPOCHREALTIME
    if ((rc != 0)); then
        tail -n 20 "$err" >&2
        die "regfs gc --offline ${flags[*]} exited $rc (stderr: $err)"
    fi
    RUN_S=$(elapsed "$t0" "$t1")
    if ! python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$out" 2>/dev/null; then
        note "WARNING: regfs gc --json printed no valid JSON document ($out: $(head -c 200 "$out"))"
    fi
}

for mode in "${MODES[@]}"; do
    reg_times=() regfs_times=() outcomes=() mark_times=() sweep_times=()
    reg_dry_times=() regfs_dry_times=()
    log "mode $mode: $RUNS runs"
    for ((r = 1; r <= RUNS; r++)); do
        rm -rf --one-file-system "$C1" "$C2"
        # Two copies at once: creating inodes is slow on some virtual disks.
        cp -a "$PRISTINE" "$C1" &
        cp_pid=$!
        cp -a "$PRISTINE" "$C2"
        wait "$cp_pid" || die "cp -a $PRISTINE $C1 failed"
        retarget_config "$C1"
        retarget_config "$C2"
        sync # no writeback of the copies during the timings

        order=(registry regfs)
        ((r % 2)) || order=(regfs registry)
        # Dry runs first (they delete nothing): marking alone, side by side.
        for who in "${order[@]}"; do
            if [[ $who == registry ]]; then
                run_registry "$mode" "$r" dry
                reg_dry_times+=("$RUN_S")
            else
                run_regfs "$mode" "$r" dry
                regfs_dry_times+=("$RUN_S")
            fi
        done
        for who in "${order[@]}"; do
            if [[ $who == registry ]]; then
                run_registry "$mode" "$r"
                reg_s=$RUN_S
            else
                run_regfs "$mode" "$r"
                regfs_s=$RUN_S
            fi
        done
        reg_times+=("$reg_s")
        regfs_times+=("$regfs_s")
        mark_times+=("$(field "$LOGS/regfs-$mode-$r.json" mark_seconds)")
        sweep_times+=("$(field "$LOGS/regfs-$mode-$r.json" sweep_seconds)")

        list_blobs "$C1" >"$SCRATCH/blobs-registry"
        list_blobs "$C2" >"$SCRATCH/blobs-regfs"
        reg_del=$((total - $(wc -l <"$SCRATCH/blobs-registry")))
        regfs_del=$((total - $(wc -l <"$SCRATCH/blobs-regfs")))
        only_regfs=$(comm -13 "$SCRATCH/blobs-registry" "$SCRATCH/blobs-regfs" | wc -l)
        comm -23 "$SCRATCH/blobs-registry" "$SCRATCH/blobs-regfs" >"$SCRATCH/only-registry-$mode-$r"
        only_reg=$(wc -l <"$SCRATCH/only-registry-$mode-$r")
        note "run $r/$RUNS (${order[0]} first): registry $reg_s s, deleted $reg_del;" \
            "regfs $regfs_s s, deleted $regfs_del; kept only by regfs $only_regfs," \
            "kept only by registry $only_reg"
        note "  registry: ${REG_SUMMARY:-no summary}"
        exp_del=${EXPECT_REG[$mode]}
        if ((reg_del != exp_del)); then
            note "  NOTE: the registry deleted $reg_del blobs; gen-store.py predicted $exp_del for 2.8"
        fi
        if ((only_reg > 0)); then
            SERIOUS=1
            # Outside the scratch directory, which goes away on exit.
            keep=$BENCH_DIR/regfs-gc-bench-serious-$$-$mode-$r.txt
            sed 's/^/sha256:/' "$SCRATCH/only-registry-$mode-$r" >"$keep"
            SERIOUS_FILES+=("$keep")
            note "  SERIOUS: regfs deleted $only_reg blob(s) that the registry kept (all listed in $keep), e.g.:"
            head -n 5 "$keep" | sed 's/^/       /' >&2
        fi
        if ((only_regfs == 0 && only_reg == 0)); then
            outcomes+=("yes")
        else
            outcomes+=("no: $only_regfs kept only by regfs, $only_reg kept only by registry")
        fi

        if ((r == 1)); then
            # Outside check: what would the registry's own collector still delete in the
            # store regfs collected?
            chk=$LOGS/registry-check-$mode.log
            if "$REGISTRY" garbage-collect --dry-run "$C2/config.yml" >"$chk" 2>&1; then
                left=$(grep -c '^blob eligible for deletion' "$chk" || true)
                note "  check: docker-registry garbage-collect --dry-run on regfs's copy: $left blob(s) it would still delete"
            else
                note "  check: docker-registry garbage-collect --dry-run on regfs's copy FAILED:"
                tail -n 5 "$chk" | sed 's/^/     /' >&2
            fi
        fi
    done
    if [[ $FLOOR == 1 ]]; then
        f1=$(floor_run "$mode" 1)
        f16=$(floor_run "$mode" 16)
        note "rm -rf of regfs's planned paths: $f1 s with 1 process, $f16 s with 16"
        ROW_FLOOR[$mode]=$(printf '%s\n' "$f1" "$f16" | sort -g | head -n 1)
        rm -rf --one-file-system "$C3"
    fi
    ROW_REG_DRY[$mode]=$(median3 "${reg_dry_times[@]}")
    ROW_REGFS_DRY[$mode]=$(median3 "${regfs_dry_times[@]}")
    ROW_MARK[$mode]=$(median3 "${mark_times[@]}")
    ROW_SWEEP[$mode]=$(median3 "${sweep_times[@]}")
    ROW_REG[$mode]=$(median3 "${reg_times[@]}")
    ROW_REGFS[$mode]=$(median3 "${regfs_times[@]}")
    if [[ $(printf '%s\n' "${outcomes[@]}" | sort -u | wc -l) == 1 ]]; then
        ROW_SAME[$mode]=${outcomes[0]}
    else
        ROW_SAME[$mode]="varies between runs: $(printf '%s; ' "${outcomes[@]}")"
    fi
done
[[ ${KEEP_SCRATCH:-0} == 1 ]] || rm -rf --one-file-system "$C1" "$C2" "$C3"

# ---------------------------------------------------------------------------------
# Report.

echo
echo "regfs gc benchmark: $BLOBS blobs ($(expected default) garbage, seed $SEED), median of $RUNS runs, warm cache"
echo "$(nproc) CPUs, scratch on $fs_type ($fs_dev, mounted $fs_opts), kernel $(uname -r)"
echo "registry: $("$REGISTRY" --version 2>&1 | head -n 1)"
echo "store generated in $gen_s s; extra regfs gc flags: ${REGFS_GC_FLAGS:-none}"
echo
fmt='%-16s | %24s | %14s | %20s | %13s | %s\n'
# shellcheck disable=SC2059
printf "$fmt" "mode" "docker-registry median s" "regfs median s" "speedup (peer/regfs)" "target" "same deletions?"
# shellcheck disable=SC2059
printf "$fmt" "----------------" "------------------------" "--------------" "--------------------" "-------------" "---------------"
for mode in "${MODES[@]}"; do
    peer=${ROW_REG[$mode]} ours=${ROW_REGFS[$mode]}
    speedup=$(awk -v p="$peer" -v o="$ours" 'BEGIN { if (o < 0.001) o = 0.001; printf "%.1fx", p / o }')
    verdict=$(awk -v p="$peer" -v o="$ours" -v t="${TARGET[$mode]}" \
        'BEGIN { if (o < 0.001) o = 0.001; print (p / o >= t ? "PASS" : "BELOW") }')
    # shellcheck disable=SC2059
    printf "$fmt" "$mode" "$peer" "$ours" "$speedup" ">= ${TARGET[$mode]}x $verdict" "${ROW_SAME[$mode]}"
done
echo
fmt2='%-16s | %9s | %9s | %9s | %12s | %13s | %13s | %s\n'
# shellcheck disable=SC2059
printf "$fmt2" "mode" "peer dry" "regfs dry" "dry ratio" "regfs mark" "regfs sweep" "rm -rf same" "peer / rm -rf"
# shellcheck disable=SC2059
printf "$fmt2" "----------------" "---------" "---------" "---------" "------------" "-------------" "-------------" "-------------"
for mode in "${MODES[@]}"; do
    floor=${ROW_FLOOR[$mode]:-}
    bound=n/a
    [[ -n $floor ]] && bound=$(awk -v p="${ROW_REG[$mode]}" -v f="$floor" 'BEGIN { if (f < 0.001) f = 0.001; printf "%.1fx", p / f }')
    dry_ratio=$(awk -v p="${ROW_REG_DRY[$mode]}" -v o="${ROW_REGFS_DRY[$mode]}" 'BEGIN { if (o < 0.001) o = 0.001; printf "%.1fx", p / o }')
    # shellcheck disable=SC2059
    printf "$fmt2" "$mode" "${ROW_REG_DRY[$mode]}" "${ROW_REGFS_DRY[$mode]}" "$dry_ratio" \
        "${ROW_MARK[$mode]}" "${ROW_SWEEP[$mode]}" "${floor:-n/a}" "$bound"
done
echo "(seconds, medians. Dry runs mark and plan, deleting nothing. \"rm -rf same\" is the faster of"
echo "1 and 16 GNU rm processes deleting the paths regfs's plan names, on a fresh copy: what the"
echo "filesystem takes for those deletions; no collector deleting them can beat peer / rm -rf by much)"
echo
echo "expected deletions (gen-store.py): default ${EXPECT_REG[default]}; --delete-untagged: registry 2.8" \
    "${EXPECT_REG[delete-untagged]}, index/referrer-aware $EXPECT_AWARE"
echo "\"kept only by regfs\" is expected with --delete-untagged (children of tagged indexes and referrers"
echo "of kept manifests, which 2.8 deletes); in default mode both should delete exactly the garbage."
if ((SERIOUS)); then
    echo
    echo "SERIOUS: regfs deleted blobs that docker-registry kept; the digests are listed in:"
    printf '  %s\n' "${SERIOUS_FILES[@]}"
    echo "Rerun with KEEP_SCRATCH=1 to inspect the copies (those of the last run are kept)."
    exit 1
fi
