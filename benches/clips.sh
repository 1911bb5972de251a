#!/usr/bin/env bash
# benches/clips.sh — the first byte of a cold MP3 and FLV clip through ston-fs, against reading
# the whole original through it, in one run.
#
#   sudo bash benches/clips.sh              # 5 alternating runs of each
#   sudo BENCH_REPS=9 bash benches/clips.sh
#
# Each run mounts ston-fs on a new, empty cache against a private nginx on loopback. A clip
# run stats, opens and reads the first 64 KiB of a 10 s clip from the middle of the file
# (`?start=S&end=S+10`) and times that; a baseline run reads the whole original the same
# way (what serving the clip would cost without clips: a copy cut from the whole file). The
# origin's requests and bytes for each come from nginx's access log (read-ahead off for
# those, so only what the reads need is counted). The ratio clip / whole original is the
# figure.
#
# Environment: STON_FS_BIN=PATH (else cargo build --release), BENCH_REPS=N (default 5),
# BENCH_TMPDIR=DIR (default /var/tmp), BENCH_RESULTS_DIR=DIR (default benches/results).
set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
REPS=${BENCH_REPS:-5}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$BENCH_DIR/results}
PY=/usr/bin/python3
STEP_TIMEOUT=120
TMP=""
NGINX_PID=""

log() { printf '[clips-bench %(%T)T] %s\n' -1 "$*" >&2; }
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

[[ $(id -u) == 0 ]] || die "run as root (FUSE mounts): sudo bash benches/clips.sh"
for tool in ffmpeg nginx curl; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || die "$tool is missing: bash tests/run.sh installs it"
done

if [[ -n ${STON_FS_BIN:-} ]]; then
    BIN=$(readlink -f "$STON_FS_BIN")
else
    log "cargo build --release"
    (cd "$REPO_DIR" && cargo build --release -q) >&2
    BIN="$REPO_DIR/target/release/ston-fs"
fi
[[ -x $BIN ]] || die "no ston-fs binary at $BIN"

TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/ston-fs-clips.XXXXXX")
chmod 755 "$TMP"
mkdir -p "$TMP/www" "$TMP/ng"

log "making a 600 s MP3 (128 kb/s CBR, and LAME VBR) and a 120 s 360p H.264 + AAC FLV"
CHIRPS="aevalsrc=sin(2*PI*(200+0.5*t)*t)|0.5*sin(2*PI*(500+0.3*t)*t)+0.2*random(0):d=600:s=44100"
timeout 600 ffmpeg -v error -y -f lavfi -i "$CHIRPS" -c:a libmp3lame -b:a 128k "$TMP/www/cbr.mp3"
timeout 600 ffmpeg -v error -y -f lavfi -i "$CHIRPS" -c:a libmp3lame -q:a 2 "$TMP/www/vbr.mp3"
timeout 600 ffmpeg -v error -y -f lavfi -i "testsrc2=size=640x360:rate=25" \
    -f lavfi -i "sine=frequency=440:sample_rate=44100" -t 120 \
    -vf "noise=alls=20:allf=t" -c:v libx264 -preset veryfast -b:v 1500k -g 50 \
    -c:a aac -b:a 128k -flvflags add_keyframe_index "$TMP/www/video.flv"
chmod -R a+rX "$TMP/www"
sizes=$(stat -c '%n %s' "$TMP"/www/* | sed "s|$TMP/www/||" | tr '\n' ' ')

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
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/cbr.mp3" -r 0-0 && break; sleep 0.1; done

# stat, open, then the first 64 KiB ("first") or every byte ("whole"); prints the seconds.
cat >"$TMP/reader.py" <<'EOF'
import os, sys, time
path, how = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
size = os.stat(path).st_size
fd = os.open(path, os.O_RDONLY)
want = min(size, 65536) if how == "first" else size
got = 0
while got < want:
    n = len(os.pread(fd, min(1 << 20, want - got), got))
    if n == 0:
        break
    got += n
t1 = time.perf_counter()
os.close(fd)
assert got == want, (got, want)
print(f"{t1 - t0:.6f}")
EOF

# One cold run: a new cache and mount, the reader, the origin's traffic for it.
run_once() {  # label name how opts -> "seconds requests bytes"
    local label=$1 name=$2 how=$3 opts=$4 mnt="$TMP/mnt-$1" cache="$TMP/cache-$1"
    rm -rf "$cache"; mkdir -p "$mnt" "$cache"
    "$BIN" -o "block_size=1M${opts:+,$opts}" --cache-dir "$cache" "http://127.0.0.1:$PORT/" "$mnt" \
        >>"$TMP/daemon.log" 2>&1 || die "mount failed: $(tail -3 "$TMP/daemon.log")"
    local before after out file=${name%%\?*}
    before=$(wc -l <"$TMP/ng/access.log")
    out=$(timeout "$STEP_TIMEOUT" "$PY" "$TMP/reader.py" "$mnt/$name" "$how") || die "reader failed on $label"
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

declare -A NAME HOW T R B
NAME[cbr]="cbr.mp3?start=300&end=310"; HOW[cbr]=first
NAME[vbr]="vbr.mp3?start=300&end=310"; HOW[vbr]=first
NAME[flv]="video.flv?start=60&end=70"; HOW[flv]=first
NAME[cbr_whole]="cbr.mp3"; HOW[cbr_whole]=whole
NAME[vbr_whole]="vbr.mp3"; HOW[vbr_whole]=whole
NAME[flv_whole]="video.flv"; HOW[flv_whole]=whole
variants=(cbr cbr_whole vbr vbr_whole flv flv_whole)
for rep in $(seq "$REPS"); do
    order=("${variants[@]}")
    ((rep % 2 == 0)) && order=(flv_whole flv vbr_whole vbr cbr_whole cbr)
    for v in "${order[@]}"; do
        read -r t _ _ <<<"$(run_once "$v" "${NAME[$v]}" "${HOW[$v]}" "")"
        read -r _ r b <<<"$(run_once "${v}0" "${NAME[$v]}" "${HOW[$v]}" "readahead_max=0")"
        T[$v]+="$t "; R[$v]+="$r "; B[$v]+="$b "
        log "run $rep $v: ${t}s; read-ahead off: $r origin requests, $b origin bytes"
    done
done

row() { # variant label
    printf '| %s | %.1f | %s | %s |\n' "$2" "$(calc "$(median ${T[$1]}) * 1000")" \
        "$(median ${R[$1]})" "$(median ${B[$1]})"
}
ratio() { calc "$(median ${T[$1]}) / $(median ${T[$2]})"; }
range() { printf '%s\n' ${T[$1]} | sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { printf "%.1f–%.1f", a * 1000, b * 1000 }'; }
mkdir -p "$RESULTS_DIR"
{
    echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, kernel $(uname -r), nginx on loopback,"
    echo "block_size=1M, cold cache each run, median of $REPS alternating runs. Files: $sizes"
    echo
    echo "| read | ms | origin requests (read-ahead off) | origin bytes (read-ahead off) |"
    echo "|---|---|---|---|"
    row cbr "first 64 KiB of \`cbr.mp3?start=300&end=310\` (CBR, computed)"
    row cbr_whole "the whole \`cbr.mp3\` (baseline)"
    row vbr "first 64 KiB of \`vbr.mp3?start=300&end=310\` (VBR: seek table, then its frames walked)"
    row vbr_whole "the whole \`vbr.mp3\` (baseline)"
    row flv "first 64 KiB of \`video.flv?start=60&end=70\` (keyframe index, then its tags walked)"
    row flv_whole "the whole \`video.flv\` (baseline)"
    echo
    printf 'Ratio clip first byte / whole original: CBR MP3 %.3f, VBR MP3 %.3f, FLV %.3f.\n' \
        "$(ratio cbr cbr_whole)" "$(ratio vbr vbr_whole)" "$(ratio flv flv_whole)"
    echo
    echo "Ranges (ms): CBR clip $(range cbr), whole $(range cbr_whole); VBR clip $(range vbr), whole $(range vbr_whole); FLV clip $(range flv), whole $(range flv_whole)."
} | tee "$RESULTS_DIR/clips.md"
