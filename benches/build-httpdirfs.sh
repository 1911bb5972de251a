#!/usr/bin/env bash
# benches/build-httpdirfs.sh — builds httpdirfs (1.3.3, or whatever version the
# source tree holds) from a source tree, for benches/bench.sh's HTTPDIRFS peer.
#
#   sudo bash benches/build-httpdirfs.sh SRC_DIR [OUT_DIR]
#   HTTPDIRFS=$(sudo bash benches/build-httpdirfs.sh SRC_DIR) BENCH_QUICK=1 sudo -E bash benches/bench.sh
#
# SRC_DIR is an httpdirfs source tree (https://github.com/fangfufu/httpdirfs,
# tag 1.3.3); this script never downloads it. It is left untouched: the tree
# is copied to OUT_DIR/src, and in the copy meson.build's `subdir('tests')` is
# taken out (the tests need CUnit and are not part of the binary). meson and
# ninja then build OUT_DIR/build/httpdirfs (buildtype=release, as upstream's
# default). The binary's absolute path is the only thing printed on stdout;
# progress goes to stderr. Exits non-zero, with the reason, if anything fails.
#
# Build dependencies (from its meson.build: gumbo, libcurl, fuse3, uuid,
# expat, openssl; plus meson, ninja, pkg-config, a C compiler) are installed
# with apt-get when missing (Debian/Ubuntu), unless BENCH_NO_INSTALL=1.
#
# Arguments / environment:
#   SRC_DIR               the httpdirfs source tree (required)
#   OUT_DIR               build dir (default /var/tmp/httpdirfs-build); its
#                         src/ and build/ subdirs are replaced
#   BENCH_NO_INSTALL=1    never call apt-get; fail if a dependency is missing
#   INSTALL_TIMEOUT=S     bound on each apt-get call (default 900)
set -euo pipefail

log() { printf '[build-httpdirfs %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'rc=$?; ((rc == 0)) || log "failed (exit $rc)"' EXIT

(($# >= 1 && $# <= 2)) || die "usage: $0 SRC_DIR [OUT_DIR]"
SRC=$(readlink -f "$1")
OUT=$(readlink -m "${2:-/var/tmp/httpdirfs-build}")
[[ -f $SRC/meson.build && -d $SRC/src ]] || die "$SRC is not an httpdirfs source tree (no meson.build / src/)"
grep -q "project('httpdirfs'" "$SRC/meson.build" || die "$SRC/meson.build is not httpdirfs's"
INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-900}

# pkg-config name -> Debian package. libcurl: the OpenSSL flavour, like Debian's
# own httpdirfs package; the GnuTLS one is tried if that cannot be installed.
declare -A PKG=([gumbo]=libgumbo-dev [libcurl]=libcurl4-openssl-dev [fuse3]=libfuse3-dev
                [uuid]=uuid-dev [expat]=libexpat1-dev [openssl]=libssl-dev)
missing=()
for t in meson ninja pkg-config cc; do
    command -v "$t" >/dev/null 2>&1 && continue
    case $t in ninja) missing+=(ninja-build) ;; cc) missing+=(gcc) ;; *) missing+=("$t") ;; esac
done
for p in "${!PKG[@]}"; do
    command -v pkg-config >/dev/null 2>&1 && pkg-config --exists "$p" && continue
    missing+=("${PKG[$p]}")
done
if ((${#missing[@]} > 0)); then
    [[ ${BENCH_NO_INSTALL:-0} == 1 ]] && die "missing build dependencies: ${missing[*]} (BENCH_NO_INSTALL=1)"
    [[ $(id -u) == 0 ]] || die "missing build dependencies: ${missing[*]}; run as root to apt-get them"
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get install ${missing[*]}"
    timeout "$INSTALL_TIMEOUT" apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 || die "apt-get update failed"
    if ! timeout "$INSTALL_TIMEOUT" apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >&2; then
        alt=("${missing[@]/libcurl4-openssl-dev/libcurl4-gnutls-dev}")
        [[ ${alt[*]} != "${missing[*]}" ]] || die "apt-get install ${missing[*]} failed"
        log "retrying with libcurl4-gnutls-dev"
        timeout "$INSTALL_TIMEOUT" apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${alt[@]}" >&2 ||
            die "apt-get install ${alt[*]} failed"
    fi
fi

# A fresh copy, without tests/ and without the subdir('tests') line.
mkdir -p "$OUT"
rm -rf --one-file-system "$OUT/src" "$OUT/build"
cp -a "$SRC" "$OUT/src"
rm -rf "$OUT/src/tests" "$OUT/src/.git"
sed -i "/^[[:space:]]*subdir('tests')/d" "$OUT/src/meson.build"
grep -q "subdir('tests')" "$OUT/src/meson.build" && die "could not remove subdir('tests') from meson.build"
version=$(sed -n "s/^[[:space:]]*version:[[:space:]]*'\([^']*\)'.*/\1/p" "$OUT/src/meson.build" | head -n1)
log "building httpdirfs ${version:-?} from $SRC in $OUT"

meson setup "$OUT/build" "$OUT/src" --buildtype=release >&2 || die "meson setup failed"
ninja -C "$OUT/build" httpdirfs >&2 || die "ninja failed"
BIN="$OUT/build/httpdirfs"
[[ -x $BIN ]] || die "$BIN missing after the build"
got=$("$BIN" --version 2>&1 | grep -m1 -io 'version[^,]*' || true)
log "built: $BIN ($got)"
echo "$BIN"
