#!/usr/bin/env bash
# Installs ston-fs: the release binary, the mount(8) helpers and the systemd units.
#
#   mount-helpers/install.sh [--prefix DIR]     (default prefix /usr/local; run as root)
#
# After it: `mount -t fuse.ston-fs http://origin/ /mnt/origin -o allow_other` works, fstab
# lines with type fuse.ston-fs work, and `systemctl enable --now ston-fs@mnt-origin` mounts
# /mnt/origin with /etc/ston-fs/mnt-origin.toml.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: mount-helpers/install.sh [--prefix DIR] [--sbindir DIR] [--unitdir DIR]

Installs ston-fs (run as root): the release binary in PREFIX/bin (default /usr/local/bin),
the mount(8) helpers mount.fuse.ston-fs and mount.ston-fs in SBINDIR (default /sbin, where
mount(8) looks), and the systemd units in UNITDIR (default /etc/systemd/system).
Set STON_FS_BIN=PATH to install that binary instead of building one with cargo.

Afterwards these work:
  mount -t fuse.ston-fs http://origin/ /mnt/origin -o allow_other,cache_dir=/var/cache/ston-fs
  fstab: http://origin/ /mnt/origin fuse.ston-fs _netdev,nofail,allow_other 0 0
  systemctl enable --now ston-fs@mnt-origin     (reads /etc/ston-fs/mnt-origin.toml)
USAGE
}

prefix=/usr/local
sbindir=/sbin            # where mount(8) looks for mount.<type> helpers
unitdir=/etc/systemd/system
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --sbindir) sbindir=$2; shift 2 ;;
        --unitdir) unitdir=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bindir=$prefix/bin

if [ -z "${STON_FS_BIN:-}" ]; then
    (cd "$repo" && cargo build --release --locked)
    STON_FS_BIN=$repo/target/release/ston-fs
fi

install -d -m 0755 "$bindir" "$sbindir" "$unitdir" /etc/ston-fs
# Replacing another build is worth a line: a running mount keeps the old binary until it is
# restarted (`ston-fs restart MOUNTPOINT` takes the new one without unmounting).
if [ -e "$bindir/ston-fs" ] && ! cmp -s "$STON_FS_BIN" "$bindir/ston-fs"; then
    old_version=$("$bindir/ston-fs" --version 2>/dev/null || echo "an unknown version")
    echo "install.sh: replacing $bindir/ston-fs ($old_version) with this build;" \
        "running mounts keep the old one until 'ston-fs restart MOUNTPOINT'"
fi
install -m 0755 "$STON_FS_BIN" "$bindir/ston-fs"

# One helper under both names mount(8) tries: mount.fuse.ston-fs and mount.ston-fs.
helper=$(mktemp)
trap 'rm -f "$helper"' EXIT
sed "s|@BINDIR@|$bindir|g" "$repo/mount-helpers/mount.fuse.ston-fs" > "$helper"
install -m 0755 "$helper" "$sbindir/mount.fuse.ston-fs"
install -m 0755 "$helper" "$sbindir/mount.ston-fs"

for unit in "$repo"/systemd/*.service "$repo"/systemd/*.mount; do
    sed "s|@BINDIR@|$bindir|g" "$unit" > "$helper"
    install -m 0644 "$helper" "$unitdir/$(basename "$unit")"
done
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

echo "installed: $bindir/ston-fs, $sbindir/mount.fuse.ston-fs, $sbindir/mount.ston-fs, units in $unitdir"
