#!/usr/bin/env bash
# benches/media.sh — what the first media byte of an MP4 costs through ston-fs, for a
# moov-at-end file (presented header-first by mp4_faststart) against the same streams
# written faststart, in one run.
#
#   sudo bash benches/media.sh              # 5 alternating runs of each, about a minute
#   sudo BENCH_REPS=9 bash benches/media.sh
#
# Each run mounts ston-fs on a new, empty cache against a private nginx on loopback, then
# does what a player does: stat, open, read the top-level boxes from the start until the
# moov is read, then read the first 64 KiB of media data. It reports the time from stat
# to that last byte. A second set of runs with read-ahead off (readahead_max=0) counts the
# origin requests and bytes that first byte needs (from nginx's access log); with
# read-ahead on, a sequential reader also starts prefetching, which would be counted too.
# The ratio moov-at-end / faststart is the figure; a third row, mp4_faststart=false, shows
# what a player reading from the start would pay without the feature.
#
# Environment: STON_FS_BIN=PATH (else cargo build --release), BENCH_REPS=N (default 5),
# BENCH_TMPDIR=DIR (default /var/tmp), BENCH_RESULTS_DIR=DIR (default benches/results),
# BENCH_SECONDS=N (length of the test video, default 120).
set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
REPS=${BENCH_REPS:-5}
SECONDS_LONG=${BENCH_SECONDS:-120}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$BENCH_DIR/results}
PY=/usr/bin/python3
STEP_TIMEOUT=120
TMP=""
NGINX_PID=""

log() { printf '[media-bench %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cleanup() {
    local m
    for m in "$TMP"/mnt-*; do
        [[ -d $m ]] && mountpoint -q "$m" && umount -l "$m" 2>/dev/null || true
    done
    [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null || true
    [[ -n $TMP && ${BENCH_KEEP_TMP:-0} != 1 ]] && rm -rf "$TMP"
    return 0
}
trap cleanup EXIT

[[ $(id -u) == 0 ]] || die "run as root (FUSE mounts): sudo bash benches/media.sh"
for tool in ffmpeg nginx curl; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || {
        log "installing $tool"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$([[ $tool == nginx ]] && echo nginx-light || echo "$tool")" >/dev/null
    }
done

if [[ -n ${STON_FS_BIN:-} ]]; then
    BIN=$(readlink -f "$STON_FS_BIN")
else
    log "cargo build --release"
    (cd "$REPO_DIR" && cargo build --release -q) >&2
    BIN="$REPO_DIR/target/release/ston-fs"
fi
[[ -x $BIN ]] || die "no ston-fs binary at $BIN"

TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/ston-fs-media.XXXXXX")
chmod 755 "$TMP"
mkdir -p "$TMP/www" "$TMP/ng"

log "making a ${SECONDS_LONG} s 720p H.264 + AAC video (moov at the end) and its faststart copy"
timeout 600 ffmpeg -v error -y -f lavfi -i "testsrc2=size=1280x720:rate=25" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000" -t "$SECONDS_LONG" \
    -vf "noise=alls=20:allf=t" -c:v libx264 -preset veryfast -b:v 2M -g 50 -bf 2 \
    -c:a aac -b:a 128k "$TMP/www/end.mp4"
timeout 120 ffmpeg -v error -y -i "$TMP/www/end.mp4" -c copy -movflags +faststart "$TMP/www/front.mp4"
chmod -R a+rX "$TMP/www"
SIZE=$(stat -c %s "$TMP/www/end.mp4")

PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$TMP/ng/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $TMP/ng/nginx.pid;
error_log $TMP/ng/error.log warn;
events { worker_connections 256; }
http {
    log_format bench '\$status \$body_bytes_sent "\$request"';
    access_log $TMP/ng/access.log bench;
    client_body_temp_path $TMP/ng; proxy_temp_path $TMP/ng; fastcgi_temp_path $TMP/ng;
    uwsgi_temp_path $TMP/ng; scgi_temp_path $TMP/ng;
    sendfile on;
    default_type application/octet-stream;
    server { listen 127.0.0.1:$PORT; root $TMP/www; }
}
EOF
nginx -p "$TMP/ng" -c "$TMP/ng/nginx.conf" </dev/null >/dev/null 2>&1 &
NGINX_PID=$!
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/front.mp4" -r 0-0 && break; sleep 0.1; done

# What a player does: stat, open, walk the top-level boxes from the start until the moov has
# been read, then read 64 KiB of media data. Prints the seconds that took.
cat >"$TMP/player.py" <<'EOF'
import os, struct, sys, time
path = sys.argv[1]
t0 = time.perf_counter()
size = os.stat(path).st_size
fd = os.open(path, os.O_RDONLY)
pos, moov_done, mdat_payload = 0, False, None
while pos + 8 <= size and (not moov_done or mdat_payload is None):
    head = os.pread(fd, 16, pos)
    box, kind = struct.unpack(">I4s", head[:8])
    hdr = 8
    if box == 1:
        box, hdr = struct.unpack(">Q", head[8:16])[0], 16
    elif box == 0:
        box = size - pos
    if kind == b"moov":
        os.pread(fd, box, pos)                 # the whole header
        moov_done = True
    elif kind == b"mdat":
        if mdat_payload is None:
            mdat_payload = pos + hdr
        if not moov_done:                      # a sequential reader must read through it
            at = pos
            while at < pos + box:
                n = len(os.pread(fd, min(1 << 20, pos + box - at), at))
                if n == 0:
                    break
                at += n
    pos += box
first = os.pread(fd, 65536, mdat_payload)
t1 = time.perf_counter()
os.close(fd)
assert moov_done and len(first) == 65536, (moov_done, len(first))
print(f"{t1 - t0:.6f}")
EOF

# One cold run: a new cache and mount, the player, the origin's traffic for it.
run_once() {  # variant file opts -> "seconds requests bytes"
    local variant=$1 file=$2 opts=$3 mnt="$TMP/mnt-$variant" cache="$TMP/cache-$variant"
    rm -rf "$cache"; mkdir -p "$mnt" "$cache"
    "$BIN" -o "block_size=1M${opts:+,$opts}" --cache-dir "$cache" "http://127.0.0.1:$PORT/" "$mnt" \
        >>"$TMP/daemon.log" 2>&1 || die "mount failed: $(tail -3 "$TMP/daemon.log")"
    local before after out
    before=$(wc -l <"$TMP/ng/access.log")
    out=$(timeout "$STEP_TIMEOUT" "$PY" "$TMP/player.py" "$mnt/$file") || die "player failed on $variant"
    sleep 0.3 # nginx logs a request just after its last byte
    after=$(wc -l <"$TMP/ng/access.log")
    umount "$mnt" || umount -l "$mnt"
    local traffic
    traffic=$(sed -n "$((before + 1)),${after}p" "$TMP/ng/access.log" |
        awk -v f="/$file" '$0 ~ f { n++; b += $2 } END { printf "%d %d", n, b }')
    echo "$out $traffic"
}

calc() { awk "BEGIN { print $1 }"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A T R B
for rep in $(seq "$REPS"); do
    order=(end front off end0 front0 off0)
    ((rep % 2 == 0)) && order=(front0 off0 end0 front off end)
    for variant in "${order[@]}"; do
        no_ahead=""
        [[ $variant == *0 ]] && no_ahead="readahead_max=0"
        case ${variant%0} in
            end) res=$(run_once "$variant" end.mp4 "$no_ahead") ;;
            front) res=$(run_once "$variant" front.mp4 "$no_ahead") ;;
            off) res=$(run_once "$variant" end.mp4 "mp4_faststart=false${no_ahead:+,$no_ahead}") ;;
        esac
        read -r t r b <<<"$res"
        T[$variant]+="$t "; R[$variant]+="$r "; B[$variant]+="$b "
        log "run $rep $variant: ${t}s, $r origin requests, $b origin bytes"
    done
done

row() { # variant label
    local t t0 r b
    t=$(median ${T[$1]}); t0=$(median ${T[${1}0]}); r=$(median ${R[${1}0]}); b=$(median ${B[${1}0]})
    printf '| %s | %.1f | %.1f | %s | %s |\n' "$2" "$(calc "$t * 1000")" "$(calc "$t0 * 1000")" "$r" "$b"
}
ft=$(median ${T[front]}); et=$(median ${T[end]}); ot=$(median ${T[off]})
ft0=$(median ${T[front0]}); et0=$(median ${T[end0]})
fb=$(median ${B[front0]}); eb=$(median ${B[end0]}); ob=$(median ${B[off0]})
fr=$(median ${R[front0]}); er=$(median ${R[end0]})
range() { printf '%s\n' $1 | sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { printf "%.1f–%.1f", a * 1000, b * 1000 }'; }
mkdir -p "$RESULTS_DIR"
{
    echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, kernel $(uname -r), nginx on loopback,"
    echo "block_size=1M, a ${SECONDS_LONG} s 720p H.264 + AAC file of $SIZE bytes, cold cache each run,"
    echo "median of $REPS alternating runs."
    echo
    echo "| file | ms to the first media byte | the same, read-ahead off | origin requests until then (read-ahead off) | origin bytes until then (read-ahead off) |"
    echo "|---|---|---|---|---|"
    row end "moov at the end, presented header-first"
    row front "faststart original (baseline)"
    row off "moov at the end, \`mp4_faststart=false\`, read from the start"
    echo
    printf 'Ratio moov-at-end / faststart: time %.2f (read-ahead off: %.2f), origin requests %s / %s, origin bytes %.2f. ' \
        "$(calc "$et / $ft")" "$(calc "$et0 / $ft0")" "$er" "$fr" "$(calc "$eb / $fb")"
    printf 'Without mp4_faststart: time %.1f×, origin bytes %.1f× the faststart file.\n' \
        "$(calc "$ot / $ft")" "$(calc "$ob / $fb")"
    echo
    echo "Ranges (ms): header-first $(range "${T[end]}"), faststart $(range "${T[front]}"), off $(range "${T[off]}")."
} | tee "$RESULTS_DIR/media.md"
