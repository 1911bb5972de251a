//! Shared harness for the ston-fs integration tests.
//!
//! - `origin`: in-process HTTP/1.1 test origin with request recording and
//!   fault knobs, plus the `pattern` content generator.
//! - `certs`: certificates for the https test origins.
//! - `kernel`: a fake kernel driving `StonFs` with FUSE-shaped calls, without FUSE.
//! - `layer`: a cache and the media layer on their own runtime, driven without FUSE.
//! - `mount`: runs the real binary on a fresh mount point and cleans up.
//! - `nginx`: a private nginx that logs every request, and process helpers for servers.
//! - `process`: `ston-fs` processes found by their command line, and waited for.
//! - `tier`: parent caches (private nginx with proxy_cache and slices) for a cache tier.
//! - this module: small read/compare helpers, a seeded RNG, and [`require_mount!`] (or
//!   [`mount_origin`]), which every test that mounts FUSE starts with.
#![allow(dead_code)]

pub mod certs;
pub mod kernel;
pub mod layer;
pub mod mount;
pub mod nginx;
pub mod origin;
pub mod process;
pub mod tier;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Starts a test that mounts FUSE: without root or `/dev/fuse` the test is skipped, saying
/// so on the terminal, so that a plain `cargo test` passes for anyone. Where skipping is
/// forbidden (`CI` set, or `STON_FS_REQUIRE_MOUNT=1`, which `tests/run.sh` exports) the test
/// fails instead: there every mount test must run.
#[allow(unused_macros)]
macro_rules! require_mount {
    () => {
        if $crate::common::skip_without_mount() {
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_mount;

/// A test origin for a test that mounts FUSE, or `None` when the test is skipped (see
/// [`require_mount!`]): `let Some(origin) = mount_origin() else { return };`.
pub fn mount_origin() -> Option<origin::Origin> {
    (!skip_without_mount()).then(origin::Origin::start)
}

/// Whether the running test must be skipped for want of a mount (see [`require_mount!`]).
pub fn skip_without_mount() -> bool {
    let Some(missing) = mount_missing() else {
        return false;
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if skipping_forbidden() {
        panic!(
            "{test} needs a FUSE mount, but {missing}; skipping is forbidden here \
             (CI or STON_FS_REQUIRE_MOUNT is set)"
        );
    }
    // Straight to the terminal: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs a FUSE mount, but {missing} (`sudo bash tests/run.sh` runs all)"
    );
    true
}

/// Why this process cannot mount FUSE, if it cannot.
fn mount_missing() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("this user is not root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("there is no /dev/fuse");
    }
    None
}

fn skipping_forbidden() -> bool {
    let set = |name: &str| {
        std::env::var(name).is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false"))
    };
    set("CI") || set("STON_FS_REQUIRE_MOUNT")
}

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;

/// Small deterministic RNG (xorshift64*) for test decisions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Index of the first differing byte (or the shorter length if one is a
/// prefix of the other); None if equal.
pub fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Compares without dumping megabytes into the panic message.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = first_mismatch(got, want) {
        let show = |v: &[u8]| {
            let end = (i + 16).min(v.len());
            format!("{:02x?}", &v[i.min(v.len())..end])
        };
        panic!(
            "{what}: content differs at byte {i} (got len {}, want len {}); got[{i}..]={} want[{i}..]={}",
            got.len(),
            want.len(),
            show(got),
            show(want)
        );
    }
}

/// The value of header `name` (any case) among `headers`.
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `pread` until `len` bytes or EOF.
pub fn pread_full(f: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// Reads `path` sequentially with `buf_size` reads and compares every chunk
/// with `want` (never holding a second copy of the whole file).
#[track_caller]
pub fn assert_file_matches(path: &Path, want: &[u8], buf_size: usize) {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    assert_reader_matches(&mut f, want, buf_size, &path.display().to_string());
}

/// Reads `r` to EOF with `buf_size` reads, comparing against `want`.
#[track_caller]
pub fn assert_reader_matches(r: &mut impl Read, want: &[u8], buf_size: usize, what: &str) {
    let mut buf = vec![0u8; buf_size];
    let mut pos = 0usize;
    loop {
        let n = r
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: read at offset {pos} failed: {e}"));
        if n == 0 {
            break;
        }
        assert!(
            pos + n <= want.len(),
            "{what}: read returned data past the expected end ({} bytes, got {} more at {pos})",
            want.len(),
            n
        );
        assert_bytes_eq(
            &buf[..n],
            &want[pos..pos + n],
            &format!("{what} @ offset {pos}"),
        );
        pos += n;
    }
    assert_eq!(
        pos,
        want.len(),
        "{what}: EOF after {pos} bytes, expected {}",
        want.len()
    );
}

/// `count` seeded random preads (some crossing or past EOF), each compared
/// exactly with `want`.
#[track_caller]
pub fn assert_random_preads(
    f: &File,
    want: &[u8],
    seed: u64,
    count: usize,
    max_len: usize,
    what: &str,
) {
    let mut rng = Rng::new(seed);
    let len = want.len() as u64;
    for i in 0..count {
        let off = if i % 10 == 9 {
            // near / past the end
            len.saturating_sub(rng.below(2 * max_len as u64 + 1)) + rng.below(64)
        } else {
            rng.below(len.max(1))
        };
        let n = 1 + rng.below(max_len as u64) as usize;
        let got = pread_full(f, off, n)
            .unwrap_or_else(|e| panic!("{what}: pread({off}, {n}) failed: {e}"));
        let a = (off.min(len)) as usize;
        let b = ((off + n as u64).min(len)) as usize;
        assert_bytes_eq(
            &got,
            &want[a..b],
            &format!("{what}: pread #{i} at {off} len {n}"),
        );
    }
}

/// errno of an io::Result error (None for Ok or non-OS errors).
pub fn errno<T>(r: &std::io::Result<T>) -> Option<i32> {
    r.as_ref().err().and_then(|e| e.raw_os_error())
}

/// Drops the kernel's cached pages of an open file, so the next read must reach the daemon.
pub fn drop_pages_of(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: fadvise only advises the kernel about a descriptor we own.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise(DONTNEED)");
}

/// Drops the kernel's cached pages of a file on the mount (the open is a lookup and an open
/// like any other: it may revalidate).
#[track_caller]
pub fn drop_page_cache(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    drop_pages_of(&file);
}

/// No kernel read-ahead on this descriptor: a pread asks the daemon for its own range only.
pub fn no_kernel_readahead(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: as above.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(rc, 0, "posix_fadvise(RANDOM)");
}

/// Runs `f` on a helper thread; fails the test if it has not returned within `bound`.
#[track_caller]
pub fn bounded<T: Send + 'static>(
    what: &str,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(bound) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {bound:?} (hung)"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what}: worker ended without an answer"),
        },
    }
}
