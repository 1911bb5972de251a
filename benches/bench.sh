#!/usr/bin/env bash
# benches/bench.sh — end-to-end benchmark of ston-fs.
#
#   sudo bash benches/bench.sh            # full run, a few minutes
#   sudo BENCH_QUICK=1 bash benches/bench.sh   # smaller sizes, for iteration
#
# Root is needed: FUSE mounts, /proc/sys/vm/drop_caches and apt-get.
#
# Every figure is measured against a baseline in the same run on the same
# machine (curl from the same nginx, or a local copy of the same file), and the
# ratio is what matters: absolute numbers on a 2-core VM mean little alone.
# The origin is a private nginx on 127.0.0.1 whose access log records body
# bytes and Range of every request, so origin traffic is counted exactly.
#
# Output: the table on stdout, plus benches/results/latest.{md,json,png}.
# The script reports; it never fails because a target was missed. It exits
# non-zero only if a step could not be run (the table then says "error").
#
# Environment:
#   BENCH_QUICK=1          256 MiB file, 200 small files, 5 s fio, 1 repetition
#   STON_FS_BIN=PATH       use this binary; otherwise `cargo build --release`
#   BENCH_BLOCK_SIZE=1M    ston-fs block_size (figure 6 is reported in these blocks)
#   STON_FS_OPTS=...       extra -o options (default max_cache_size=8G)
#   BENCH_REPS=N           repetitions of the throughput figures (median; default 5, quick 1)
#   BENCH_TMPDIR=DIR       parent of the temp dir (default /var/tmp; needs ~3.5 GiB)
#   BENCH_RESULTS_DIR=DIR  default benches/results
#   BENCH_NO_INSTALL=1     never call apt-get
#   BENCH_KEEP_TMP=1       keep the temp dir (logs, access log) after the run
#   BENCH_NO_PEERS=1       skip the peer figure (rclone mount of the same file)
set -euo pipefail
# Without this a failing command inside $(...) (dd on a broken mount, fio)
# would not fail the step: the substitution's status would be the last command's.
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

# ----------------------------------------------------------------- settings
QUICK=${BENCH_QUICK:-0}
if [[ $QUICK == 1 ]]; then
    BIG_MIB=256; MID_MIB=64; N_SMALL=200; FIO_RUNTIME=5; REPS=${BENCH_REPS:-1}
else
    BIG_MIB=1024; MID_MIB=128; N_SMALL=2000; FIO_RUNTIME=10; REPS=${BENCH_REPS:-5}
fi
SMALL_SIZE=4096
N_RANDOM=200          # figure 6: random 4 KiB reads of a cold file
RANDOM_SEED=42
N_READERS=16          # figure 9: concurrent readers of one cold file
FIO_JOBS=4
BLOCK_SIZE_OPT=${BENCH_BLOCK_SIZE:-1M}
EXTRA_OPTS=${STON_FS_OPTS:-max_cache_size=8G}
MOUNT_OPTS="block_size=${BLOCK_SIZE_OPT}${EXTRA_OPTS:+,$EXTRA_OPTS}"
RESULTS_DIR=${BENCH_RESULTS_DIR:-$BENCH_DIR/results}
# Upper bounds so that a hung mount can never hang the benchmark.
READ_TIMEOUT=300      # one big sequential read (>= 3.5 MB/s for 1 GiB)
STEP_TIMEOUT=300      # one python loop / one fio run (+ its runtime)
MOUNT_TIMEOUT=30

BIG_SIZE=$((BIG_MIB * 1024 * 1024))
MID_SIZE=$((MID_MIB * 1024 * 1024))

# Python for helpers and the chart: Debian's python3-matplotlib is installed
# for /usr/bin/python3, which may differ from a pyenv/venv python3 on PATH.
PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3 || true)
HELPERS="$BENCH_DIR/helpers.py"

# State shared with steps that run in subshells lives in files under $TMP.
TMP=""
NGINX_PID=""
STEP_FAILED=0

log() { printf '[bench %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ set-up

require_root() {
    [[ $(id -u) == 0 ]] || die "run as root (FUSE mount, drop_caches): sudo bash benches/bench.sh"
    [[ -c /dev/fuse ]] || die "/dev/fuse missing"
    [[ -w /proc/sys/vm/drop_caches ]] || die "/proc/sys/vm/drop_caches not writable (container without privileges?)"
}

# Idempotent: only calls apt-get when something is actually missing.
install_deps() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v fio >/dev/null 2>&1 || missing+=(fio)
    { [[ -n $PY ]] && "$PY" -c 'import matplotlib' >/dev/null 2>&1; } || missing+=(python3-matplotlib)
    ((${#missing[@]} == 0)) && return 0
    [[ ${BENCH_NO_INSTALL:-0} == 1 ]] && die "missing: ${missing[*]} (BENCH_NO_INSTALL=1)"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    local pkgs=() p
    for p in "${missing[@]}"; do
        if [[ $p == nginx ]]; then
            # nginx-light is the smallest flavour where it still exists (Debian 12);
            # later releases only ship "nginx".
            if apt-cache show nginx-light >/dev/null 2>&1; then pkgs+=(nginx-light); else pkgs+=(nginx); fi
        else
            pkgs+=("$p")
        fi
    done
    apt-get install -y -qq "${pkgs[@]}" >/dev/null
    PY=/usr/bin/python3
}

find_cargo() {
    local c
    for c in "$(command -v cargo 2>/dev/null || true)" "${HOME:-/root}/.cargo/bin/cargo" /root/.cargo/bin/cargo; do
        [[ -n $c && -x $c ]] && { echo "$c"; return 0; }
    done
    return 1
}

build() {
    if [[ -n ${STON_FS_BIN:-} ]]; then
        BIN=$(readlink -f "$STON_FS_BIN")
        [[ -x $BIN ]] || die "STON_FS_BIN=$STON_FS_BIN is not executable"
        log "using STON_FS_BIN=$BIN"
        return
    fi
    log "cargo build --release"
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
        # Under sudo, build as the invoking user so target/ does not become root-owned.
        runuser -u "$SUDO_USER" -- bash -lc "cd '$REPO_DIR' && cargo build --release" >&2
    else
        local cargo
        cargo=$(find_cargo) || die "cargo not found (install rustup, or set STON_FS_BIN)"
        (cd "$REPO_DIR" && "$cargo" build --release) >&2
    fi
    BIN="$REPO_DIR/target/release/ston-fs"
    [[ -x $BIN ]] || die "$BIN missing after build"
}

make_tmp() {
    local parent=${BENCH_TMPDIR:-/var/tmp}
    local need_kib=$(( (BIG_SIZE * 4 + MID_SIZE + 64 * 1024 * 1024) / 1024 ))
    local avail_kib
    avail_kib=$(df -Pk "$parent" | awk 'NR==2 {print $4}')
    ((avail_kib > need_kib)) || die "$parent has ${avail_kib} KiB free, need ${need_kib} KiB"
    TMP=$(mktemp -d "$parent/ston-fs-bench.XXXXXX")
    # nginx workers run unprivileged and must be able to read the docroot.
    chmod 755 "$TMP"
    mkdir -p "$TMP"/{www,local,cache,mnt,ng,marks}
    : >"$TMP/results.tsv"; : >"$TMP/checks.tsv"; : >"$TMP/meta.tsv"; : >"$TMP/daemon.log"
    echo 0 >"$TMP/restarts"
}

# Random data so nothing (compression, dedup, sparse files) can flatter a side.
# Each file is different, so ston-fs cannot answer one from another's cache.
gen_files() {
    log "generating test files in $TMP (${BIG_MIB} MiB x2, ${MID_MIB} MiB, ${N_SMALL} x 4 KiB)"
    local p=() 
    dd if=/dev/urandom of="$TMP/www/big.bin" bs=1M count="$BIG_MIB" iflag=fullblock status=none & p+=($!)
    dd if=/dev/urandom of="$TMP/www/big2.bin" bs=1M count="$BIG_MIB" iflag=fullblock status=none & p+=($!)
    local i
    for i in "${p[@]}"; do wait "$i"; done
    dd if=/dev/urandom of="$TMP/www/mid.bin" bs=1M count="$MID_MIB" iflag=fullblock status=none
    mkdir -p "$TMP/local/small"
    "$PY" "$HELPERS" genfiles "$TMP/www" "$TMP/local/small" "$N_SMALL" "$SMALL_SIZE" 7
    # The baseline side reads its own copy, as a user would without ston-fs.
    cp "$TMP/www/big.bin" "$TMP/local/big.bin"
    chmod -R a+rX "$TMP/www"
    sync   # no pending writeback from set-up may disturb the first measurement
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Own config, pid, logs and temp paths in $TMP/ng; listens on a free loopback port.
start_nginx() {
    local ng="$TMP/ng" nginx grp temp_paths="" attempt port
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    grp=nogroup; getent group nogroup >/dev/null || grp=nobody
    # Point every compiled-in temp path at our dir (only for modules that exist),
    # so nothing under /var/lib/nginx is needed.
    local m
    temp_paths+="    client_body_temp_path $ng/client_body;"$'\n'
    for m in proxy fastcgi uwsgi scgi; do
        "$nginx" -V 2>&1 | grep -q -- "--without-http_${m}_module" ||
            temp_paths+="    ${m}_temp_path $ng/${m};"$'\n'
    done
    for attempt in 1 2 3; do
        port=$(free_port)
        TEMP_PATHS=$temp_paths "$PY" - "$BENCH_DIR/nginx.conf.in" "$ng/nginx.conf" <<EOF
import os, sys
t = open(sys.argv[1]).read()
for k, v in {"@NGDIR@": "$ng", "@PORT@": "$port", "@DOCROOT@": "$TMP/www",
             "@USER@": "nobody", "@GROUP@": "$grp",
             "@TEMP_PATHS@": os.environ["TEMP_PATHS"].rstrip()}.items():
    t = t.replace(k, v)
open(sys.argv[2], "w").write(t)
EOF
        "$nginx" -t -q -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log" ||
            die "generated nginx config is invalid: $ng/nginx.conf"
        "$nginx" -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log" </dev/null >>"$ng/stdout.log" 2>&1 &
        NGINX_PID=$!
        echo "$NGINX_PID" >"$TMP/nginx.pid.ours"
        local i
        for i in $(seq 1 50); do
            if curl -sf -o /dev/null "http://127.0.0.1:$port/s00000.bin"; then
                ORIGIN="http://127.0.0.1:$port/"
                ACCESS_LOG="$ng/access.log"
                log "nginx $NGINX_PID serving $TMP/www at $ORIGIN"
                return 0
            fi
            kill -0 "$NGINX_PID" 2>/dev/null || break
            sleep 0.1
        done
        log "nginx did not come up on port $port (attempt $attempt): $(tail -n 3 "$ng/error.log" 2>/dev/null)"
        stop_nginx
    done
    die "could not start nginx"
}

stop_nginx() {
    [[ -n $NGINX_PID ]] || return 0
    if kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -TERM "$NGINX_PID" 2>/dev/null || true     # fast shutdown, workers follow
        local i
        for i in $(seq 1 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NGINX_PID" 2>/dev/null || true
    fi
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=""
}

# ------------------------------------------------------------ measurement

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

now_ns() { date +%s%N; }

# MB/s (10^6 bytes per second) from bytes and nanoseconds.
mbps() { awk -v b="$1" -v ns="$2" 'BEGIN { printf "%.1f", b / (ns / 1e9) / 1e6 }'; }

median() { "$PY" "$HELPERS" median "$@"; }

# Sequential read of a file with dd bs=1M; prints MB/s.
timed_read() {
    local path=$1 size t0 t1
    size=$(stat -c %s "$path")
    t0=$(now_ns)
    timeout -k 5 "$READ_TIMEOUT" dd if="$path" of=/dev/null bs=1M status=none
    t1=$(now_ns)
    mbps "$size" $((t1 - t0))
}

# Same file straight from the same nginx, as a plain HTTP client sees it.
timed_curl() {
    local url=$1 size=$2 t0 t1
    t0=$(now_ns)
    timeout -k 5 "$READ_TIMEOUT" curl -sf -o /dev/null "$url"
    t1=$(now_ns)
    mbps "$size" $((t1 - t0))
}

# The same bytes written to a new file on the cache's file system: the fastest any cache that
# stores what it reads can go, whatever the network. No fsync, as ston-fs syncs only later.
timed_fill() {
    local src=$1 dst=$2 size t0 t1
    size=$(stat -c %s "$src")
    t0=$(now_ns)
    timeout -k 5 "$READ_TIMEOUT" dd if="$src" of="$dst" bs=1M status=none
    t1=$(now_ns)
    rm -f "$dst"
    mbps "$size" $((t1 - t0))
}

# Access-log position (line count). nginx writes a line when a request ends.
log_mark() { wc -l <"$ACCESS_LOG"; }

# Wait until the access log has been quiet for 1 s (bounded to 25 s), so
# read-ahead still in flight after the reader finished is counted too.
log_settle() {
    local prev=-1 cur quiet=0 i
    for i in $(seq 1 100); do
        cur=$(log_mark)
        if [[ $cur == "$prev" ]]; then
            quiet=$((quiet + 1))
            ((quiet >= 4)) && return 0
        else
            quiet=0; prev=$cur
        fi
        sleep 0.25
    done
}

# "requests body_bytes non_2xx" for log lines after mark $1 (up to $2 or EOF), URI regex $3.
log_stats() {
    local from=$1 to=${2:-} re=${3:-}
    "$PY" "$HELPERS" logstats "$ACCESS_LOG" --from "$from" ${to:+--to "$to"} ${re:+--uri "$re"}
}

# record ID WORKLOAD FIGURE VALUE UNIT BASELINE BASELINE_UNIT TARGET_OP TARGET TARGET_TEXT [NOTE]
record() {
    local IFS=$'\t'
    echo "$*" >>"$TMP/results.tsv"
}
check() { printf '%s\t%s\t%s\n' "$1" "$2" "${3:-}" >>"$TMP/checks.tsv"; }
meta() { printf '%s\t%s\n' "$1" "$2" >>"$TMP/meta.tsv"; }

# ------------------------------------------------------------ the mount

is_mounted() { awk -v m="$TMP/mnt" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

daemon_pid() { cat "$TMP/daemon.pid" 2>/dev/null || true; }

# Foreground mode in the background: we know the pid for RSS and for cleanup,
# and the daemon's log goes to our file.
mount_fs() {
    local mnt="$TMP/mnt" pid i
    echo "--- mount $(date +%T) ---" >>"$TMP/daemon.log"
    "$BIN" -f --cache-dir "$TMP/cache" -o "$MOUNT_OPTS" "$ORIGIN" "$mnt" </dev/null >>"$TMP/daemon.log" 2>&1 &
    pid=$!
    echo "$pid" >"$TMP/daemon.pid"
    for i in $(seq 1 $((MOUNT_TIMEOUT * 10))); do
        if is_mounted; then
            grep -q "fuse.ston-fs" <(awk -v m="$mnt" '$2 == m' /proc/mounts) ||
                log "warning: mount type is $(awk -v m="$mnt" '$2 == m {print $3}' /proc/mounts), expected fuse.ston-fs"
            awk '/^VmRSS/ {print $2}' "/proc/$pid/status" >"$TMP/rss_at_mount" 2>/dev/null || true
            touch "$TMP/mounted_once"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            log "ston-fs exited before the mount appeared; log tail:"
            tail -n 15 "$TMP/daemon.log" >&2
            return 1
        fi
        sleep 0.1
    done
    log "mount did not appear within ${MOUNT_TIMEOUT}s"
    return 1
}

# FUSE connection id of our mount, from mountinfo (no stat(), which could hang).
fuse_conn() { awk -v m="$TMP/mnt" '$5 == m { split($3, d, ":"); print d[2] }' /proc/self/mountinfo | head -n1; }

umount_fs() {
    local mnt="$TMP/mnt" pid i conn
    if is_mounted; then
        if ! timeout 20 umount "$mnt" 2>/dev/null; then
            log "umount failed; aborting the FUSE connection and detaching"
            conn=$(fuse_conn)
            if [[ -n $conn && -e /sys/fs/fuse/connections/$conn/abort ]]; then
                echo 1 >"/sys/fs/fuse/connections/$conn/abort" || true
            fi
            umount -l "$mnt" 2>/dev/null || true
        fi
    fi
    pid=$(daemon_pid)
    if [[ -n $pid ]]; then
        # Unmounting ends the daemon's session loop; give it time to exit cleanly.
        for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "ston-fs $pid still running 10 s after unmount; sending TERM"
            check "ston-fs exits by itself after unmount" FAIL "pid $pid needed a signal"
            kill -TERM "$pid" 2>/dev/null || true
            sleep 2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        rm -f "$TMP/daemon.pid"
    fi
}

# Make sure a live mount exists (a failed step may have killed the daemon);
# keeps the cache dir, counts restarts so figure 10 can say so.
ensure_mount() {
    local pid
    pid=$(daemon_pid)
    if is_mounted && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        return 0
    fi
    if [[ -e $TMP/mounted_once ]]; then
        log "mount is gone; remounting (cache dir kept)"
        echo $(($(cat "$TMP/restarts") + 1)) >"$TMP/restarts"
    fi
    umount_fs
    mount_fs
}

# -------------------------------------------------------------- figures

# "min–max" of the numbers, for the notes: a median alone hides how noisy a VM is.
spread() { printf '%s\n' "$@" | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%s–%s", lo, hi}'; }

# Odd runs measure ston-fs first, even runs the baseline first, so neither side
# always inherits the other's leftovers (writeback, CPU caches, host disk cache).
fs_first() { (($1 % 2 == 1)); }

# 1 + 4: cold sequential read through a fresh mount with an empty cache, vs
# curl of the same file from the same nginx. The origin file is made hot in
# the page cache before each side, so both sides get the same origin.
step_cold() {
    local r fs cu fi fsv=() cuv=() fiv=() bytes_max=0 reqs_last=0 mark reqs bytes bad
    for r in $(seq 1 "$REPS"); do
        # Fresh daemon, empty cache dir, nothing pending on disk.
        umount_fs
        rm -rf "$TMP/cache" && mkdir "$TMP/cache"
        cat "$TMP/www/big.bin" >/dev/null
        sync
        if ! fs_first "$r"; then
            cu=$(timed_curl "${ORIGIN}big.bin" "$BIG_SIZE")
            fi=$(timed_fill "$TMP/www/big.bin" "$TMP/fill.bin")
            sync
        fi
        mark=$(log_mark)
        mount_fs
        fs=$(timed_read "$TMP/mnt/big.bin")
        log_settle
        read -r reqs bytes bad < <(log_stats "$mark")
        if fs_first "$r"; then
            sync   # the cache file's writeback must not overlap curl
            cu=$(timed_curl "${ORIGIN}big.bin" "$BIG_SIZE")
            fi=$(timed_fill "$TMP/www/big.bin" "$TMP/fill.bin")
            sync
        fi
        log "cold rep $r/$REPS: ston-fs $fs MB/s vs curl $cu MB/s, local file fill $fi MB/s; origin $bytes B in $reqs requests ($bad non-2xx)"
        fsv+=("$fs"); cuv+=("$cu"); fiv+=("$fi")
        ((bytes > bytes_max)) && bytes_max=$bytes
        reqs_last=$reqs
    done
    median "${fsv[@]}" >"$TMP/cold_median"
    record 1 "cold sequential read" "MB/s, fresh mount, empty cache (dd bs=1M)" \
        "$(median "${fsv[@]}")" "MB/s" "$(median "${cuv[@]}")" "MB/s" ">=" 0.9 "≥ 0.9×" \
        "baseline: curl of the same file from the same nginx; $REPS runs: ston-fs $(spread "${fsv[@]}"), curl $(spread "${cuv[@]}") MB/s"
    record 1b "cold read vs filling a local file" "MB/s; baseline: dd of the origin file to a new file beside the cache" \
        "$(median "${fsv[@]}")" "MB/s" "$(median "${fiv[@]}")" "MB/s" "" "" "context" \
        "the ceiling for any cache that stores what it reads: the same bytes written to a new file on the cache's file system (no fsync); $REPS runs: $(spread "${fiv[@]}") MB/s"
    record 4 "cold read origin traffic" "origin bytes ÷ file size" \
        "$bytes_max" "B" "$BIG_SIZE" "B" "==" 1.0 "1.00" \
        "all requests after the mount; worst of $REPS run(s); $reqs_last requests in the last run"
}

# Rewrites a baseline copy and flushes it, right before a warm figure. The
# ston-fs cache was just written too, so both sides' data went to disk about
# equally recently: on a VM the host's own cache of the disk image otherwise
# favours whichever file was written last, by up to 3x.
refresh_local() {
    local src
    for src in "$@"; do
        cp -f "$TMP/www/$src" "$TMP/local/$src.new" && mv -f "$TMP/local/$src.new" "$TMP/local/$src"
    done
    sync
}

# 2: everything is in the ston-fs cache dir; the page cache is dropped before
# each side, so both read from disk. Origin requests here should be zero.
step_warm() {
    local r fs lo fsv=() lov=() mark reqs bytes bad total_reqs=0
    refresh_local big.bin
    for r in $(seq 1 "$REPS"); do
        if ! fs_first "$r"; then drop_caches; lo=$(timed_read "$TMP/local/big.bin"); fi
        drop_caches
        mark=$(log_mark)
        fs=$(timed_read "$TMP/mnt/big.bin")
        log_settle
        read -r reqs bytes bad < <(log_stats "$mark")
        total_reqs=$((total_reqs + reqs))
        if fs_first "$r"; then drop_caches; lo=$(timed_read "$TMP/local/big.bin"); fi
        log "warm rep $r/$REPS: ston-fs $fs MB/s vs local copy $lo MB/s; origin requests $reqs"
        fsv+=("$fs"); lov+=("$lo")
    done
    record 2 "warm sequential read" "MB/s, cached, page cache dropped" \
        "$(median "${fsv[@]}")" "MB/s" "$(median "${lov[@]}")" "MB/s" ">=" 0.8 "≥ 0.8×" \
        "baseline: local copy after the same drop; $REPS runs: ston-fs $(spread "${fsv[@]}"), local $(spread "${lov[@]}") MB/s; origin requests during warm reads: $total_reqs"
    check "warm read of big.bin makes no origin request" \
        "$([[ $total_reqs == 0 ]] && echo ok || echo FAIL)" "$total_reqs requests"
}

# 3: page cache populated on both sides (one priming read each, not timed).
step_hot() {
    local r fs lo fsv=() lov=() n
    timed_read "$TMP/mnt/big.bin" >/dev/null
    timed_read "$TMP/local/big.bin" >/dev/null
    n=$((REPS < 3 ? 3 : REPS))   # cheap, so always at least 3
    for r in $(seq 1 "$n"); do
        if fs_first "$r"; then
            fs=$(timed_read "$TMP/mnt/big.bin"); lo=$(timed_read "$TMP/local/big.bin")
        else
            lo=$(timed_read "$TMP/local/big.bin"); fs=$(timed_read "$TMP/mnt/big.bin")
        fi
        log "hot rep $r/$n: ston-fs $fs MB/s vs local copy $lo MB/s"
        fsv+=("$fs"); lov+=("$lo")
    done
    record 3 "hot re-read" "MB/s, file in page cache" \
        "$(median "${fsv[@]}")" "MB/s" "$(median "${lov[@]}")" "MB/s" ">=" 0.8 "≥ 0.8×" \
        "baseline: local copy from the page cache; $n runs: ston-fs $(spread "${fsv[@]}"), local $(spread "${lov[@]}") MB/s"
    # Correctness: the bytes served must be the origin's bytes.
    if timeout -k 5 "$READ_TIMEOUT" cmp -s "$TMP/mnt/big.bin" "$TMP/www/big.bin"; then
        check "big.bin via ston-fs == origin file" ok
    else
        check "big.bin via ston-fs == origin file" FAIL "cmp reports a difference"
    fi
}

# IOPS of one fio run (identical options for both sides).
fio_iops() {
    local path=$1 out
    out=$(timeout -k 5 $((FIO_RUNTIME + STEP_TIMEOUT)) fio --name=randread --filename="$path" \
        --readonly --rw=randread --bs=4k --numjobs="$FIO_JOBS" --ioengine=psync --direct=0 \
        --invalidate=0 --time_based --runtime="$FIO_RUNTIME" --size="$BIG_SIZE" \
        --randrepeat=1 --group_reporting --output-format=json)
    "$PY" -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["jobs"][0]["read"]["iops"])' <<<"$out"
}

# 5: 4 KiB random reads, 4 jobs. "warm" as in figure 2 (cache dir full, page
# cache dropped before each side); 5b repeats it with the page cache hot.
step_fio() {
    local fs lo mark reqs bytes bad
    drop_caches
    mark=$(log_mark)
    fs=$(fio_iops "$TMP/mnt/big.bin")
    log_settle
    read -r reqs bytes bad < <(log_stats "$mark")
    drop_caches
    lo=$(fio_iops "$TMP/local/big.bin")
    log "fio warm: ston-fs $fs IOPS vs local copy $lo IOPS; origin requests $reqs"
    record 5 "fio 4K randread, 4 jobs, warm" "IOPS, page cache dropped first" \
        "$fs" "IOPS" "$lo" "IOPS" ">=" 0.7 "≥ 0.7×" \
        "psync, direct=0, invalidate=0, ${FIO_RUNTIME}s; baseline: local copy; origin requests: $reqs"
    # Page cache now holds what fio touched; prime the rest so both are fully hot.
    cat "$TMP/mnt/big.bin" "$TMP/local/big.bin" >/dev/null
    fs=$(fio_iops "$TMP/mnt/big.bin")
    lo=$(fio_iops "$TMP/local/big.bin")
    log "fio hot: ston-fs $fs IOPS vs local copy $lo IOPS"
    record 5b "fio 4K randread, 4 jobs, hot" "IOPS, file in page cache" \
        "$fs" "IOPS" "$lo" "IOPS" ">=" 0.7 "≥ 0.7×" "same job; baseline: local copy"
}

# 6: 200 seeded random 4 KiB reads of a cold file; origin traffic in blocks.
# Counted at the end (after unmount) so nothing still in flight is missed.
step_random_cold() {
    local bad
    log_mark >"$TMP/marks/fig6"
    bad=$(timeout -k 5 "$STEP_TIMEOUT" "$PY" "$HELPERS" randread "$TMP/mnt/big2.bin" \
        "$TMP/www/big2.bin" "$N_RANDOM" "$RANDOM_SEED")
    check "random reads of big2.bin return origin bytes" \
        "$([[ $bad == 0 ]] && echo ok || echo FAIL)" "$bad of $N_RANDOM reads differ"
    log_settle
    read -r reqs bytes _ < <(log_stats "$(cat "$TMP/marks/fig6")" "" '^/big2\.bin$')
    log "random cold: $N_RANDOM reads -> origin $bytes B in $reqs requests (so far)"
}

# 7: first open+read+close of each small file; origin requests per file.
step_small_cold() {
    local mark bad reqs bytes nb allreqs
    mark=$(log_mark)
    bad=$(timeout -k 5 "$STEP_TIMEOUT" "$PY" "$HELPERS" smallfiles "$TMP/mnt" "$N_SMALL" \
        --verify "$TMP/local/small")
    check "small files via ston-fs == origin files" \
        "$([[ $bad == 0 ]] && echo ok || echo FAIL)" "$bad of $N_SMALL differ"
    log_settle
    read -r reqs bytes nb < <(log_stats "$mark" "" '^/s[0-9]+\.bin$')
    read -r allreqs _ _ < <(log_stats "$mark")
    log "small cold: $N_SMALL files -> $reqs requests ($bytes B, $nb non-2xx; $allreqs requests in all)"
    record 7 "${N_SMALL} cold 4 KiB files" "origin requests per file" \
        "$reqs" "req" "$N_SMALL" "files" "<=" 1.0 "1.0" \
        "origin body bytes $bytes for $((N_SMALL * SMALL_SIZE)) B of files; $allreqs requests of any URI"
}

# 8: the same files again, page cache dropped before each side, one python
# process per side so interpreter start-up does not dominate.
step_small_warm() {
    local r fs lo fsv=() lov=() mark reqs total=0
    # Same reason as refresh_local: rewrite the baseline copies now.
    rm -rf "$TMP/local/small" && mkdir "$TMP/local/small"
    cp "$TMP"/www/s[0-9]*.bin "$TMP/local/small/"
    sync
    for r in $(seq 1 "$REPS"); do
        if ! fs_first "$r"; then
            drop_caches
            lo=$(timeout -k 5 "$STEP_TIMEOUT" "$PY" "$HELPERS" smallfiles "$TMP/local/small" "$N_SMALL")
        fi
        drop_caches
        mark=$(log_mark)
        fs=$(timeout -k 5 "$STEP_TIMEOUT" "$PY" "$HELPERS" smallfiles "$TMP/mnt" "$N_SMALL")
        log_settle
        read -r reqs _ _ < <(log_stats "$mark")
        total=$((total + reqs))
        if fs_first "$r"; then
            drop_caches
            lo=$(timeout -k 5 "$STEP_TIMEOUT" "$PY" "$HELPERS" smallfiles "$TMP/local/small" "$N_SMALL")
        fi
        log "small warm rep $r/$REPS: ston-fs $fs files/s vs local copies $lo files/s; origin requests $reqs"
        fsv+=("$fs"); lov+=("$lo")
    done
    record 8 "${N_SMALL} 4 KiB files, warm" "files/s, open+read+close, page cache dropped" \
        "$(median "${fsv[@]}")" "files/s" "$(median "${lov[@]}")" "files/s" ">=" 0.5 "≥ 0.5×" \
        "baseline: local copies; $REPS runs: ston-fs $(spread "${fsv[@]}"), local $(spread "${lov[@]}") files/s; origin requests during warm passes: $total"
    check "warm small-file passes make no origin request" \
        "$([[ $total == 0 ]] && echo ok || echo FAIL)" "$total requests over $REPS pass(es)"
}

# 9: 16 readers start together on one cold file; a single-flight cache fetches
# every block once. Counted at the end (after unmount).
step_concurrent() {
    local i pids=() failed=0
    log_mark >"$TMP/marks/fig9"
    for i in $(seq 1 "$N_READERS"); do
        timeout -k 5 "$READ_TIMEOUT" dd if="$TMP/mnt/mid.bin" of=/dev/null bs=1M status=none &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || failed=$((failed + 1)); done
    ((failed == 0)) || log "$failed of $N_READERS concurrent readers failed"
    if timeout -k 5 "$READ_TIMEOUT" cmp -s "$TMP/mnt/mid.bin" "$TMP/www/mid.bin"; then
        check "mid.bin after $N_READERS concurrent readers == origin file" ok
    else
        check "mid.bin after $N_READERS concurrent readers == origin file" FAIL
    fi
    ((failed == 0)) || return 1
    log_settle
}

# 10: memory of the daemon that served everything above.
step_rss() {
    local pid rss hwm base restarts cache_kib
    pid=$(daemon_pid)
    [[ -n $pid && -r /proc/$pid/status ]] || return 1
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    base=$(cat "$TMP/rss_at_mount" 2>/dev/null || echo "")
    restarts=$(cat "$TMP/restarts")
    cache_kib=$(du -sk "$TMP/cache" | awk '{print $1}')
    local note="baseline: VmRSS right after mount; cache dir holds $((cache_kib / 1024)) MiB"
    ((restarts == 0)) || note+="; daemon was restarted $restarts time(s) after a failed step"
    record 10 "ston-fs RSS after all runs" "VmRSS" \
        "$(awk -v k="$rss" 'BEGIN{printf "%.1f", k/1024}')" "MiB" \
        "$(awk -v k="$base" 'BEGIN{ if (k == "") print ""; else printf "%.1f", k/1024}')" "MiB" \
        "" "" "report only" "$note"
    record 10b "ston-fs peak RSS" "VmHWM" \
        "$(awk -v k="$hwm" 'BEGIN{printf "%.1f", k/1024}')" "MiB" \
        "$(awk -v k="$base" 'BEGIN{ if (k == "") print ""; else printf "%.1f", k/1024}')" "MiB" \
        "" "" "report only" "baseline: VmRSS right after mount"
    log "rss: VmRSS $((rss / 1024)) MiB, VmHWM $((hwm / 1024)) MiB (at mount: $((${base:-0} / 1024)) MiB)"
}

# Figures 6 and 9 are counted once the daemon is gone, so requests still open
# at the end of the step (and logged by nginx only when they finish) count too.
# No later step touches big2.bin or mid.bin, so counting to EOF is exact.
finish_counts() {
    local reqs bytes bad blocks bs
    bs=$(numfmt --from=iec "${BLOCK_SIZE_OPT%B}")
    if [[ -s $TMP/marks/fig6 ]]; then
        read -r reqs bytes bad < <(log_stats "$(cat "$TMP/marks/fig6")" "" '^/big2\.bin$')
        blocks=$(awk -v b="$bytes" -v s="$bs" 'BEGIN{printf "%.1f", b/s}')
        record 6 "$N_RANDOM random 4 KiB reads, cold" "origin bytes ÷ block size ($BLOCK_SIZE_OPT)" \
            "$blocks" "blocks" "$N_RANDOM" "reads" "<=" 1.0 "≤ $N_RANDOM blocks" \
            "$bytes B in $reqs requests; seed $RANDOM_SEED, 4 KiB-aligned, $((BIG_SIZE / bs)) blocks in the file"
    fi
    if [[ -s $TMP/marks/fig9 ]]; then
        read -r reqs bytes bad < <(log_stats "$(cat "$TMP/marks/fig9")" "" '^/mid\.bin$')
        record 9 "$N_READERS readers, one cold ${MID_MIB} MiB file" "origin bytes ÷ file size" \
            "$bytes" "B" "$MID_SIZE" "B" "==" 1.0 "1.00" "$reqs requests"
    fi
}

# 11 (context, no target): the cold read through a peer, rclone mount with
# --vfs-cache-mode full (which also stores what it reads), from the same nginx,
# each run prepared like a cold ston-fs run. BENCH_NO_PEERS=1 skips it; so does
# an rclone that is missing and cannot be installed.
step_peer_rclone() {
    local r rc rcv=() mnt="$TMP/rclone-mnt" version
    [[ ${BENCH_NO_PEERS:-0} == 1 ]] && return 0
    if ! command -v rclone >/dev/null 2>&1; then
        [[ ${BENCH_NO_INSTALL:-0} == 1 ]] && { log "rclone missing; peer figure skipped"; return 0; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone >/dev/null 2>&1 ||
            { log "rclone cannot be installed; peer figure skipped"; return 0; }
    fi
    version=$(rclone version 2>/dev/null | head -1)
    mkdir -p "$mnt"
    for r in $(seq 1 "$REPS"); do
        rm -rf "$TMP/rclone-cache"
        cat "$TMP/www/big.bin" >/dev/null
        sync
        timed_curl "${ORIGIN}big.bin" "$BIG_SIZE" >/dev/null
        rclone mount --http-url "$ORIGIN" :http: "$mnt" --read-only --vfs-cache-mode full \
            --cache-dir "$TMP/rclone-cache" --daemon --log-file "$TMP/rclone.log"
        wait_for_mount "$mnt"
        rc=$(timed_read "$mnt/big.bin")
        umount "$mnt"
        log "peer rep $r/$REPS: rclone mount --vfs-cache-mode full $rc MB/s"
        rcv+=("$rc")
    done
    record 11 "cold read, ston-fs against rclone" "MB/s; baseline: rclone mount --vfs-cache-mode full" \
        "$(cat "$TMP/cold_median")" "MB/s" "$(median "${rcv[@]}")" "MB/s" "" "" "context" \
        "peer in the same run ($version), same nginx and file, each run after a curl like ston-fs's cold runs; $REPS runs: $(spread "${rcv[@]}") MB/s"
}

wait_for_mount() {
    local i
    for i in $(seq 1 $((MOUNT_TIMEOUT * 10))); do
        awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts && return 0
        sleep 0.1
    done
    log "$1 did not appear within ${MOUNT_TIMEOUT}s"
    return 1
}

# Runs one step in a subshell with errexit on: a failure ends that step only,
# is reported, and the next step gets a live mount again (unless --no-mount:
# the step mounts for itself).
run_step() {
    local name=$1 rc want_mount=1
    shift
    if [[ $1 == --no-mount ]]; then want_mount=0; shift; fi
    log "== $name"
    set +e
    (set -e; ((want_mount == 0)) || ensure_mount; "$@")
    rc=$?
    set -e
    if ((rc != 0)); then
        STEP_FAILED=1
        log "step '$name' FAILED (exit $rc); ston-fs log tail:"
        tail -n 10 "$TMP/daemon.log" >&2 || true
        check "step: $name" FAIL "exit $rc"
    fi
    return 0
}

# --------------------------------------------------------------- cleanup

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    ((rc == 0)) || log "stopping (exit $rc): unmounting, stopping nginx, removing temp files"
    # Background readers of ours (figure 9), if interrupted mid-step.
    local j
    for j in $(jobs -p); do
        [[ $j == "$NGINX_PID" || $j == "$(daemon_pid 2>/dev/null)" ]] && continue
        kill "$j" 2>/dev/null
    done
    if [[ -n $TMP && -d $TMP ]]; then
        umount_fs
        umount "$TMP/rclone-mnt" 2>/dev/null
        stop_nginx
        if grep -q " $TMP/" /proc/mounts; then
            log "WARNING: something is still mounted under $TMP; not deleting it"
        elif [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then
            log "kept $TMP (BENCH_KEEP_TMP=1)"
        else
            rm -rf --one-file-system "$TMP"
        fi
    fi
    exit "$rc"
}

# ------------------------------------------------------------------ main

main() {
    require_root
    install_deps
    build
    make_tmp
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local commit
    commit=$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo "no commit")
    meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    meta commit "$commit"
    meta kernel "$(uname -r)"
    meta cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    meta cores "$(nproc)"
    meta mem "$(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    meta mode "$([[ $QUICK == 1 ]] && echo quick || echo full)"
    meta big_size_h "${BIG_MIB} MiB"
    meta big_size "$BIG_SIZE"
    meta n_small "$N_SMALL"
    meta fio_runtime "$FIO_RUNTIME"
    meta reps "$REPS"
    meta ston_fs_opts "$MOUNT_OPTS"
    meta ston_fs_bin "$BIN"
    meta nginx_version "$(nginx -v 2>&1 | sed 's|.*/||')"
    meta fio_version "$(fio --version)"
    meta command "$([[ $QUICK == 1 ]] && echo 'sudo BENCH_QUICK=1 bash benches/bench.sh' || echo 'sudo bash benches/bench.sh')"

    gen_files
    start_nginx

    # The first step mounts for itself (fresh mount + empty cache per run);
    # every later step reuses that mount and its cache.
    run_step "1+4 cold sequential read" --no-mount step_cold
    run_step "2 warm sequential read" step_warm
    run_step "3 hot re-read" step_hot
    run_step "5 fio random reads" step_fio
    run_step "6 random reads of a cold file" step_random_cold
    run_step "7 cold small files" step_small_cold
    run_step "8 warm small files" step_small_warm
    run_step "9 concurrent readers" step_concurrent
    run_step "10 daemon RSS" step_rss
    run_step "11 peer: rclone" --no-mount step_peer_rclone

    umount_fs
    finish_counts
    grep -q "^ston-fs exits by itself after unmount" "$TMP/checks.tsv" ||
        check "ston-fs exits by itself after unmount" ok

    mkdir -p "$RESULTS_DIR"
    echo
    "$PY" "$HELPERS" render "$TMP/results.tsv" "$TMP/meta.tsv" "$TMP/checks.tsv" \
        "$RESULTS_DIR/latest.md" "$RESULTS_DIR/latest.json"
    if "$PY" "$BENCH_DIR/plot.py" "$RESULTS_DIR/latest.json" "$RESULTS_DIR/latest.png"; then
        log "wrote $RESULTS_DIR/latest.{md,json,png}"
    else
        log "chart failed (matplotlib missing?); wrote $RESULTS_DIR/latest.{md,json}"
    fi
    ((STEP_FAILED == 0)) || { log "some steps failed; see the table and checks"; exit 1; }
}

main "$@"
