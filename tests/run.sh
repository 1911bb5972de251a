#!/usr/bin/env bash
# Runs the whole ston-fs test suite on a fresh Debian machine (as root: the tests mount FUSE).
# Installs what the tests use when it is missing, so this one command is the whole set-up.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
# tests/tiers.rs runs nginx parents with proxy_cache and the slice module (in nginx-light).
if command -v nginx >/dev/null 2>&1 && ! nginx -V 2>&1 | grep -q -- --with-http_slice_module; then
    missing+=(nginx-light)
fi
command -v curl >/dev/null 2>&1 || missing+=(curl)
# Apache's binary and modules only; the apache2 package would also start a system Apache.
command -v apache2 >/dev/null 2>&1 || [ -x /usr/sbin/apache2 ] || missing+=(apache2-bin)
command -v umount >/dev/null 2>&1 || missing+=(mount)
# ffmpeg and ffprobe make the test media and check what the mount presents.
{ command -v ffmpeg && command -v ffprobe; } >/dev/null 2>&1 || missing+=(ffmpeg)
# flvmeta and mp3splt check FLV and MP3 clips; nginx-rtmp plays MP4 and FLV files from the
# mount over RTMP.
command -v flvmeta >/dev/null 2>&1 || missing+=(flvmeta)
command -v mp3splt >/dev/null 2>&1 || missing+=(mp3splt)
[ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || missing+=(libnginx-mod-rtmp)
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing test dependencies: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

# Unit tests, then the integration tests: each mounts real FUSE file systems against
# real HTTP origins on loopback. Two test threads suit the 2-core machines.
# Here no mount test may skip itself (tests/common/mod.rs `require_mount!`): without root
# or /dev/fuse they fail, so a green run means every one of them ran.
export STON_FS_REQUIRE_MOUNT=1
cargo test --release --locked -- --test-threads=2
# The locks of the write-behind queue and the cache index under the shuttle model checker
# (src/base/sync.rs), which tries thousands of interleavings of their threads.
cargo test --release --locked --features shuttle --lib shuttle
