#!/usr/bin/env bash
# benches/tiers.sh — origin load and parent disk use of a cache tier, for N = 1..8 edges.
#
#   sudo bash benches/tiers.sh               # full run: 300 objects, 4 KiB–64 MiB
#   sudo TIERS_QUICK=1 bash benches/tiers.sh # 120 objects, 4 KiB–16 MiB
#
# Everything runs on loopback: a private nginx origin, three nginx parents built from
# benches/tier-parent.conf.in (proxy_cache, proxy_cache_lock, slice 1m), and N ston-fs
# edges (separate mounts and caches) reading the same objects at once: whole reads of the
# small ones, random ranges of the big ones, every byte checked against the origin's file.
# For each N and for balance=hash, balance=round_robin and no tier at all (edges straight
# to the origin), it counts what the origin sent and what the parents keep on disk.
#
# Output: a table on stdout, and benches/results/tiers.{md,json,png}.
#
# Environment:
#   TIERS_QUICK=1          the smaller data set
#   TIERS_OBJECTS, TIERS_MAX_SIZE, TIERS_EDGES   override the data set / the list of N
#   STON_FS_BIN=PATH       use this binary; otherwise `cargo build --release`
#   TIERS_TMPDIR=DIR       parent of the temp dir (default /var/tmp)
#   TIERS_RESULTS_DIR=DIR  default benches/results
#   TIERS_NO_INSTALL=1     never call apt-get
#   TIERS_KEEP_TMP=1       keep the temp dir (logs, parent caches) after the run
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
PY=/usr/bin/python3
TMP=""

log() { printf '[tiers %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (FUSE mounts): sudo bash benches/tiers.sh"
[[ -c /dev/fuse ]] || die "/dev/fuse missing"

install_missing() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
    [[ -x $PY ]] || missing+=(python3)
    [[ -x $PY ]] && "$PY" -c 'import matplotlib' 2>/dev/null || missing+=(python3-matplotlib)
    ((${#missing[@]} == 0)) && return 0
    [[ ${TIERS_NO_INSTALL:-0} == 1 ]] && die "missing: ${missing[*]} (TIERS_NO_INSTALL=1)"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

build() {
    if [[ -n ${STON_FS_BIN:-} ]]; then
        BIN=$(readlink -f "$STON_FS_BIN")
        [[ -x $BIN ]] || die "STON_FS_BIN=$STON_FS_BIN is not executable"
        return
    fi
    log "cargo build --release"
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
        # Under sudo, build as the invoking user so target/ does not become root-owned.
        runuser -u "$SUDO_USER" -- bash -lc "cd '$REPO_DIR' && cargo build --release" >&2
    else
        local cargo
        cargo=$(command -v cargo || echo "${HOME:-/root}/.cargo/bin/cargo")
        [[ -x $cargo ]] || die "cargo not found (install rustup, or set STON_FS_BIN)"
        (cd "$REPO_DIR" && "$cargo" build --release) >&2
    fi
    BIN="$REPO_DIR/target/release/ston-fs"
    [[ -x $BIN ]] || die "$BIN missing after build"
}

# Whatever the run leaves behind (it cleans up after itself; this is for a crash or ^C):
# lazily detach our mounts, stop our processes (their pids are in $TMP/pids), remove $TMP.
cleanup() {
    [[ -n $TMP && -d $TMP ]] || return 0
    local mnt pid
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v t="$TMP/" 'index($5, t) == 1 { print $5 }' /proc/self/mountinfo)
    if [[ -f $TMP/pids ]]; then
        while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$TMP/pids"
    fi
    if [[ ${TIERS_KEEP_TMP:-0} == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_missing
build
TMP=$(mktemp -d "${TIERS_TMPDIR:-/var/tmp}/ston-fs-tiers.XXXXXX")
log "working in $TMP with $BIN"

args=(--bin "$BIN" --tmp "$TMP" --template "$REPO_DIR/benches/tier-parent.conf.in"
      --results "${TIERS_RESULTS_DIR:-$BENCH_DIR/results}")
if [[ ${TIERS_QUICK:-0} == 1 ]]; then
    args+=(--objects 120 --max-size 16M --mode quick)
else
    args+=(--objects 300 --max-size 64M --mode full)
fi
[[ -n ${TIERS_OBJECTS:-} ]] && args+=(--objects "$TIERS_OBJECTS")
[[ -n ${TIERS_MAX_SIZE:-} ]] && args+=(--max-size "$TIERS_MAX_SIZE")
[[ -n ${TIERS_EDGES:-} ]] && args+=(--edges "$TIERS_EDGES")
args+=(--command "${TIERS_COMMAND:-sudo bash benches/tiers.sh}")
"$PY" "$BENCH_DIR/tiers.py" "${args[@]}"
