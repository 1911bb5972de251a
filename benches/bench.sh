#!/usr/bin/env bash
# benches/bench.sh — end-to-end benchmark of ston-fs, beside its peers.
#
#   sudo bash benches/bench.sh                 # full run (1 GiB file, 5 runs), 40-60 min
#   sudo BENCH_QUICK=1 bash benches/bench.sh   # smaller sizes, for iteration
#
# Root is needed: FUSE mounts, /proc/sys/vm/drop_caches and apt-get.
#
# ston-fs and its peers (httpdirfs 1.3.3 built from source, Debian's httpdirfs
# 1.2.5, rclone mount --vfs-cache-mode full) mount the same private nginx on
# 127.0.0.1, one at a time, each with its own fresh cache dir, and go through
# the same workloads. Every figure is also measured
# against a baseline taken in the same run on the same machine (curl from the
# same nginx, or a local copy written in the same run), and the ratio is what
# matters: absolute numbers on a 2-core VM mean little alone. nginx's access
# log records body bytes and Range of every request, so origin traffic is
# counted exactly, for every system.
#
# One run, in this order (every run starts with a different system):
#   baselines   curl of the big file; a fresh local copy of it (written now,
#               timed: "filling a local file"), read with the page cache
#               dropped, then hot; 4 KiB random reads of it; fio on it (warm,
#               hot); the small files' local copies, dropped then hot; then a
#               5 s pause, so the fresh state is not right after a drop_caches
#   fresh       each system: fresh mount, empty cache (emptied right before the
#               mount, and checked empty), cold sequential read
#   heavy       curl and each system: a big local file read hot, a short fio,
#               drop_caches, then the same cold read ("after a memory-heavy
#               workload")
#   sequence    each system: fresh mount, empty cache; random 4 KiB reads of
#               the cold file; a sequential read (cold-after-random); page
#               cache dropped, read again (warm); a third read (hot); the
#               small files cold, hot, then warm; fio warm and hot; 16
#               concurrent readers of another cold file; daemon RSS
# The random reads of the sequence are of the same file as its sequential read
# on purpose (figure 6, cold-after-random). No other cold sequential read can
# be warmed by them: the fresh and heavy cold reads each start a new daemon on
# a cache dir emptied just before (a check records that it was empty), after
# the previous daemon has exited, so neither a cache file nor a prefetch still
# running can carry over; the kernel's page cache of a FUSE file goes with its
# mount.
# Every read is checked against the origin file (cksum of the whole file,
# byte compare for random reads and small files).
#
# Output: the tables on stdout, plus benches/results/latest.{md,json,png}.
# The script reports; it never fails because a target was missed, nor because
# a peer is missing or broken (the peer is then "unavailable", with the
# reason). It exits non-zero only if a ston-fs step could not be run.
#
# Environment:
#   BENCH_QUICK=1          256 MiB file, 200 small files, 3 s fio, 2 runs
#   BENCH_REPS=N           runs; every figure is the median over them (default 5, quick 2)
#   BENCH_SYSTEMS="..."    systems to measure, in this order for run 1
#                          (default "ston-fs httpdirfs httpdirfs-1.2.5 rclone"):
#                          httpdirfs is the binary in HTTPDIRFS (1.3.3), and is
#                          "unavailable" when HTTPDIRFS is not set;
#                          httpdirfs-1.2.5 is Debian's package (/usr/bin/httpdirfs,
#                          apt-get installed when missing)
#   HTTPDIRFS=PATH         the httpdirfs binary of the "httpdirfs" column, e.g.
#                          $(bash benches/build-httpdirfs.sh SRC_DIR) for 1.3.3
#   BENCH_NO_PEERS=1       same as BENCH_SYSTEMS=ston-fs
#   STON_FS_BIN=PATH       use this binary; otherwise `cargo build --release`
#   BENCH_BLOCK_SIZE=1M    ston-fs block_size (figure 4's target is in these blocks)
#   STON_FS_OPTS=...       extra ston-fs -o options (default max_cache_size=8G). To see
#                          what a setting costs, run twice with the same systems, e.g.
#                          STON_FS_OPTS=max_cache_size=8G,zero_message_opens=false and
#                          ...=true, each with its own BENCH_RESULTS_DIR, and compare the
#                          ratios (figure 11z is then not measured: the run's setting holds)
#   BENCH_HTTPDIRFS_OPTS   extra flags of both httpdirfs columns (default none:
#                          --cache and its defaults)
#   BENCH_RCLONE_OPTS      extra rclone mount flags (default none beyond --vfs-cache-mode full)
#   BENCH_HEAVY_MIB=N      size of the memory-heavy workload's file (default 2x the
#                          big file, at most a quarter of MemAvailable)
#   BENCH_SMALL_BUDGET=S   seconds one small-file pass may take before it stops and
#                          reports the rate so far (default 90, quick 30)
#   BENCH_TIMEOUT=S        the whole run is stopped (and cleaned up) after S seconds
#                          (default 10800, quick 3600)
#   BENCH_TMPDIR=DIR       parent of the temp dir (default /var/tmp; needs ~10 GiB full)
#   BENCH_RESULTS_DIR=DIR  default benches/results
#   BENCH_NO_INSTALL=1     never call apt-get
#   BENCH_KEEP_TMP=1       keep the temp dir (logs, access log) after the run
set -euo pipefail
# Without this a failing command inside $(...) (dd on a broken mount, fio)
# would not fail the step: the substitution's status would be the last command's.
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

# ----------------------------------------------------------------- settings
QUICK=${BENCH_QUICK:-0}
if [[ $QUICK == 1 ]]; then
    BIG_MIB=256; MID_MIB=64; N_SMALL=200; FIO_RUNTIME=3; HEAVY_FIO_RUNTIME=2
    REPS=${BENCH_REPS:-2}; SMALL_BUDGET=${BENCH_SMALL_BUDGET:-30}; BENCH_TIMEOUT=${BENCH_TIMEOUT:-3600}
else
    BIG_MIB=1024; MID_MIB=128; N_SMALL=2000; FIO_RUNTIME=10; HEAVY_FIO_RUNTIME=3
    REPS=${BENCH_REPS:-5}; SMALL_BUDGET=${BENCH_SMALL_BUDGET:-90}; BENCH_TIMEOUT=${BENCH_TIMEOUT:-10800}
fi
[[ $REPS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_REPS must be a positive integer" >&2; exit 2; }
KNOWN_SYSTEMS="ston-fs httpdirfs httpdirfs-1.2.5 rclone"
if [[ ${BENCH_NO_PEERS:-0} == 1 ]]; then
    SYSTEMS_REQ=ston-fs
else
    SYSTEMS_REQ=${BENCH_SYSTEMS:-$KNOWN_SYSTEMS}
fi
read -r -a SYSTEMS_REQ <<<"$SYSTEMS_REQ"
SMALL_SIZE=4096
N_RANDOM=200          # figures 4-5: random 4 KiB reads of a cold file
RANDOM_SEED=42
N_READERS=16          # figure 16: concurrent readers of one cold file
FIO_JOBS=4
BLOCK_SIZE_OPT=${BENCH_BLOCK_SIZE:-1M}
EXTRA_OPTS=${STON_FS_OPTS:-max_cache_size=8G}
MOUNT_OPTS="block_size=${BLOCK_SIZE_OPT}${EXTRA_OPTS:+,$EXTRA_OPTS}"
read -r -a HTTPDIRFS_OPTS <<<"${BENCH_HTTPDIRFS_OPTS:-}"
HTTPDIRFS_NEW=""      # the "httpdirfs" column's binary (HTTPDIRFS), resolved in setup_systems
HTTPDIRFS_DEB=/usr/bin/httpdirfs   # the "httpdirfs-1.2.5" column: Debian's package
read -r -a RCLONE_OPTS <<<"${BENCH_RCLONE_OPTS:-}"
RESULTS_DIR=${BENCH_RESULTS_DIR:-$BENCH_DIR/results}
# Upper bounds so that a hung mount can never hang the benchmark.
READ_TIMEOUT=300      # one big sequential read or checksum (>= 3.5 MB/s for 1 GiB)
STEP_TIMEOUT=300      # one python loop / one fio run (+ its runtime)
MOUNT_TIMEOUT=30
QUIET_TIMEOUT=20      # longest wait for the origin to have no request in flight
INSTALL_TIMEOUT=900
SETTLE_S=5            # pause between the baselines' last drop_caches and the fresh state

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
WATCHDOG_PID=""
STEP_PID=""           # the step running now (see attempt)
STEP_FAILED=0
TRY_RC=0
AVAIL=()              # systems that passed their probe mount
APT_UPDATED=0

log() { printf '[bench %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ set-up

require_root() {
    [[ $(id -u) == 0 ]] || die "run as root (FUSE mount, drop_caches): sudo bash benches/bench.sh"
    [[ -c /dev/fuse ]] || die "/dev/fuse missing"
    [[ -w /proc/sys/vm/drop_caches ]] || die "/proc/sys/vm/drop_caches not writable (container without privileges?)"
}

# apt-get, bounded, waiting for a dpkg lock another apt-get may hold.
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ((APT_UPDATED == 0)); then
        timeout "$INSTALL_TIMEOUT" apt-get -o DPkg::Lock::Timeout=300 update -qq || return 1
        APT_UPDATED=1
    fi
    timeout "$INSTALL_TIMEOUT" apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >/dev/null
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
    apt_install "${pkgs[@]}" || die "apt-get install ${pkgs[*]} failed"
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

# The memory-heavy workload reads a local file of HEAVY_MIB hot: 2x the big file
# by default, never more than a quarter of the memory available now.
size_heavy() {
    local avail_mib cap
    avail_mib=$(awk '/^MemAvailable/ {printf "%d", $2 / 1024}' /proc/meminfo)
    cap=$((avail_mib / 4))
    HEAVY_MIB=${BENCH_HEAVY_MIB:-$((BIG_MIB * 2))}
    [[ $HEAVY_MIB =~ ^[0-9]+$ ]] || die "BENCH_HEAVY_MIB must be a number of MiB"
    if ((HEAVY_MIB > cap)); then
        log "memory-heavy file capped at ${cap} MiB (a quarter of MemAvailable)"
        HEAVY_MIB=$cap
    fi
    ((HEAVY_MIB >= 16)) || die "too little memory for the memory-heavy workload (${avail_mib} MiB available)"
}

make_tmp() {
    local parent=${BENCH_TMPDIR:-/var/tmp}
    local nsys=${#SYSTEMS_REQ[@]}
    # origin + local copy + one cache per system (big + mid + small) + heavy file + slack
    local need_kib=$(( (BIG_SIZE * (2 + nsys) + MID_SIZE * (1 + nsys) + HEAVY_MIB * 1048576
                        + N_SMALL * SMALL_SIZE * (2 + nsys) * 2 + 256 * 1048576) / 1024 ))
    local avail_kib
    avail_kib=$(df -Pk "$parent" | awk 'NR==2 {print $4}')
    ((avail_kib > need_kib)) || die "$parent has ${avail_kib} KiB free, need ${need_kib} KiB"
    TMP=$(mktemp -d "$parent/ston-fs-bench.XXXXXX")
    # nginx workers run unprivileged and must be able to read the docroot.
    chmod 755 "$TMP"
    mkdir -p "$TMP"/{www/small,local,heavy,cache,mnt,ng,marks,state,logs,pids,sums}
    : >"$TMP/samples.tsv"; : >"$TMP/checks.tsv"; : >"$TMP/meta.tsv"
    : >"$TMP/notes.tsv"; : >"$TMP/systems.tsv"
}

# Random data so nothing (compression, dedup, sparse files) can flatter a side.
gen_files() {
    log "generating test files in $TMP (${BIG_MIB} MiB, ${MID_MIB} MiB, ${N_SMALL} x 4 KiB, ${HEAVY_MIB} MiB local)"
    local p=() i
    dd if=/dev/urandom of="$TMP/www/big.bin" bs=1M count="$BIG_MIB" iflag=fullblock status=none & p+=($!)
    dd if=/dev/urandom of="$TMP/www/mid.bin" bs=1M count="$MID_MIB" iflag=fullblock status=none & p+=($!)
    for i in "${p[@]}"; do wait "$i"; done
    # In a subdirectory, so that a peer that lists directories (rclone HEADs
    # every entry of a listing) pays for it in the small-file figures only.
    "$PY" "$HELPERS" genfiles "$TMP/www/small" "$N_SMALL" "$SMALL_SIZE" 7
    # The memory-heavy workload's file: local only, never served.
    dd if=/dev/urandom of="$TMP/heavy/heavy.bin" bs=1M count="$HEAVY_MIB" iflag=fullblock status=none
    chmod -R a+rX "$TMP/www"
    local f
    for f in big mid; do
        cksum <"$TMP/www/$f.bin" | awk '{print $1, $2}' >"$TMP/sums/$f"
    done
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
            if curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$port/big.bin" -r 0-0; then
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

# The whole run is bounded: after BENCH_TIMEOUT the main shell gets TERM, and
# its trap unmounts and kills everything (every foreground step is itself
# under a timeout, so the trap runs within READ_TIMEOUT at worst).
start_watchdog() {
    (
        trap 'kill "$sp" 2>/dev/null; exit 0' TERM
        sleep "$BENCH_TIMEOUT" & sp=$!
        wait "$sp"
        printf '[bench %(%T)T] BENCH_TIMEOUT=%ss reached; stopping\n' -1 "$BENCH_TIMEOUT" >&2
        kill -TERM $$
    ) &
    WATCHDOG_PID=$!
}

# ------------------------------------------------------------ measurement

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# The origin's files in the page cache, so every side gets the same origin.
prime_origin() {
    timeout -k 5 "$READ_TIMEOUT" cat "$TMP/www/big.bin" "$TMP/www/mid.bin" >/dev/null
    timeout -k 5 "$READ_TIMEOUT" find "$TMP/www/small" -type f -exec cat {} + >/dev/null
}

now_ns() { date +%s%N; }

# MB/s (10^6 bytes per second) from bytes and nanoseconds.
mbps() { awk -v b="$1" -v ns="$2" 'BEGIN { printf "%.1f", b / (ns / 1e9) / 1e6 }'; }

# Sequential read of a file with dd bs=1M; prints MB/s.
timed_read() {
    local path=$1 size t0 t1
    size=$(timeout 10 stat -c %s "$path")
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

# Writes the local baseline copy: the same bytes into a new file on the
# cache's file system, timed (no fsync, as the caches sync only later). That
# is also the ceiling for any cache that stores what it reads.
timed_fill() {
    local src=$1 dst=$2 size t0 t1
    size=$(stat -c %s "$src")
    rm -f "$dst.new"
    t0=$(now_ns)
    timeout -k 5 "$READ_TIMEOUT" dd if="$src" of="$dst.new" bs=1M status=none
    t1=$(now_ns)
    mv -f "$dst.new" "$dst"
    mbps "$size" $((t1 - t0))
}

# IOPS of one fio run (identical options for every side).
fio_iops() {
    local path=$1 out
    out=$(timeout -k 5 $((FIO_RUNTIME + STEP_TIMEOUT)) fio --name=randread --filename="$path" \
        --readonly --rw=randread --bs=4k --numjobs="$FIO_JOBS" --ioengine=psync --direct=0 \
        --invalidate=0 --time_based --runtime="$FIO_RUNTIME" --size="$BIG_SIZE" \
        --randrepeat=1 --group_reporting --output-format=json)
    "$PY" -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["jobs"][0]["read"]["iops"])' <<<"$out"
}

# "files_read files_per_s mismatches" for one pass over the small files.
small_pass() {
    local dir=$1 n=$2
    timeout -k 5 $((SMALL_BUDGET + STEP_TIMEOUT)) "$PY" "$HELPERS" smallfiles "$dir" "$n" \
        --verify "$TMP/www/small" --budget "$SMALL_BUDGET"
}

# Access-log position (line count). nginx writes a line when a request ends.
log_mark() { wc -l <"$ACCESS_LOG"; }

# Requests nginx is still reading or answering, from stub_status, not counting
# the status request itself.
origin_busy() {
    curl -s --max-time 2 "${ORIGIN}__bench_status" |
        awk '/^Reading/ { print $2 + $4 - 1; f = 1 } END { if (!f) print -1 }'
}

# Waits (at most QUIET_TIMEOUT) until no request is in flight at the origin
# and the access log has been still for 1 s, so read-ahead still running after
# a reader finished is counted with the step that caused it. Prints the
# number of requests still in flight when it gave up (0: all counted).
origin_quiet() {
    local prev=-1 cur busy=0 quiet=0 i
    for i in $(seq 1 $((QUIET_TIMEOUT * 4))); do
        cur=$(log_mark)
        busy=$(origin_busy)
        if [[ $cur == "$prev" && $busy == 0 ]]; then
            quiet=$((quiet + 1))
            ((quiet >= 4)) && { echo 0; return 0; }
        else
            quiet=0; prev=$cur
        fi
        sleep 0.25
    done
    echo "$busy"
}

# "requests body_bytes non_2xx" for log lines after mark $1 (to EOF), URI regex $2.
log_stats() {
    "$PY" "$HELPERS" logstats "$ACCESS_LOG" --from "$1" ${2:+--uri "$2"}
}

# sample FIGURE-KEY WHO RUN VALUE   (WHO: a system, or "baseline")
# Keys with a dot ("rand_traffic.reqs") are extra series shown in the notes.
sample() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$TMP/samples.tsv"; }
# note FIGURE-KEY WHO TEXT
note() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$TMP/notes.tsv"; }
check() { printf '%s\t%s\t%s\n' "$1" "$2" "${3:-}" >>"$TMP/checks.tsv"; }
meta() { printf '%s\t%s\n' "$1" "$2" >>"$TMP/meta.tsv"; }
sysinfo() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$TMP/systems.tsv"; }

mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }

# verify SYSTEM PATH NAME WHAT: the whole file's cksum (CRC and length) against
# the origin file's. A read error fails the step; a mismatch fails the check.
verify() {
    local sys=$1 path=$2 name=$3 what=$4 got
    got=$(timeout -k 5 "$READ_TIMEOUT" cksum <"$path" | awk '{print $1, $2}')
    if [[ $got == "$(cat "$TMP/sums/$name")" ]]; then
        check "$name.bin via $sys == origin file (cksum, every read)" ok
    else
        check "$name.bin via $sys == origin file (cksum, every read)" FAIL "$what: cksum $got, origin $(cat "$TMP/sums/$name")"
    fi
}

# ------------------------------------------------------------ the mounts

mnt_of() { echo "$TMP/mnt/$1"; }
cache_of() { echo "$TMP/cache/$1"; }
pid_of() { cat "$TMP/pids/$1" 2>/dev/null || true; }
is_mounted_at() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

wipe_cache() {
    local c
    c=$(cache_of "$1")
    rm -rf --one-file-system "$c"
    mkdir -p "$c"
}

# Each daemon runs in the foreground, in the background of this script: we know
# its pid (RSS, cleanup) and its log goes to our file.
sys_mount() {
    local sys=$1 mnt cache logf pid i cmd=()
    mnt=$(mnt_of "$sys"); cache=$(cache_of "$sys"); logf="$TMP/logs/$sys.log"
    mkdir -p "$mnt" "$cache"
    case $sys in
        ston-fs)
            cmd=("$BIN" -f --cache-dir "$cache" -o "$MOUNT_OPTS${STON_FS_MORE_OPTS:-}" "$ORIGIN" "$mnt") ;;
        httpdirfs)
            cmd=("$HTTPDIRFS_NEW" -f --cache --cache-location "$cache" "${HTTPDIRFS_OPTS[@]}" "$ORIGIN" "$mnt") ;;
        httpdirfs-1.2.5)
            cmd=("$HTTPDIRFS_DEB" -f --cache --cache-location "$cache" "${HTTPDIRFS_OPTS[@]}" "$ORIGIN" "$mnt") ;;
        rclone)
            cmd=(rclone mount :http: "$mnt" --http-url "$ORIGIN" --read-only --vfs-cache-mode full
                 --cache-dir "$cache" --log-level NOTICE "${RCLONE_OPTS[@]}") ;;
        *) log "unknown system $sys"; return 1 ;;
    esac
    echo "--- mount $(date +%T): ${cmd[*]}" >>"$logf"
    "${cmd[@]}" </dev/null >>"$logf" 2>&1 &
    pid=$!
    echo "$pid" >"$TMP/pids/$sys"
    for i in $(seq 1 $((MOUNT_TIMEOUT * 10))); do
        if is_mounted_at "$mnt"; then
            awk '/^VmRSS/ {print $2}' "/proc/$pid/status" >"$TMP/state/rss_at_mount.$sys" 2>/dev/null || true
            local type
            type=$(awk -v m="$mnt" '$2 == m { print $3 }' /proc/mounts)
            [[ $type == "fuse.${sys%-1.2.5}" ]] || log "warning: mount type of $sys is $type, expected fuse.${sys%-1.2.5}"
            return 0
        fi
        if ! pid_running "$pid"; then
            wait "$pid" 2>/dev/null || true
            log "$sys exited before the mount appeared; log tail:"
            tail -n 15 "$logf" >&2
            return 1
        fi
        sleep 0.1
    done
    log "$sys: mount did not appear within ${MOUNT_TIMEOUT}s"
    return 1
}

# FUSE connection id of a mount, from mountinfo (no stat(), which could hang).
fuse_conn() { awk -v m="$1" '$5 == m { split($3, d, ":"); print d[2] }' /proc/self/mountinfo | head -n1; }

# Unmounts (aborting the FUSE connection if umount hangs) and makes sure the
# daemon is gone. ston-fs must exit by itself; peers are just stopped.
sys_umount() {
    local sys=$1 mnt pid i conn
    mnt=$(mnt_of "$sys")
    if is_mounted_at "$mnt"; then
        if ! timeout 20 umount "$mnt" 2>/dev/null; then
            log "umount of $sys failed; aborting the FUSE connection and detaching"
            conn=$(fuse_conn "$mnt")
            if [[ -n $conn && -e /sys/fs/fuse/connections/$conn/abort ]]; then
                echo 1 >"/sys/fs/fuse/connections/$conn/abort" || true
            fi
            umount -l "$mnt" 2>/dev/null || true
        fi
    fi
    pid=$(pid_of "$sys")
    if [[ -n $pid ]]; then
        # Unmounting ends the daemon's session loop; give it time to exit cleanly.
        for i in $(seq 1 100); do pid_running "$pid" || break; sleep 0.1; done
        if pid_running "$pid"; then
            log "$sys $pid still running 10 s after unmount; sending TERM"
            [[ $sys == ston-fs ]] && check "ston-fs exits by itself after unmount" FAIL "pid $pid needed a signal"
            kill -TERM "$pid" 2>/dev/null || true
            for i in $(seq 1 30); do pid_running "$pid" || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        elif [[ $sys == ston-fs ]]; then
            check "ston-fs exits by itself after unmount" ok
        fi
        wait "$pid" 2>/dev/null || true
        rm -f "$TMP/pids/$sys"
    fi
}

# A daemon killed from outside stays a zombie until its (new) parent reaps
# it, and kill -0 still succeeds on a zombie: look at its state instead.
pid_running() {
    local st
    st=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null || true)
    [[ -n $st && $st != Z ]]
}

# Mounted, daemon running, and the mount answers.
sys_alive() {
    local pid mnt
    pid=$(pid_of "$1"); mnt=$(mnt_of "$1")
    [[ -n $pid ]] && pid_running "$pid" && is_mounted_at "$mnt" &&
        timeout 10 stat -c %s "$mnt/big.bin" >/dev/null 2>&1
}

sys_version() {
    case $1 in
        ston-fs) "$BIN" --version 2>&1 | head -n1 ;;
        httpdirfs) "$HTTPDIRFS_NEW" --version 2>&1 | grep -m1 -i 'version' ;;
        httpdirfs-1.2.5) "$HTTPDIRFS_DEB" --version 2>&1 | grep -m1 -i 'version' ;;
        rclone) rclone version 2>/dev/null | head -n1 ;;
    esac
}

sys_command() {
    case $1 in
        ston-fs) echo "ston-fs -f --cache-dir DIR -o $MOUNT_OPTS ORIGIN MNT" ;;
        httpdirfs) echo "$HTTPDIRFS_NEW -f --cache --cache-location DIR${HTTPDIRFS_OPTS[*]:+ ${HTTPDIRFS_OPTS[*]}} ORIGIN MNT" ;;
        httpdirfs-1.2.5) echo "$HTTPDIRFS_DEB -f --cache --cache-location DIR${HTTPDIRFS_OPTS[*]:+ ${HTTPDIRFS_OPTS[*]}} ORIGIN MNT" ;;
        rclone) echo "rclone mount :http: MNT --http-url ORIGIN --read-only --vfs-cache-mode full --cache-dir DIR${RCLONE_OPTS[*]:+ ${RCLONE_OPTS[*]}}" ;;
    esac
}

unavailable() {
    log "$1 unavailable: $2"
    sysinfo "$1" status unavailable
    sysinfo "$1" reason "$2"
}

# Every requested system gets a probe mount: installed, mounts, serves big.bin.
# One that fails is reported "unavailable" with the reason and left out.
setup_systems() {
    local s known reason
    for s in "${SYSTEMS_REQ[@]}"; do
        known=0
        for k in $KNOWN_SYSTEMS; do [[ $s == "$k" ]] && known=1; done
        if ((known == 0)); then unavailable "$s" "unknown system (known: $KNOWN_SYSTEMS)"; continue; fi
        if [[ " ${AVAIL[*]} " == *" $s "* ]]; then continue; fi
        if [[ $s == httpdirfs ]]; then
            # Never installed: HTTPDIRFS points at a build (benches/build-httpdirfs.sh).
            if [[ -z ${HTTPDIRFS:-} ]]; then
                unavailable "$s" "HTTPDIRFS not set (build 1.3.3 with: bash benches/build-httpdirfs.sh SRC_DIR)"; continue
            fi
            HTTPDIRFS_NEW=$(readlink -f "$HTTPDIRFS" || true)
            if [[ -z $HTTPDIRFS_NEW || ! -x $HTTPDIRFS_NEW ]]; then
                unavailable "$s" "HTTPDIRFS=$HTTPDIRFS is not an executable file"; continue
            fi
        elif [[ $s == httpdirfs-1.2.5 ]]; then
            if [[ ! -x $HTTPDIRFS_DEB ]]; then
                if [[ ${BENCH_NO_INSTALL:-0} == 1 ]]; then
                    unavailable "$s" "Debian's httpdirfs not installed (BENCH_NO_INSTALL=1)"; continue
                fi
                log "installing httpdirfs (Debian's package) for $s"
                if ! apt_install httpdirfs || [[ ! -x $HTTPDIRFS_DEB ]]; then
                    unavailable "$s" "not installed, and apt-get install httpdirfs failed"; continue
                fi
            fi
            [[ $(sys_version "$s") == *"version 1.2.5"* ]] ||
                log "warning: $HTTPDIRFS_DEB is not 1.2.5 ($(sys_version "$s")); the column keeps its name, the systems table shows the version"
        elif [[ $s != ston-fs ]] && ! command -v "$s" >/dev/null 2>&1; then
            if [[ ${BENCH_NO_INSTALL:-0} == 1 ]]; then
                unavailable "$s" "not installed (BENCH_NO_INSTALL=1)"; continue
            fi
            log "installing $s"
            if ! apt_install "$s" || ! command -v "$s" >/dev/null 2>&1; then
                unavailable "$s" "not installed, and apt-get install $s failed"; continue
            fi
        fi
        wipe_cache "$s"
        reason=""
        if ! sys_mount "$s"; then
            reason="probe mount failed: $(tail -n 3 "$TMP/logs/$s.log" | tr '\n' ' ' | cut -c1-300)"
        elif ! timeout 30 head -c 4096 "$(mnt_of "$s")/big.bin" >/dev/null 2>&1; then
            reason="probe read of big.bin failed: $(tail -n 3 "$TMP/logs/$s.log" | tr '\n' ' ' | cut -c1-300)"
        fi
        sys_umount "$s"
        wipe_cache "$s"
        if [[ -n $reason ]]; then
            unavailable "$s" "$reason"
            [[ $s == ston-fs ]] && STEP_FAILED=1
            continue
        fi
        AVAIL+=("$s")
        sysinfo "$s" status ok
        sysinfo "$s" version "$(sys_version "$s")"
        sysinfo "$s" command "$(sys_command "$s")"
        log "$s ready ($(sys_version "$s"))"
    done
}

# attempt KEY SYSTEM RUN FUNCTION ARGS... runs one step in a subshell with
# errexit on. A failure ends that step only: it is recorded as an error
# sample (the table says so), and only a ston-fs failure fails the run.
# Sets TRY_RC; always returns 0 (never call it in a condition: errexit would
# then be off inside).
attempt() {
    local key=$1 sys=$2 run=$3 rc
    shift 3
    set +e
    # In the background and waited for: a TERM or INT (or the watchdog) then
    # runs the trap at once instead of after the step, and cleanup stops the
    # step's processes (STEP_PID and its children).
    (set -e; "$@") &
    STEP_PID=$!
    wait "$STEP_PID"
    rc=$?
    STEP_PID=""
    set -e
    TRY_RC=$rc
    if ((rc != 0)); then
        sample "$key" "$sys" "$run" "error exit $rc"
        log "step $key of $sys (run $run) FAILED (exit $rc); log tail:"
        tail -n 8 "$TMP/logs/$sys.log" >&2 2>/dev/null || true
        [[ $sys == ston-fs ]] && STEP_FAILED=1
    fi
    return 0
}

# ----------------------------------------------------------- baselines

# curl, the local copy (written now), fio on it, the small files' local copies.
# Figures 1, 6 (curl), 1b (filling a local file), 5, 7, 8, 9, 11-14 (local).
baselines() {
    local r=$1 cu fl lo out
    prime_origin; sync
    cu=$(timed_curl "${ORIGIN}big.bin" "$BIG_SIZE")
    sample cold_fresh baseline "$r" "$cu"
    sample after_random baseline "$r" "$cu"
    # The local copy is written fresh each run, so it is as fresh on disk as
    # the caches' files written later in the run.
    fl=$(timed_fill "$TMP/www/big.bin" "$TMP/local/big.bin")
    sample cold_fill baseline "$r" "$fl"
    sync
    drop_caches
    lo=$(timed_read "$TMP/local/big.bin"); sample warm baseline "$r" "$lo"
    lo=$(timed_read "$TMP/local/big.bin"); sample hot baseline "$r" "$lo"
    drop_caches
    out=$(timeout -k 5 "$STEP_TIMEOUT" "$PY" "$HELPERS" randread "$TMP/local/big.bin" \
        "$TMP/www/big.bin" "$N_RANDOM" "$RANDOM_SEED")
    sample rand_ms baseline "$r" "${out#* }"
    drop_caches
    sample fio_warm baseline "$r" "$(fio_iops "$TMP/local/big.bin")"
    timeout -k 5 "$READ_TIMEOUT" cat "$TMP/local/big.bin" >/dev/null
    sample fio_hot baseline "$r" "$(fio_iops "$TMP/local/big.bin")"
    rm -rf "$TMP/local/small"
    timeout -k 5 "$STEP_TIMEOUT" cp -r "$TMP/www/small" "$TMP/local/small"
    sync
    drop_caches
    out=$(small_pass "$TMP/local/small" "$N_SMALL")
    read -r _ lo _ <<<"$out"
    sample small_cold baseline "$r" "$lo"
    sample small_warm baseline "$r" "$lo"
    out=$(small_pass "$TMP/local/small" "$N_SMALL")
    read -r _ lo _ <<<"$out"
    sample small_hot baseline "$r" "$lo"
    sample small_hot_zmo baseline "$r" "$lo"
    # The fresh state starts SETTLE_S after the last drop_caches, so that the
    # first system's fresh cold read does not inherit memory freed a moment
    # ago (that is what the memory-heavy state measures).
    prime_origin; sync
    sleep "$SETTLE_S"
    log "baselines run $r: curl $cu MB/s, fill $fl MB/s, local warm/hot $(grep -P "^(warm|hot)\tbaseline\t$r\t" "$TMP/samples.tsv" | cut -f4 | tr '\n' ' ')MB/s"
}

# The memory-heavy workload: a big local file read twice (the second time
# hot), a short fio on it, then the page cache dropped: lots of memory used
# and freed just before the cold read that follows. Then the origin is made
# hot again, as in the fresh state.
heavy_workload() {
    local f="$TMP/heavy/heavy.bin"
    timeout -k 5 "$READ_TIMEOUT" dd if="$f" of=/dev/null bs=1M status=none
    timeout -k 5 "$READ_TIMEOUT" dd if="$f" of=/dev/null bs=1M status=none
    timeout -k 5 $((HEAVY_FIO_RUNTIME + STEP_TIMEOUT)) fio --name=heavy --filename="$f" --readonly \
        --rw=randread --bs=4k --numjobs="$FIO_JOBS" --ioengine=psync --time_based \
        --runtime="$HEAVY_FIO_RUNTIME" --size=$((HEAVY_MIB * 1048576)) --output=/dev/null
    drop_caches
    prime_origin
    sync
}

heavy_curl() {
    local r=$1 cu
    heavy_workload
    cu=$(timed_curl "${ORIGIN}big.bin" "$BIG_SIZE")
    sample cold_heavy baseline "$r" "$cu"
    log "heavy run $r: curl $cu MB/s"
}

# ---------------------------------------------------------- cold reads

# Figures 1-3: a fresh mount on an empty cache dir (emptied by the caller),
# one sequential read of the cold big file, then unmount. KEY: cold_fresh or
# cold_heavy.
cold_read() {
    local sys=$1 r=$2 key=$3 mnt v mark inflight reqs bytes bad out
    mnt=$(mnt_of "$sys")
    # Nothing of an earlier phase (the sequence's random reads of this file,
    # a previous run) may warm this read: no daemon of this system is left,
    # and its cache dir is emptied now and checked empty.
    [[ -z $(pid_of "$sys") ]] || { log "$sys daemon $(pid_of "$sys") still running before a cold read"; return 1; }
    wipe_cache "$sys"
    if [[ -z $(find "$(cache_of "$sys")" -mindepth 1 -print -quit) ]]; then
        check "cache dir of $sys empty before every cold read" ok
    else
        check "cache dir of $sys empty before every cold read" FAIL "run $r, $key"
    fi
    prime_origin; sync
    mark=$(log_mark)
    sys_mount "$sys"
    v=$(timed_read "$mnt/big.bin")
    sample "$key" "$sys" "$r" "$v"
    inflight=$(origin_quiet)
    out=$(log_stats "$mark")
    read -r reqs bytes bad <<<"$out"
    verify "$sys" "$mnt/big.bin" big "$key read"
    if [[ $key == cold_fresh ]]; then
        sample cold_traffic "$sys" "$r" "$bytes"
        sample cold_traffic baseline "$r" "$BIG_SIZE"
        sample cold_traffic.requests "$sys" "$r" "$reqs"
        ((inflight == 0)) || note cold_traffic "$sys" "run $r: $inflight request(s) still in flight when counted"
    fi
    log "$key run $r: $sys $v MB/s; origin $bytes B in $reqs requests ($bad non-2xx)"
    sys_umount "$sys"
}

# ------------------------------------------------- the per-system sequence

seq_random() {
    local sys=$1 r=$2 mnt out bad ms mark inflight reqs bytes
    mnt=$(mnt_of "$sys")
    mark=$(log_mark)
    out=$(timeout -k 5 "$STEP_TIMEOUT" "$PY" "$HELPERS" randread "$mnt/big.bin" \
        "$TMP/www/big.bin" "$N_RANDOM" "$RANDOM_SEED")
    read -r bad ms <<<"$out"
    check "random 4 KiB reads via $sys == origin bytes" \
        "$([[ $bad == 0 ]] && echo ok || echo FAIL)" "$bad of $N_RANDOM reads differ"
    sample rand_ms "$sys" "$r" "$ms"
    inflight=$(origin_quiet)
    out=$(log_stats "$mark" '^/big\.bin$')
    read -r reqs bytes _ <<<"$out"
    sample rand_traffic "$sys" "$r" "$(mib "$bytes")"
    sample rand_traffic baseline "$r" "$BIG_MIB"
    sample rand_traffic.requests "$sys" "$r" "$reqs"
    ((inflight == 0)) || note rand_traffic "$sys" "run $r: $inflight request(s) still in flight after ${QUIET_TIMEOUT}s, counted with 6"
    log "random run $r: $sys $ms ms/read; origin $(mib "$bytes") MiB in $reqs requests"
}

# One sequential read of big.bin through the mount, checked. KEY after_random,
# warm (page cache dropped first) or hot. Origin requests of warm and hot
# passes are added up for figure 15.
seq_read() {
    local sys=$1 r=$2 key=$3 mnt v mark reqs bytes out
    mnt=$(mnt_of "$sys")
    [[ $key == warm ]] && drop_caches
    mark=$(log_mark)
    v=$(timed_read "$mnt/big.bin")
    sample "$key" "$sys" "$r" "$v"
    verify "$sys" "$mnt/big.bin" big "$key read"
    origin_quiet >/dev/null
    out=$(log_stats "$mark")
    read -r reqs bytes _ <<<"$out"
    if [[ $key == after_random ]]; then
        sample after_random.origin_MiB "$sys" "$r" "$(mib "$bytes")"
    else
        echo "$reqs" >>"$TMP/state/warm_reqs.$sys.$r"
    fi
    log "$key run $r: $sys $v MB/s; origin $reqs requests, $(mib "$bytes") MiB"
}

seq_small_cold() {
    local sys=$1 r=$2 mnt ndone rate bad mark reqs allreqs bytes out
    mnt=$(mnt_of "$sys")
    prime_origin
    mark=$(log_mark)
    out=$(small_pass "$mnt/small" "$N_SMALL")
    read -r ndone rate bad <<<"$out"
    echo "$ndone" >"$TMP/state/small_done.$sys"
    check "small files via $sys == origin files" "$([[ $bad == 0 ]] && echo ok || echo FAIL)" "$bad of $ndone differ"
    sample small_cold "$sys" "$r" "$rate"
    origin_quiet >/dev/null
    out=$(log_stats "$mark" '^/small/s[0-9]+\.bin$')
    read -r reqs bytes _ <<<"$out"
    out=$(log_stats "$mark")
    read -r allreqs _ _ <<<"$out"
    sample small_cold_reqs "$sys" "$r" "$(awk -v a="$reqs" -v n="$ndone" 'BEGIN { printf "%.4f", a / n }')"
    sample small_cold_reqs.other_requests "$sys" "$r" "$((allreqs - reqs))"
    ((ndone == N_SMALL)) || note small_cold "$sys" \
        "run $r: stopped at the ${SMALL_BUDGET}s budget after $ndone of $N_SMALL files (figures 10-12 use those $ndone)"
    log "small cold run $r: $sys $rate files/s ($ndone files); $reqs file requests, $((allreqs - reqs)) other"
}

# KEY small_hot (page cache kept) or small_warm (dropped first).
seq_small_again() {
    local sys=$1 r=$2 key=$3 mnt n ndone rate bad mark reqs out
    mnt=$(mnt_of "$sys")
    n=$(cat "$TMP/state/small_done.$sys")
    ((n > 0)) || { log "$key of $sys skipped: the cold pass read no file"; return 1; }
    [[ $key == small_warm ]] && drop_caches
    mark=$(log_mark)
    out=$(small_pass "$mnt/small" "$n")
    read -r ndone rate bad <<<"$out"
    check "small files via $sys == origin files" "$([[ $bad == 0 ]] && echo ok || echo FAIL)" "$bad of $ndone differ ($key)"
    sample "$key" "$sys" "$r" "$rate"
    origin_quiet >/dev/null
    out=$(log_stats "$mark")
    read -r reqs _ _ <<<"$out"
    echo "$reqs" >>"$TMP/state/warm_reqs.$sys.$r"
    ((ndone == n)) || note "$key" "$sys" "run $r: stopped at the ${SMALL_BUDGET}s budget after $ndone of $n files"
    log "$key run $r: $sys $rate files/s; origin requests $reqs"
}

# Figure 11z, ston-fs only: the hot small files again, remounted (cache kept) with
# zero_message_opens=true, where a hot open sends nothing to the daemon. Then back
# to the default options for the rest of the sequence.
seq_small_zmo() {
    local sys=$1 r=$2 mnt n ndone rate bad mark reqs out
    [[ $sys == ston-fs ]] || return 0
    n=$(cat "$TMP/state/small_done.$sys")
    ((n > 0)) || { log "small_hot_zmo skipped: the cold pass read no file"; return 1; }
    # STON_FS_OPTS chose the setting for the whole run: figure 11 is already measured
    # with it (a key may not be given twice).
    if [[ ,$MOUNT_OPTS, == *,zero_message_opens=* ]]; then
        note small_hot_zmo "$sys" "run $r: not measured: STON_FS_OPTS sets zero_message_opens for the whole run (see figure 11)"
        return 0
    fi
    mnt=$(mnt_of "$sys")
    sys_umount "$sys"
    STON_FS_MORE_OPTS=",zero_message_opens=true" sys_mount "$sys" || return 1
    mark=$(log_mark)
    small_pass "$mnt/small" "$n" >/dev/null
    out=$(small_pass "$mnt/small" "$n")
    read -r ndone rate bad <<<"$out"
    check "small files via $sys == origin files" "$([[ $bad == 0 ]] && echo ok || echo FAIL)" "$bad of $ndone differ (zero_message_opens)"
    sample small_hot_zmo "$sys" "$r" "$rate"
    origin_quiet >/dev/null
    out=$(log_stats "$mark")
    read -r reqs _ _ <<<"$out"
    echo "$reqs" >>"$TMP/state/warm_reqs.$sys.$r"
    log "small_hot_zmo run $r: $sys $rate files/s; origin requests $reqs"
    sys_umount "$sys"
    sys_mount "$sys"
}

seq_fio() {
    local sys=$1 r=$2 mnt v mark reqs out
    mnt=$(mnt_of "$sys")
    drop_caches
    mark=$(log_mark)
    v=$(fio_iops "$mnt/big.bin")
    sample fio_warm "$sys" "$r" "$v"
    timeout -k 5 "$READ_TIMEOUT" cat "$mnt/big.bin" >/dev/null
    v=$(fio_iops "$mnt/big.bin")
    sample fio_hot "$sys" "$r" "$v"
    origin_quiet >/dev/null
    out=$(log_stats "$mark")
    read -r reqs _ _ <<<"$out"
    echo "$reqs" >>"$TMP/state/warm_reqs.$sys.$r"
    log "fio run $r: $sys warm $(grep -P "^fio_warm\t$sys\t$r\t" "$TMP/samples.tsv" | cut -f4) hot $v IOPS; origin requests $reqs"
}

# N readers start together on a cold file. Counted after unmount (see sequence).
seq_concurrent() {
    local sys=$1 r=$2 mnt i pids=() failed=0
    mnt=$(mnt_of "$sys")
    timeout -k 5 "$READ_TIMEOUT" cat "$TMP/www/mid.bin" >/dev/null
    log_mark >"$TMP/marks/concurrent.$sys"
    for i in $(seq 1 "$N_READERS"); do
        timeout -k 5 "$READ_TIMEOUT" dd if="$mnt/mid.bin" of=/dev/null bs=1M status=none &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || failed=$((failed + 1)); done
    verify "$sys" "$mnt/mid.bin" mid "after $N_READERS concurrent readers"
    ((failed == 0)) || { log "$failed of $N_READERS concurrent readers of $sys failed"; return 1; }
}

seq_rss() {
    local sys=$1 r=$2 pid rss hwm base
    pid=$(pid_of "$sys")
    [[ -n $pid && -r /proc/$pid/status ]] || return 1
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    base=$(cat "$TMP/state/rss_at_mount.$sys" 2>/dev/null || echo 0)
    sample rss_end "$sys" "$r" "$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')"
    sample rss_peak "$sys" "$r" "$(awk -v k="$hwm" 'BEGIN { printf "%.1f", k / 1024 }')"
    sample rss_end.at_mount_MiB "$sys" "$r" "$(awk -v k="$base" 'BEGIN { printf "%.1f", k / 1024 }')"
    sample rss_end.cache_dir_MiB "$sys" "$r" "$(du -sk "$(cache_of "$sys")" | awk '{printf "%.0f", $1 / 1024}')"
    log "rss run $r: $sys VmRSS $((rss / 1024)) MiB, VmHWM $((hwm / 1024)) MiB (at mount $((base / 1024)) MiB)"
}

SEQ_KEYS="rand_traffic after_random warm hot small_cold small_hot small_warm small_hot_zmo fio_warm concurrent rss_end"

# Figures 4-17 for one system: one fresh mount, the steps in order. A step
# that fails is recorded; if it took the mount with it, the system is
# remounted (cache kept) for the next step, or the rest is skipped.
sequence() {
    local sys=$1 r=$2 step key fn rest restarts=0
    local steps=(
        "rand_traffic seq_random"
        "after_random seq_read after_random"
        "warm seq_read warm"
        "hot seq_read hot"
        "small_cold seq_small_cold"
        "small_hot seq_small_again small_hot"
        "small_warm seq_small_again small_warm"
        "small_hot_zmo seq_small_zmo"
        "fio_warm seq_fio"
        "concurrent seq_concurrent"
        "rss_end seq_rss"
    )
    attempt mount "$sys" "$r" seq_start "$sys" "$r"
    if ((TRY_RC != 0)); then
        for key in $SEQ_KEYS; do sample "$key" "$sys" "$r" "error: mount failed"; done
        sys_umount "$sys"
        return 0
    fi
    for step in "${steps[@]}"; do
        read -r key fn rest <<<"$step"
        if ! sys_alive "$sys"; then
            log "$sys mount is gone; remounting with its cache kept"
            restarts=$((restarts + 1))
            sys_umount "$sys"
            attempt "$key" "$sys" "$r" sys_mount "$sys"
            ((TRY_RC == 0)) || continue
        fi
        # shellcheck disable=SC2086
        attempt "$key" "$sys" "$r" $fn "$sys" "$r" $rest
        # When the small-file pass failed, nothing later should reuse its count.
        [[ $key == small_cold && $TRY_RC != 0 ]] && echo 0 >"$TMP/state/small_done.$sys"
    done
    ((restarts == 0)) || note rss_end "$sys" "run $r: remounted $restarts time(s) after a failed step"
    sys_umount "$sys"
    attempt concurrent "$sys" "$r" seq_end "$sys" "$r"
}

seq_start() {
    local sys=$1 r=$2
    wipe_cache "$sys"
    prime_origin; sync
    rm -f "$TMP/state/warm_reqs.$sys.$r" "$TMP/marks/concurrent.$sys"
    echo "$N_SMALL" >"$TMP/state/small_done.$sys"
    sys_mount "$sys"
}

# After the unmount: figures 16 and 15.
seq_end() {
    local sys=$1 r=$2 out reqs bytes total
    # Figure 16, counted once the daemon is gone, so that requests still open
    # when the readers finished (nginx logs a request when it ends) count too.
    if [[ -s $TMP/marks/concurrent.$sys ]]; then
        origin_quiet >/dev/null
        out=$(log_stats "$(cat "$TMP/marks/concurrent.$sys")" '^/mid\.bin$')
        read -r reqs bytes _ <<<"$out"
        sample concurrent "$sys" "$r" "$bytes"
        sample concurrent baseline "$r" "$MID_SIZE"
        sample concurrent.requests "$sys" "$r" "$reqs"
        log "concurrent run $r: $sys origin $(mib "$bytes") MiB in $reqs requests for a $MID_MIB MiB file"
    fi
    # Figure 15: origin requests of every warm and hot pass of this run.
    if [[ -s $TMP/state/warm_reqs.$sys.$r ]]; then
        total=$(awk '{ s += $1 } END { print s + 0 }' "$TMP/state/warm_reqs.$sys.$r")
        sample warm_reqs "$sys" "$r" "$total"
        if [[ $sys == ston-fs ]]; then
            check "warm and hot passes via ston-fs make no origin request" \
                "$([[ $total == 0 ]] && echo ok || echo FAIL)" "run $r: $total requests"
        fi
    fi
}

# -------------------------------------------------------------- one run

# The available systems, rotated so that run r starts with the r-th one.
rotated() {
    local r=$1 n i
    shift
    n=$#
    local a=("$@")
    for ((i = 0; i < n; i++)); do printf '%s ' "${a[$(((i + r - 1) % n))]}"; done
}

one_run() {
    local r=$1 order s who
    read -r -a order <<<"$(rotated "$r" "${AVAIL[@]}")"
    log "===== run $r/$REPS: ${order[*]}"
    meta "order_run_$r" "${order[*]}"
    for s in "${order[@]}"; do sys_umount "$s"; wipe_cache "$s"; done
    attempt baselines baseline "$r" baselines "$r"
    ((TRY_RC == 0)) || STEP_FAILED=1
    # Fresh state: caches were emptied at the start of the run, so nothing is
    # freed right before a cold read.
    for s in "${order[@]}"; do
        log "== run $r: cold read, fresh state: $s"
        attempt cold_fresh "$s" "$r" cold_read "$s" "$r" cold_fresh
        sys_umount "$s"
    done
    # After a memory-heavy workload: curl takes its turn in the rotation too.
    read -r -a order <<<"$(rotated "$r" curl "${AVAIL[@]}")"
    for who in "${order[@]}"; do
        log "== run $r: cold read after a memory-heavy workload: $who"
        if [[ $who == curl ]]; then
            attempt cold_heavy baseline "$r" heavy_curl "$r"
            ((TRY_RC == 0)) || STEP_FAILED=1
        else
            wipe_cache "$who"
            attempt cold_heavy "$who" "$r" heavy_then_cold "$who" "$r"
            sys_umount "$who"
        fi
    done
    read -r -a order <<<"$(rotated "$r" "${AVAIL[@]}")"
    for s in "${order[@]}"; do
        log "== run $r: sequence: $s"
        sequence "$s" "$r"
    done
}

heavy_then_cold() {
    heavy_workload
    cold_read "$1" "$2" cold_heavy
}

# --------------------------------------------------------------- cleanup

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    ((rc == 0)) || log "stopping (exit $rc): unmounting, stopping daemons and nginx, removing temp files"
    [[ -n $WATCHDOG_PID ]] && kill "$WATCHDOG_PID" 2>/dev/null
    # The step that was running: its children first (timeout passes the
    # signal on to what it runs; figure 16's readers), then the step itself.
    if [[ -n $STEP_PID ]]; then
        pkill -TERM -P "$STEP_PID" 2>/dev/null
        kill -TERM "$STEP_PID" 2>/dev/null
        sleep 0.5
    fi
    local j s
    for j in $(jobs -p); do
        [[ $j == "$NGINX_PID" || $j == "$WATCHDOG_PID" ]] && continue
        kill "$j" 2>/dev/null
    done
    if [[ -n $TMP && -d $TMP ]]; then
        for s in $KNOWN_SYSTEMS; do
            if is_mounted_at "$(mnt_of "$s")" || [[ -n $(pid_of "$s") ]]; then sys_umount "$s"; fi
        done
        stop_nginx
        if grep -q " $TMP/" /proc/mounts; then
            log "WARNING: something is still mounted under $TMP; not deleting it"
        elif [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then
            log "kept $TMP (BENCH_KEEP_TMP=1)"
        else
            rm -rf --one-file-system "$TMP"
        fi
    fi
    [[ -n $WATCHDOG_PID ]] && wait "$WATCHDOG_PID" 2>/dev/null
    exit "$rc"
}

# ------------------------------------------------------------------ main

main() {
    require_root
    install_deps
    build
    size_heavy
    make_tmp
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    start_watchdog

    local commit s r
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
    meta mid_size_h "${MID_MIB} MiB"
    meta n_small "$N_SMALL"
    meta n_random "$N_RANDOM"
    meta random_seed "$RANDOM_SEED"
    meta n_readers "$N_READERS"
    meta fio_runtime "$FIO_RUNTIME"
    meta heavy_desc "${HEAVY_MIB} MiB local file read twice, fio ${HEAVY_FIO_RUNTIME} s, drop_caches"
    meta small_budget "$SMALL_BUDGET"
    meta reps "$REPS"
    meta block_size "$BLOCK_SIZE_OPT"
    meta block_size_bytes "$(numfmt --from=iec "${BLOCK_SIZE_OPT%B}")"
    meta ston_fs_opts "$MOUNT_OPTS"
    meta ston_fs_bin "$BIN"
    meta nginx_version "$(nginx -v 2>&1 | sed 's|.*/||')"
    meta fio_version "$(fio --version)"
    meta systems "${SYSTEMS_REQ[*]}"
    local runcmd="sudo"
    [[ $QUICK == 1 ]] && runcmd+=" BENCH_QUICK=1"
    [[ -n ${BENCH_REPS:-} ]] && runcmd+=" BENCH_REPS=$REPS"
    [[ -n ${BENCH_SYSTEMS:-} || ${BENCH_NO_PEERS:-0} == 1 ]] && runcmd+=" BENCH_SYSTEMS=\"${SYSTEMS_REQ[*]}\""
    [[ -n ${HTTPDIRFS:-} ]] && runcmd+=" HTTPDIRFS=$HTTPDIRFS"
    meta command "$runcmd bash benches/bench.sh"

    gen_files
    start_nginx
    setup_systems
    ((${#AVAIL[@]} > 0)) || log "no system could be mounted; only the baselines will be measured"

    for r in $(seq 1 "$REPS"); do
        one_run "$r"
    done

    for s in $KNOWN_SYSTEMS; do sys_umount "$s"; done
    mkdir -p "$RESULTS_DIR"
    echo
    "$PY" "$HELPERS" render "$TMP/samples.tsv" "$TMP/meta.tsv" "$TMP/checks.tsv" "$TMP/notes.tsv" \
        "$TMP/systems.tsv" "$RESULTS_DIR/latest.md" "$RESULTS_DIR/latest.json"
    if "$PY" "$BENCH_DIR/plot.py" "$RESULTS_DIR/latest.json" "$RESULTS_DIR/latest.png"; then
        log "wrote $RESULTS_DIR/latest.{md,json,png}"
    else
        log "chart failed (matplotlib missing?); wrote $RESULTS_DIR/latest.{md,json}"
    fi
    ((STEP_FAILED == 0)) || { log "some ston-fs steps failed; see the table and checks"; exit 1; }
}

main "$@"
