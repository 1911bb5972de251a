#!/usr/bin/env bash
# benches/apache_small.sh — Apache serving many small files from a ston-fs
# mount, against the same Apache serving a local copy of them.
#
#   sudo bash benches/apache_small.sh
#   sudo STON_FS_OPTS=zero_message_opens=true bash benches/apache_small.sh
#   sudo BENCH_REPS=1 BENCH_DURATION=3 bash benches/apache_small.sh   # a quick try
#
# Root is needed: FUSE mount, /proc/sys/vm/drop_caches, apt-get.
# Dependencies, all Debian packages: apache2-bin (not apache2, which would start a
# system Apache), wrk, nginx and curl. Missing ones are installed with apt-get
# (unless BENCH_NO_INSTALL=1); by hand: apt-get install apache2-bin wrk nginx curl
#
# Two settings compared under the same machine load: alternate single runs, each
# with its own results file, e.g.
#   for i in 1 2 3 4; do for o in zero_message_opens=false zero_message_opens=true; do
#     sudo BENCH_REPS=1 STON_FS_OPTS=$o BENCH_RESULTS_MD=/tmp/apache.$o.$i.md bash benches/apache_small.sh
#   done; done
#
# Set-up: N_FILES files of 2-30 KiB (sizes spread uniformly, deterministic
# content: both come from a fixed seed) in 20 directories, served by a private
# nginx on 127.0.0.1 (benches/nginx.conf.in, as bench.sh). ston-fs mounts that
# origin (-o allow_other, so that Apache's www-data may read it, plus
# STON_FS_OPTS); a local copy of the same files is written beside its cache.
# Every file is read once through the mount and compared with the origin's
# bytes before anything is timed (a mismatch stops the script). One private
# Apache (apache2-bin, event MPM, 2 x 32 threads, KeepAlive On, no access
# log, the rest as tests/service/support.rs's Apache: own ServerRoot, pid,
# mutex and error log in a temp dir, User www-data) serves the local copy
# under /l/ and the mount under /m/ on a free loopback port.
#
# Each run (BENCH_REPS of them), for each side in turn (the side that goes
# first alternates from run to run, and from phase to phase):
#   hot    everything read once already (page cache and ston-fs cache full):
#          wrk, BENCH_CONNS connections, random URLs over all the files (a
#          wrk Lua script, seeded, the same sequence for both sides), for
#          BENCH_DURATION seconds
#   warm   echo 3 > /proc/sys/vm/drop_caches right before the side's wrk run
#          (same wrk run). The files total ~32 MiB, so after the first pass
#          over them most requests of the run are hot again: see "first pass".
#   first pass (warm)  drop_caches, then every file requested exactly once,
#          BENCH_CONNS at a time (curl --parallel), timed: the warm case alone
# Reported: req/s of mount and local, and mount ÷ local of the same run;
# medians over the runs with [min–max]. wrk's non-2xx responses and socket
# errors are counted and shown; Apache answering something else than 200 for
# the first pass is counted too. The load average (/proc/loadavg) is taken at
# the start and the end of every run and shown. The script reports; it never
# fails because of a figure. It exits non-zero if a step could not be run.
#
# Output: the table on stdout; the same, with the command, commit, date and
# load, as a section of BENCH_RESULTS_MD. Each ston-fs option set has its own
# section there: a run replaces the section of its option set and keeps the
# others.
#
# Environment:
#   BENCH_REPS=N          runs; medians over them (default 3)
#   BENCH_DURATION=S      seconds of each wrk run (default 10)
#   BENCH_CONNS=N         wrk connections, and the first pass's parallel requests (default 32)
#   BENCH_THREADS=N       wrk threads (default 2)
#   BENCH_N_FILES=N       number of files (default 2000)
#   STON_FS_BIN=PATH      ston-fs binary (default target/release/ston-fs, built
#                         with cargo build --release when missing)
#   STON_FS_OPTS=K=V,...  extra ston-fs -o options (default none: ston-fs defaults)
#   BENCH_TMPDIR=DIR      parent of the temp dir (default /var/tmp)
#   BENCH_RESULTS_MD=F    default benches/results/apache_small.md
#   BENCH_NO_INSTALL=1    never call apt-get (fail if apache2-bin, wrk, nginx or curl is missing)
#   BENCH_KEEP_TMP=1      keep the temp dir (logs) after the run
#   BENCH_TIMEOUT=S       the whole run is stopped and cleaned up after S s (default 1800)
set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

REPS=${BENCH_REPS:-3}
DURATION=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNS:-32}
THREADS=${BENCH_THREADS:-2}
N_FILES=${BENCH_N_FILES:-2000}
EXTRA_OPTS=${STON_FS_OPTS:-}
RESULTS_MD=${BENCH_RESULTS_MD:-$BENCH_DIR/results/apache_small.md}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1800}
for v in REPS DURATION CONNS THREADS N_FILES BENCH_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer (got '${!v}')" >&2; exit 2; }
done
MOUNT_OPTS="allow_other${EXTRA_OPTS:+,$EXTRA_OPTS}"
SEED=22
MIN_SIZE=2048
MAX_SIZE=30720
N_DIRS=20
STEP_TIMEOUT=300
PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3)

TMP=""
NGINX_PID=""
APACHE_PID=""
STON_PID=""
WATCHDOG_PID=""
MNT=""

log() { printf '[apache_small %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ set-up

[[ $(id -u) == 0 ]] || die "run as root (FUSE mount, drop_caches): sudo bash benches/apache_small.sh"
[[ -c /dev/fuse ]] || die "/dev/fuse missing"

install_deps() {
    local missing=()
    [[ -x /usr/sbin/apache2 ]] || missing+=(apache2-bin)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    ((${#missing[@]} == 0)) && return 0
    [[ ${BENCH_NO_INSTALL:-0} == 1 ]] && die "missing: ${missing[*]} (BENCH_NO_INSTALL=1)"
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 900 apt-get -o DPkg::Lock::Timeout=300 update -qq || die "apt-get update failed"
    timeout 900 apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

build() {
    if [[ -n ${STON_FS_BIN:-} ]]; then
        BIN=$(readlink -f "$STON_FS_BIN")
    else
        BIN="$REPO_DIR/target/release/ston-fs"
        if [[ ! -x $BIN ]]; then
            log "cargo build --release"
            (cd "$REPO_DIR" && cargo build --release) >&2 || die "cargo build failed"
        fi
    fi
    [[ -x $BIN ]] || die "$BIN is not executable"
    # Every -o key must exist in this binary (ston-fs --help lists them).
    local kv k
    IFS=, read -r -a kv <<<"$EXTRA_OPTS"
    for k in "${kv[@]}"; do
        k=${k%%=*}
        [[ -z $k ]] && continue
        "$BIN" --help 2>&1 | grep -qE "^[[:space:]]+$k[[:space:]]" || die "ston-fs has no config key '$k' (see $BIN --help)"
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    ((rc == 0)) || log "stopping (exit $rc): stopping Apache, unmounting, stopping nginx"
    [[ -n $WATCHDOG_PID ]] && kill "$WATCHDOG_PID" 2>/dev/null
    stop_pid "$APACHE_PID" apache2
    if [[ -n $MNT ]] && is_mounted "$MNT"; then
        timeout 20 umount "$MNT" || umount -l "$MNT"
    fi
    stop_pid "$STON_PID" ston-fs
    stop_pid "$NGINX_PID" nginx
    if [[ -n $TMP && -d $TMP ]]; then
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

# TERM, then KILL after 5 s; only the pid we started.
stop_pid() {
    local pid=$1 what=$2 i
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "$what $pid did not stop on TERM; KILL"; kill -KILL "$pid" 2>/dev/null; }
    fi
    wait "$pid" 2>/dev/null || true
}

is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() {   # URL PID WHAT LOG
    local i
    for i in $(seq 1 100); do
        curl -sf --max-time 2 -o /dev/null "$1" && return 0
        kill -0 "$2" 2>/dev/null || { tail -n 10 "$4" >&2; die "$3 exited at start"; }
        sleep 0.1
    done
    tail -n 10 "$4" >&2
    die "$3 did not answer $1 within 10 s"
}

gen_files() {
    log "generating $N_FILES files of $MIN_SIZE-$MAX_SIZE bytes (seed $SEED)"
    "$PY" - "$TMP/www" "$N_FILES" "$N_DIRS" "$MIN_SIZE" "$MAX_SIZE" "$SEED" "$TMP/paths.txt" <<'EOF'
import os, random, sys
root, n, ndirs, lo, hi, seed, listf = sys.argv[1], *map(int, sys.argv[2:7]), sys.argv[7]
rng = random.Random(seed)
paths = []
total = 0
for i in range(n):
    d = f"d{i % ndirs:02d}"
    os.makedirs(os.path.join(root, d), exist_ok=True)
    size = rng.randint(lo, hi)
    data = random.Random(seed * 1_000_003 + i).randbytes(size)
    rel = f"{d}/f{i:05d}.bin"
    with open(os.path.join(root, rel), "wb") as f:
        f.write(data)
    paths.append(rel)
    total += size
open(listf, "w").write("".join(p + "\n" for p in paths))
print(total)
EOF
}

start_nginx() {
    local ng="$TMP/ng" nginx grp port temp_paths="" m
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    grp=nogroup; getent group nogroup >/dev/null || grp=nobody
    temp_paths+="    client_body_temp_path $ng/client_body;"$'\n'
    for m in proxy fastcgi uwsgi scgi; do
        "$nginx" -V 2>&1 | grep -q -- "--without-http_${m}_module" || temp_paths+="    ${m}_temp_path $ng/${m};"$'\n'
    done
    port=$(free_port)
    TEMP_PATHS=$temp_paths "$PY" - "$BENCH_DIR/nginx.conf.in" "$ng/nginx.conf" "$ng" "$port" "$TMP/www" "$grp" <<'EOF'
import os, sys
src, dst, ng, port, www, grp = sys.argv[1:7]
t = open(src).read()
for k, v in {"@NGDIR@": ng, "@PORT@": port, "@DOCROOT@": www, "@USER@": "nobody",
             "@GROUP@": grp, "@TEMP_PATHS@": os.environ["TEMP_PATHS"].rstrip()}.items():
    t = t.replace(k, v)
open(dst, "w").write(t)
EOF
    "$nginx" -t -q -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log" || die "nginx config invalid: $ng/nginx.conf"
    "$nginx" -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log" </dev/null >>"$ng/stdout.log" 2>&1 &
    NGINX_PID=$!
    ORIGIN="http://127.0.0.1:$port/"
    wait_http "${ORIGIN}$(head -n1 "$TMP/paths.txt")" "$NGINX_PID" nginx "$ng/error.log"
    log "nginx $NGINX_PID serving $TMP/www at $ORIGIN"
}

mount_ston() {
    MNT="$TMP/mnt"
    local i
    "$BIN" -f --cache-dir "$TMP/cache" -o "$MOUNT_OPTS" "$ORIGIN" "$MNT" </dev/null >>"$TMP/logs/ston-fs.log" 2>&1 &
    STON_PID=$!
    for i in $(seq 1 300); do
        is_mounted "$MNT" && { log "ston-fs $STON_PID mounted at $MNT (-o $MOUNT_OPTS)"; return 0; }
        kill -0 "$STON_PID" 2>/dev/null || { tail -n 15 "$TMP/logs/ston-fs.log" >&2; die "ston-fs exited before mounting"; }
        sleep 0.1
    done
    die "ston-fs did not mount within 30 s"
}

# Every file through the mount, byte for byte against the origin's file.
verify_mount() {
    log "checking all $N_FILES files through the mount against the origin"
    timeout -k 5 "$STEP_TIMEOUT" "$PY" - "$TMP/www" "$MNT" "$TMP/paths.txt" <<'EOF' || die "the mount's bytes differ from the origin's (see above)"
import sys
www, mnt, listf = sys.argv[1:4]
bad = []
paths = open(listf).read().split()
for p in paths:
    a = open(f"{www}/{p}", "rb").read()
    b = open(f"{mnt}/{p}", "rb").read()
    if a != b:
        bad.append(p)
print(f"{len(paths) - len(bad)} of {len(paths)} files identical through the mount", file=sys.stderr)
if bad:
    print("differ: " + " ".join(bad[:10]), file=sys.stderr)
    sys.exit(1)
EOF
}

start_apache() {
    local a="$TMP/apache" port mods="" m types=/dev/null
    mkdir -p "$a/empty"
    port=$(free_port)
    for m in mpm_event:mod_mpm_event authz_core:mod_authz_core mime:mod_mime alias:mod_alias; do
        mods+="LoadModule ${m%%:*}_module /usr/lib/apache2/modules/${m#*:}.so"$'\n'
    done
    [[ -e /etc/mime.types ]] && types=/etc/mime.types
    cat >"$a/apache2.conf" <<EOF
ServerRoot "$a"
${mods}ServerName 127.0.0.1
Listen 127.0.0.1:$port
PidFile "$a/apache2.pid"
DefaultRuntimeDir "$a"
Mutex file:$a default
ErrorLog "$a/error.log"
LogLevel warn
User www-data
Group www-data
TypesConfig $types
# Apache's defaults: EnableSendfile Off, EnableMMAP On. No access log.
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 15
StartServers 2
ServerLimit 2
ThreadsPerChild 32
MaxRequestWorkers 64
MinSpareThreads 32
MaxSpareThreads 96
DocumentRoot "$a/empty"
<Directory />
  AllowOverride None
  Require all denied
</Directory>
Alias /l/ "$TMP/local/"
Alias /m/ "$MNT/"
<Directory "$TMP/local">
  Options None
  AllowOverride None
  Require all granted
</Directory>
<Directory "$MNT">
  Options None
  AllowOverride None
  Require all granted
</Directory>
EOF
    /usr/sbin/apache2 -t -f "$a/apache2.conf" >"$a/syntax.log" 2>&1 || { cat "$a/syntax.log" >&2; die "apache2 -t rejected $a/apache2.conf"; }
    # Its own process group: Apache signals its group when it stops.
    setsid /usr/sbin/apache2 -DFOREGROUND -f "$a/apache2.conf" </dev/null >"$a/stderr.log" 2>&1 &
    APACHE_PID=$!
    APACHE="http://127.0.0.1:$port"
    local first
    first=$(head -n1 "$TMP/paths.txt")
    wait_http "$APACHE/l/$first" "$APACHE_PID" apache2 "$a/error.log"
    wait_http "$APACHE/m/$first" "$APACHE_PID" apache2 "$a/error.log"
    log "apache2 $APACHE_PID at $APACHE (/l/ local copy, /m/ ston-fs mount)"
}

# A sample of files through Apache on both sides against the origin's bytes.
verify_apache() {
    local p side n=0 bad=0
    for p in $(awk 'NR % 97 == 1' "$TMP/paths.txt"); do
        for side in l m; do
            n=$((n + 1))
            curl -sf --max-time 10 "$APACHE/$side/$p" | cmp -s - "$TMP/www/$p" || { bad=$((bad + 1)); log "differs through Apache: /$side/$p"; }
        done
    done
    ((bad == 0)) || die "$bad of $n files differ through Apache"
    log "$n files through Apache identical to the origin's"
}

write_wrk_script() {
    cat >"$TMP/random.lua" <<EOF
-- Random GETs over the files of $TMP/paths.txt, under the prefix given after --.
-- Each thread is seeded from its index, so both sides get the same sequence.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end
function init(args)
  prefix = args[1]
  paths = {}
  for line in io.lines("$TMP/paths.txt") do paths[#paths + 1] = line end
  math.randomseed($SEED * 1000 + tid)
end
function request()
  return wrk.format("GET", prefix .. paths[math.random(#paths)])
end
EOF
}

# wrk on side l or m; prints "req_per_s non2xx errors".
wrk_run() {
    local side=$1 out rps non2xx errs kinds
    out=$(timeout -k 5 $((DURATION + 60)) wrk -t "$THREADS" -c "$CONNS" -d "${DURATION}s" --timeout 10s \
        -s "$TMP/random.lua" "$APACHE" -- "/$side/")
    echo "$out" >>"$TMP/logs/wrk.log"
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    [[ -n $rps ]] || { echo "$out" >&2; return 1; }
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
    errs=$(awk '/Socket errors:/ { s = 0; for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s }' <<<"$out"); errs=${errs:-0}
    # wrk's own breakdown, e.g. "connect 0, read 2, write 0, timeout 0"
    kinds=$(sed -n 's/^ *Socket errors: *//p' <<<"$out" | tr -s ' ' '_')
    echo "$rps $non2xx $errs ${kinds:-none}"
}

# Every file once, CONNS at a time; prints "req_per_s non200".
first_pass() {
    local side=$1 t0 t1 codes non200
    awk -v u="$APACHE/$side/" '{ printf "url = \"%s%s\"\noutput = \"/dev/null\"\n", u, $1 }' "$TMP/paths.txt" >"$TMP/curl.$side.cfg"
    t0=$(date +%s%N)
    codes=$(timeout -k 5 "$STEP_TIMEOUT" curl -s --no-progress-meter --parallel --parallel-max "$CONNS" \
        -K "$TMP/curl.$side.cfg" -w '%{http_code}\n' 2>>"$TMP/logs/curl.log")
    t1=$(date +%s%N)
    non200=$(grep -vc '^200$' <<<"$codes" || true)
    awk -v n="$N_FILES" -v ns=$((t1 - t0)) -v b="$non200" 'BEGIN { printf "%.1f %d\n", n / (ns / 1e9), b }'
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

hot_all() {   # both sides read once more (all files in the page cache)
    timeout -k 5 "$STEP_TIMEOUT" find "$TMP/local" "$MNT" -type f -exec cat {} + >/dev/null
}

# sample PHASE SIDE RUN VALUE [non2xx errors]
sample() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-0}" "${6:-0}" "${7:-none}" >>"$TMP/samples.tsv"; }

measure() {   # PHASE SIDE RUN
    local phase=$1 side=$2 r=$3 out
    case $phase in
        hot)
            out=$(wrk_run "$side") || { sample "$phase" "$side" "$r" error; return 0; }
            read -r rps n2 er kinds <<<"$out"; sample "$phase" "$side" "$r" "$rps" "$n2" "$er" "$kinds" ;;
        warm)
            drop_caches
            out=$(wrk_run "$side") || { sample "$phase" "$side" "$r" error; return 0; }
            read -r rps n2 er kinds <<<"$out"; sample "$phase" "$side" "$r" "$rps" "$n2" "$er" "$kinds" ;;
        first)
            drop_caches
            out=$(first_pass "$side") || { sample "$phase" "$side" "$r" error; return 0; }
            read -r rps n2 <<<"$out"; sample "$phase" "$side" "$r" "$rps" "$n2" 0 ;;
    esac
    log "run $r $phase $([[ $side == m ]] && echo mount || echo local): $(tail -n1 "$TMP/samples.tsv" | cut -f4-6 | tr '\t' ' ') (req/s non2xx errors)"
}

one_run() {
    local r=$1 phase first second
    echo "$r start $(cut -d' ' -f1-3 /proc/loadavg)" >>"$TMP/load.tsv"
    for phase in hot warm first; do
        # Alternate which side goes first: by run, and by phase within a run.
        if (( (r + ${#phase}) % 2 == 0 )); then first=l; second=m; else first=m; second=l; fi
        [[ $phase == hot ]] && hot_all
        measure "$phase" "$first" "$r"
        [[ $phase == hot ]] && hot_all
        measure "$phase" "$second" "$r"
    done
    echo "$r end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$TMP/load.tsv"
}

report() {
    local section
    section=$("$PY" - "$TMP/samples.tsv" "$TMP/load.tsv" "$TMP/meta.tsv" <<'EOF'
import statistics, sys
samples, loadf, metaf = sys.argv[1:4]
meta = dict(l.rstrip("\n").split("\t", 1) for l in open(metaf) if "\t" in l)
data = {}
for line in open(samples):
    phase, side, run, v, n2, er, kinds = line.rstrip("\n").split("\t")
    data.setdefault(phase, {}).setdefault(side, {})[int(run)] = (v, int(n2), int(er), kinds.replace("_", " "))
def num(x):
    try: return float(x)
    except ValueError: return None
def fmt(xs, nd=0):
    xs = [x for x in xs if x is not None]
    if not xs: return "—"
    m = statistics.median(xs)
    f = f"{{:.{nd}f}}"
    return f"{f.format(m)} [{f.format(min(xs))}–{f.format(max(xs))}]" if len(xs) > 1 else f.format(m)
names = {"hot": "hot (everything read once already), wrk",
         "warm": "warm (drop_caches first), wrk",
         "first": "warm, first pass: every file once (curl --parallel)"}
out = []
out.append("| phase | mount req/s | local req/s | mount ÷ local | runs | errors |")
out.append("|---|---:|---:|---:|---:|---|")
for phase in ("hot", "warm", "first"):
    d = data.get(phase, {})
    runs = sorted(set(d.get("m", {})) | set(d.get("l", {})))
    m = [num(d.get("m", {}).get(r, ("x",))[0]) for r in runs]
    l = [num(d.get("l", {}).get(r, ("x",))[0]) for r in runs]
    ratio = [a / b if a is not None and b else None for a, b in zip(m, l)]
    errs = []
    for side, nm in (("m", "mount"), ("l", "local")):
        for r in runs:
            v, n2, er, kinds = d.get(side, {}).get(r, ("missing", 0, 0, ""))
            if num(v) is None: errs.append(f"{nm} run {r}: {v}")
            if n2: errs.append(f"{nm} run {r}: {n2} non-2xx")
            if er: errs.append(f"{nm} run {r}: {er} socket errors ({kinds})")
    out.append(f"| {names[phase]} | {fmt(m)} | {fmt(l)} | {fmt(ratio, 2)} | {len(runs)} | {'; '.join(errs) or 'none'} |")
out.append("")
out.append("Per run (mount / local req/s, ratio):")
out.append("")
for phase in ("hot", "warm", "first"):
    d = data.get(phase, {})
    parts = []
    for r in sorted(set(d.get("m", {})) | set(d.get("l", {}))):
        a = num(d.get("m", {}).get(r, ("x",))[0]); b = num(d.get("l", {}).get(r, ("x",))[0])
        parts.append(f"run {r}: {a if a is not None else '—'} / {b if b is not None else '—'}"
                     + (f" = {a / b:.2f}" if a is not None and b else ""))
    out.append(f"- {phase}: " + "; ".join(parts))
out.append("")
loads = [l.split() for l in open(loadf)]
out.append("Load average (1, 5, 15 min) at the start / end of each run (the end one includes this benchmark's own wrk and Apache threads): "
           + "; ".join(f"run {x[0]} {x[1]} {' '.join(x[2:5])}" for x in loads))
body = "\n".join(out)
head = [f"### ston-fs -o {meta['mount_opts']}", "",
        f"- command: `{meta['command']}`",
        f"- commit: {meta['commit']}; date: {meta['date']}; machine: {meta['machine']}",
        f"- {meta['n_files']} files, {meta['min_size']}–{meta['max_size']} bytes ({meta['total_bytes']} bytes in all), "
        f"{meta['n_dirs']} directories; wrk {meta['threads']} threads, {meta['conns']} connections, "
        f"{meta['duration']} s per side and phase, random URLs (seeded); {meta['reps']} runs, medians [min–max]; "
        f"the side that goes first alternates",
        f"- Apache: {meta['apache']}, event MPM 2 x 32 threads, KeepAlive On, EnableMMAP On, EnableSendfile Off, no access log; "
        f"{meta['wrk']}; ston-fs: {meta['ston_version']}; origin: private nginx on 127.0.0.1",
        "- the client (wrk or curl), Apache, ston-fs and nginx share the machine's cores (shared with other work: see the load)",
        f"- first pass: the time of one curl process requesting every file once, {meta['conns']} at a time, after drop_caches; "
        "it includes curl's start and is short (about a second), so it is the noisiest row",
        ""]
print("\n".join(head) + "\n" + body)
EOF
)
    echo
    echo "$section"
    echo
    mkdir -p "$(dirname "$RESULTS_MD")"
    SECTION=$section "$PY" - "$RESULTS_MD" "$MOUNT_OPTS" <<'EOF'
import os, re, sys
path, key = sys.argv[1:3]
section = os.environ["SECTION"]
begin, end = f"<!-- section: {key} -->", f"<!-- end: {key} -->"
header = ("# Apache serving small files: ston-fs mount ÷ local copy\n\n"
          "Written by `benches/apache_small.sh` (read its header for the method). One section per ston-fs\n"
          "option set; a run replaces its own section. Ratios are mount ÷ local from the same run.\n"
          "ston-fs always gets -o allow_other (Apache's workers run as www-data); the rest is its defaults\n"
          "plus the section's STON_FS_OPTS.\n")
text = open(path).read() if os.path.exists(path) else header
block = f"{begin}\n{section}\n{end}"
if begin in text and end in text:
    text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
open(path, "w").write(text)
EOF
    log "wrote $RESULTS_MD (section -o $MOUNT_OPTS)"
}

main() {
    install_deps
    build
    local parent=${BENCH_TMPDIR:-/var/tmp}
    TMP=$(mktemp -d "$parent/ston-fs-apache.XXXXXX")
    chmod 755 "$TMP"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    (
        trap 'kill "$sp" 2>/dev/null; exit 0' TERM
        sleep "$BENCH_TIMEOUT" & sp=$!
        wait "$sp"
        log "BENCH_TIMEOUT=${BENCH_TIMEOUT}s reached; stopping"
        kill -TERM $$
    ) &
    WATCHDOG_PID=$!
    mkdir -p "$TMP"/{www,cache,mnt,ng,logs,apache}
    : >"$TMP/samples.tsv"; : >"$TMP/load.tsv"; : >"$TMP/meta.tsv"

    local total
    total=$(gen_files)
    chmod -R a+rX "$TMP/www"
    cp -a "$TMP/www" "$TMP/local"
    sync
    start_nginx
    mount_ston
    verify_mount
    start_apache
    verify_apache
    write_wrk_script

    local cmd="sudo" commit
    [[ -n ${BENCH_REPS:-} ]] && cmd+=" BENCH_REPS=$REPS"
    [[ -n ${BENCH_DURATION:-} ]] && cmd+=" BENCH_DURATION=$DURATION"
    [[ -n ${BENCH_CONNS:-} ]] && cmd+=" BENCH_CONNS=$CONNS"
    [[ -n ${BENCH_N_FILES:-} ]] && cmd+=" BENCH_N_FILES=$N_FILES"
    [[ -n $EXTRA_OPTS ]] && cmd+=" STON_FS_OPTS=$EXTRA_OPTS"
    commit=$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo "no commit")
    {
        printf 'mount_opts\t%s\n' "$MOUNT_OPTS"
        printf 'command\t%s\n' "$cmd bash benches/apache_small.sh"
        printf 'commit\t%s\n' "$commit"
        printf 'date\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf 'machine\t%s\n' "$(nproc) cores, $(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
        printf 'n_files\t%s\nmin_size\t%s\nmax_size\t%s\nn_dirs\t%s\ntotal_bytes\t%s\n' "$N_FILES" "$MIN_SIZE" "$MAX_SIZE" "$N_DIRS" "$total"
        printf 'threads\t%s\nconns\t%s\nduration\t%s\nreps\t%s\n' "$THREADS" "$CONNS" "$DURATION" "$REPS"
        printf 'apache\t%s\n' "$(/usr/sbin/apache2 -v | sed -n 's/^Server version: //p')"
        printf 'wrk\t%s\n' "$({ wrk -v 2>&1 || true; } | awk 'NR == 1 {print $1, $2}')"
        printf 'ston_version\t%s\n' "$("$BIN" --version 2>&1 | head -n1)"
    } >"$TMP/meta.tsv"

    local r
    for r in $(seq 1 "$REPS"); do
        log "===== run $r/$REPS (load $(cut -d' ' -f1-3 /proc/loadavg))"
        one_run "$r"
    done
    report
}

main "$@"
