//! ston-fs as a service: the installer and the mount(8) helpers, fstab lines, systemd's
//! `NOTIFY_SOCKET` readiness, SIGTERM, directory listings from index pages and manifests, a
//! real Apache serving a mount, the statistics / Prometheus endpoint / access log, and
//! `ston-fs warm`. Every test mounts the real binary and checks exact bytes and counts.

mod common;
#[path = "service/support.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::mount::{is_mounted, mounts_at, op_count, stats_json, Mount, BIN};
use common::mount_origin;
use common::nginx::{free_port, Autoindex, Nginx};
use common::origin::{pattern, Fault, FaultAction, Origin};
use common::{assert_bytes_eq, assert_file_matches, pread_full, KIB, MIB};
use support::{
    curl, describe_status, ston_fs, ston_fs_pids_with_arg, wait_gone, Apache, Daemon,
    ExternalMount, SbinHelpers, STEP_TIMEOUT,
};

/// Tests that install into /sbin (or touch /etc) run one at a time.
static SYSTEM_LOCK: Mutex<()> = Mutex::new(());

fn system_lock() -> std::sync::MutexGuard<'static, ()> {
    SYSTEM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch dir that other users (www-data, nobody) may traverse.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ston-fs-svc-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn mkdir(path: &Path) -> PathBuf {
    fs::create_dir_all(path).unwrap();
    path.to_path_buf()
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

// ---------------------------------------------------------------------------
// A directory tree for nginx to serve
// ---------------------------------------------------------------------------

/// Files written under `root`, each with its own mtime (whole minutes, so that nginx's HTML
/// listing, which shows minutes, gives the exact time).
struct Tree {
    root: tempfile::TempDir,
    files: BTreeMap<String, (Bytes, u64)>,
    dirs: BTreeSet<String>,
}

/// 2023-11-14 22:14:00 UTC.
const T0: u64 = 1_700_000_040;

impl Tree {
    fn new() -> Tree {
        Tree {
            root: open_tempdir(),
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
        }
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn file(&mut self, rel: &str, data: Bytes, mtime: u64) {
        let path = self.root.path().join(rel);
        let mut parent = Path::new(rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &data).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
            .unwrap();
        self.files.insert(rel.to_string(), (data, mtime));
    }

    fn data(&self, rel: &str) -> &Bytes {
        &self.files[rel].0
    }

    /// `(rel, size, mtime)` of the files directly in directory `dir` (`""` = root).
    fn files_in(&self, dir: &str) -> Vec<(String, u64, u64)> {
        self.files
            .iter()
            .filter(|(rel, _)| parent_of(rel) == dir)
            .map(|(rel, (data, mtime))| (rel.clone(), data.len() as u64, *mtime))
            .collect()
    }

    fn dirs_in(&self, dir: &str) -> Vec<String> {
        self.dirs
            .iter()
            .filter(|d| parent_of(d) == dir)
            .cloned()
            .collect()
    }
}

fn parent_of(rel: &str) -> &str {
    rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

fn base_name(rel: &str) -> &str {
    rel.rsplit_once('/').map(|(_, n)| n).unwrap_or(rel)
}

/// Percent-encodes a path the way ston-fs sends it (RFC 3986 unreserved stay literal).
fn url_path(rel: &str) -> String {
    let mut out = String::from("/");
    for (i, part) in rel.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        for b in part.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// The standard listing tree: a directory with files of several sizes and times, a name with
/// a space and one with a non-ASCII letter, an empty file, a subdirectory, and a file at the
/// top.
fn listing_tree(seconds: u64) -> Tree {
    let mut tree = Tree::new();
    tree.file("dir/small.txt", pattern(301, 1000), T0 + seconds);
    tree.file(
        "dir/two words.bin",
        pattern(302, 70_001),
        T0 + 86_400 + seconds,
    );
    tree.file(
        "dir/naïve.txt",
        Bytes::from_static(b"na\xc3\xafve\n"),
        T0 + 60,
    );
    tree.file("dir/empty", Bytes::new(), T0 + 120);
    tree.file("dir/sub/deep.bin", pattern(303, 3 * MIB + 17), T0 + 3600);
    tree.file("top.txt", pattern(304, 12_345), T0 + 7200 + seconds);
    tree
}

// ---------------------------------------------------------------------------
// ls -l, find
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq, Clone)]
struct LsEntry {
    kind: char,
    size: u64,
    mtime: u64,
    name: String,
}

/// `ls -l --time-style=+%s DIR`, parsed.
fn ls_l(dir: &Path) -> Vec<LsEntry> {
    let out = support::run_command(
        Command::new("ls")
            .args(["-l", "--time-style=+%s"])
            .arg(dir)
            .env("LC_ALL", "C.UTF-8")
            .env("QUOTING_STYLE", "literal"),
        STEP_TIMEOUT,
    );
    assert!(out.success(), "ls -l failed:\n{}", out.describe());
    let text = out.stdout_text();
    let mut entries = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with("total ")) {
        // perms links owner group size epoch name (name may hold spaces)
        let mut rest = line;
        let mut fields = Vec::new();
        for _ in 0..6 {
            rest = rest.trim_start_matches(' ');
            let end = rest
                .find(' ')
                .unwrap_or_else(|| panic!("bad ls line {line:?}"));
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
        entries.push(LsEntry {
            kind: fields[0].chars().next().unwrap(),
            size: fields[4].parse().unwrap(),
            mtime: fields[5].parse().unwrap(),
            name: rest[1..].to_string(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

/// `find DIR -printf '%y %s %P\n'` (type, size, path below DIR), sorted, without DIR itself
/// and with sizes of directories left out.
fn find_tree(dir: &Path) -> Vec<String> {
    let out = support::run_command(
        Command::new("find")
            .arg(dir)
            .arg("-mindepth")
            .arg("1")
            .args(["-printf", "%y %s %P\\n"]),
        STEP_TIMEOUT,
    );
    assert!(out.success(), "find failed:\n{}", out.describe());
    let mut lines: Vec<String> = out
        .stdout_text()
        .lines()
        .map(|l| {
            let (kind, rest) = l.split_once(' ').unwrap();
            let (size, name) = rest.split_once(' ').unwrap();
            if kind == "d" {
                format!("d {name}")
            } else {
                format!("{kind} {size} {name}")
            }
        })
        .collect();
    lines.sort();
    lines
}

fn expected_find(tree: &Tree) -> Vec<String> {
    let mut lines: Vec<String> = tree
        .files
        .iter()
        .map(|(rel, (data, _))| format!("f {} {rel}", data.len()))
        .chain(tree.dirs.iter().map(|d| format!("d {d}")))
        .collect();
    lines.sort();
    lines
}

/// What `ls -l` must show for one name: its kind, and for a file its exact size and mtime.
type WantLs = (char, String, Option<(u64, u64)>);

/// The `ls -l` lines a directory of `tree` must show: exact sizes and times for files.
fn expected_ls(tree: &Tree, dir: &str) -> Vec<WantLs> {
    let mut v: Vec<WantLs> = tree
        .files_in(dir)
        .into_iter()
        .map(|(rel, size, mtime)| ('-', base_name(&rel).to_string(), Some((size, mtime))))
        .chain(
            tree.dirs_in(dir)
                .into_iter()
                .map(|d| ('d', base_name(&d).to_string(), None)),
        )
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

#[track_caller]
fn assert_ls_matches(got: &[LsEntry], want: &[WantLs], what: &str) {
    let got_names: Vec<(char, &str)> = got.iter().map(|e| (e.kind, e.name.as_str())).collect();
    let want_names: Vec<(char, &str)> = want.iter().map(|(k, n, _)| (*k, n.as_str())).collect();
    assert_eq!(got_names, want_names, "{what}: names and kinds in ls -l");
    for (g, (_, name, exact)) in got.iter().zip(want) {
        if let Some((size, mtime)) = exact {
            assert_eq!(
                (g.size, g.mtime),
                (*size, *mtime),
                "{what}: ls -l size and mtime of {name:?} (got {g:?})"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// stats
// ---------------------------------------------------------------------------

fn num(stats: &serde_json::Value, pointer: &str) -> u64 {
    stats
        .pointer(pointer)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("stats has no number at {pointer}: {stats:#}"))
}

fn fadvise(file: &File, advice: libc::c_int) {
    // SAFETY: fadvise only advises the kernel about a descriptor we own.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, advice) };
    assert_eq!(rc, 0, "posix_fadvise({advice})");
}

/// Reads `want` with one `pread` per `chunk`, after dropping the page cache before each, with
/// kernel read-ahead off: every pread becomes exactly one FUSE read of the daemon.
fn pread_pass(file: &File, want: &[u8], chunk: usize) -> u64 {
    let mut total = 0;
    let mut off = 0;
    while off < want.len() {
        fadvise(file, libc::POSIX_FADV_DONTNEED);
        let got = pread_full(file, off as u64, chunk).expect("pread");
        let end = (off + chunk).min(want.len());
        assert_bytes_eq(&got, &want[off..end], &format!("pread at {off}"));
        total += got.len() as u64;
        off += chunk;
    }
    total
}

// ===========================================================================
// Installer and mount(8)
// ===========================================================================

fn install(prefix: &Path, sbindir: &Path, unitdir: &Path) -> support::Outcome {
    support::run_command(
        Command::new("bash")
            .arg(repo().join("mount-helpers/install.sh"))
            .arg("--prefix")
            .arg(prefix)
            .arg("--sbindir")
            .arg(sbindir)
            .arg("--unitdir")
            .arg(unitdir)
            .env("STON_FS_BIN", BIN),
        Duration::from_secs(120),
    )
}

#[test]
fn install_sh_installs_the_binary_the_helpers_and_the_units() {
    common::require_mount!();
    let _lock = system_lock();
    let _restore = SbinHelpers::save(); // install.sh also creates /etc/ston-fs
    let tmp = open_tempdir();
    let prefix = tmp.path().join("prefix");
    let sbindir = tmp.path().join("sbin");
    let unitdir = tmp.path().join("units");
    let out = install(&prefix, &sbindir, &unitdir);
    assert!(out.success(), "install.sh failed:\n{}", out.describe());
    let bindir = prefix.join("bin");

    // The binary, byte for byte, executable.
    let installed = bindir.join("ston-fs");
    assert!(
        fs::read(&installed).unwrap() == fs::read(BIN).unwrap(),
        "{} differs from {BIN}",
        installed.display()
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&installed), 0o755);
    // The same build again replaces nothing worth a word; another build is named (issue 20).
    let again = install(&prefix, &sbindir, &unitdir);
    let said = |out: &support::Outcome| String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!said(&again).contains("replacing"), "{}", again.describe());
    fs::write(&installed, b"#!/bin/sh\necho 'ston-fs 0.0.1-old'\n").unwrap();
    let over_other = install(&prefix, &sbindir, &unitdir);
    assert!(
        over_other.success()
            && said(&over_other).contains("replacing")
            && said(&over_other).contains("0.0.1-old"),
        "install.sh over another build:\n{}",
        over_other.describe()
    );
    assert!(fs::read(&installed).unwrap() == fs::read(BIN).unwrap());

    // One helper under both names, pointing at the installed binary.
    let helper_src = fs::read_to_string(repo().join("mount-helpers/mount.fuse.ston-fs")).unwrap();
    let helper_want = helper_src.replace("@BINDIR@", &bindir.to_string_lossy());
    assert_ne!(helper_src, helper_want, "the helper source has no @BINDIR@");
    for name in SbinHelpers::NAMES {
        let p = sbindir.join(name);
        assert_eq!(fs::read_to_string(&p).unwrap(), helper_want, "{name}");
        assert_eq!(mode(&p), 0o755, "{name} mode");
    }

    // Every unit, with @BINDIR@ filled in, 0644.
    let mut units = 0;
    for entry in fs::read_dir(repo().join("systemd")).unwrap().flatten() {
        let name = entry.file_name();
        let src = fs::read_to_string(entry.path()).unwrap();
        let p = unitdir.join(&name);
        let got = fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("unit {} not installed: {e}", p.display()));
        assert_eq!(
            got,
            src.replace("@BINDIR@", &bindir.to_string_lossy()),
            "{name:?}"
        );
        assert!(!got.contains("@BINDIR@"));
        assert_eq!(mode(&p), 0o644, "{name:?} mode");
        units += 1;
    }
    assert_eq!(units, 2, "systemd/ holds the service and the mount unit");
    let service = fs::read_to_string(unitdir.join("ston-fs@.service")).unwrap();
    let exec = format!("ExecStart={}/ston-fs --foreground ", bindir.display());
    assert!(service.contains(&exec), "{exec:?} not in:\n{service}");
    assert!(service.contains("Type=notify"));

    // Usage and argument errors.
    let help = support::run_command(
        Command::new("bash")
            .arg(repo().join("mount-helpers/install.sh"))
            .arg("--help"),
        STEP_TIMEOUT,
    );
    help.assert_printed("--prefix");
    let bad = support::run_command(
        Command::new("bash")
            .arg(repo().join("mount-helpers/install.sh"))
            .arg("--bogus"),
        STEP_TIMEOUT,
    );
    assert_eq!(
        bad.status.and_then(|s| s.code()),
        Some(2),
        "{}",
        bad.describe()
    );

    // The installed helper, called the way mount(8) calls it, mounts with the installed
    // binary and returns only once the mount is live.
    let origin = Origin::start();
    let data = origin.put("/clip.bin", pattern(401, 700_000)).data;
    let dir = mkdir(&tmp.path().join("mnt"));
    let _cleanup = ExternalMount { dir: dir.clone() };
    let log = tmp.path().join("helper.log");
    let options = format!(
        "allow_other,cache_dir={},log_file={}",
        tmp.path().join("cache").display(),
        log.display()
    );
    let out = support::run_command(
        Command::new(sbindir.join("mount.fuse.ston-fs"))
            .arg(origin.url())
            .arg(&dir)
            .arg("-n")
            .arg("-o")
            .arg(&options),
        STEP_TIMEOUT,
    );
    assert!(out.success(), "helper failed:\n{}", out.describe());
    let live = mounts_at(&dir);
    assert!(
        live.iter().any(|m| m.fstype == "fuse.ston-fs"),
        "the helper returned before the mount was live: {live:?}"
    );
    let pids = ston_fs_pids_with_arg(&dir);
    let workers = support::workers(&pids);
    assert_eq!(
        (pids.len(), workers.len()),
        (2, 1),
        "one supervisor and one worker serve the mount: {pids:?}"
    );
    let exe = fs::read_link(format!("/proc/{}/exe", workers[0])).unwrap();
    assert_eq!(exe, installed, "the helper runs the installed binary");
    assert_file_matches(&dir.join("clip.bin"), &data, 64 * KIB);
    assert!(Command::new("umount").arg(&dir).status().unwrap().success());
    assert!(!is_mounted(&dir));
    for pid in pids {
        assert!(
            wait_gone(pid, STEP_TIMEOUT),
            "ston-fs {pid} still running after umount\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

/// `mount` and `umount` of one daemonized ston-fs, checked from the outside.
fn mount8_round_trip(
    args: &[&OsStr],
    dir: &Path,
    origin: &Origin,
    log: &Path,
    installed: &Path,
    files: &[(&str, &Bytes)],
) {
    let _cleanup = ExternalMount {
        dir: dir.to_path_buf(),
    };
    let out = support::run_command(Command::new("mount").args(args), STEP_TIMEOUT);
    let log_text = || fs::read_to_string(log).unwrap_or_default();
    assert!(
        out.success(),
        "mount failed:\n{}\n--- ston-fs log ---\n{}",
        out.describe(),
        log_text()
    );
    // mount(8) returns with the mount in place: no waiting here.
    let live = mounts_at(dir);
    let entry = live
        .iter()
        .find(|m| m.fstype == "fuse.ston-fs")
        .unwrap_or_else(|| panic!("mount returned without a live mount: {live:?}"));
    assert_eq!(entry.source, origin.url(), "mount source");
    assert!(
        entry.super_options.split(',').any(|o| o == "allow_other"),
        "allow_other did not reach the kernel: {entry:?}"
    );
    let pids = ston_fs_pids_with_arg(dir);
    let workers = support::workers(&pids);
    assert_eq!(
        (pids.len(), workers.len()),
        (2, 1),
        "one supervisor and one worker for {}: {pids:?}",
        dir.display()
    );
    assert_eq!(
        fs::read_link(format!("/proc/{}/exe", workers[0])).unwrap(),
        installed,
        "the /sbin helper runs the installed binary"
    );
    for (name, data) in files {
        assert_file_matches(&dir.join(name), data, 128 * KIB);
    }
    let out = support::run_command(Command::new("umount").arg(dir), STEP_TIMEOUT);
    assert!(out.success(), "umount failed:\n{}", out.describe());
    assert!(!is_mounted(dir), "still mounted after umount");
    for pid in pids {
        assert!(
            wait_gone(pid, STEP_TIMEOUT),
            "ston-fs (pid {pid}) still running after umount\n{}",
            log_text()
        );
    }
    let text = log_text();
    assert!(text.contains("unmounted"), "log:\n{text}");
    assert!(!text.contains("ERROR"), "log:\n{text}");
}

#[test]
fn mount_t_fuse_ston_fs_and_an_fstab_line_mount_and_umount_unmounts() {
    common::require_mount!();
    let _lock = system_lock();
    let _restore = SbinHelpers::save();
    let tmp = open_tempdir();
    let prefix = tmp.path().join("prefix");
    let out = install(&prefix, Path::new("/sbin"), &tmp.path().join("units"));
    assert!(out.success(), "install.sh failed:\n{}", out.describe());
    let installed = prefix.join("bin/ston-fs");

    let origin = Origin::start();
    let big = pattern(402, 2 * MIB + 99);
    let small = pattern(403, 5000);
    origin.put("/v/big.bin", big.clone());
    origin.put("/small.txt", small.clone());
    let files = [("v/big.bin", &big), ("small.txt", &small)];

    // mount -t fuse.ston-fs ORIGIN DIR -o ...
    let dir = mkdir(&tmp.path().join("m1"));
    let log = tmp.path().join("m1.log");
    let opts = format!(
        "allow_other,cache_dir={},log_file={}",
        tmp.path().join("c1").display(),
        log.display()
    );
    let url = origin.url();
    mount8_round_trip(
        &[
            os("-t"),
            os("fuse.ston-fs"),
            os(&url),
            dir.as_os_str(),
            os("-o"),
            os(&opts),
        ],
        &dir,
        &origin,
        &log,
        &installed,
        &files,
    );

    // mount -t ston-fs (the helper's other name)
    let dir = mkdir(&tmp.path().join("m2"));
    let log = tmp.path().join("m2.log");
    let opts = format!(
        "allow_other,cache_dir={},log_file={}",
        tmp.path().join("c2").display(),
        log.display()
    );
    mount8_round_trip(
        &[
            os("-t"),
            os("ston-fs"),
            os(&url),
            dir.as_os_str(),
            os("-o"),
            os(&opts),
        ],
        &dir,
        &origin,
        &log,
        &installed,
        &files,
    );

    // An fstab line (a private fstab file; /etc/fstab is never touched), with the words
    // fstab and systemd put there.
    let dir = mkdir(&tmp.path().join("m3"));
    let log = tmp.path().join("m3.log");
    let fstab = tmp.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\n{url} {} fuse.ston-fs allow_other,_netdev,noauto,nofail,x-systemd.automount,cache_dir={},log_file={} 0 0\n",
            dir.display(),
            tmp.path().join("c3").display(),
            log.display()
        ),
    )
    .unwrap();
    mount8_round_trip(
        &[os("-T"), fstab.as_os_str(), dir.as_os_str()],
        &dir,
        &origin,
        &log,
        &installed,
        &files,
    );
}

// ===========================================================================
// systemd readiness and signals
// ===========================================================================

fn notify_round_trip(socket: UnixDatagram, notify_socket: &str) {
    let origin = Origin::start();
    let data = origin.put("/ready.bin", pattern(410, 1_500_000)).data;
    let tmp = open_tempdir();
    let mp = mkdir(&tmp.path().join("mnt"));
    let cache = tmp.path().join("cache");
    socket.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();

    let mut daemon = Daemon::spawn(
        &[os("--cache-dir"), cache.as_os_str()],
        &origin.url(),
        &mp,
        &[("NOTIFY_SOCKET", os(notify_socket))],
        &tmp.path().join("daemon.log"),
    );
    // Before READY=1, the mount's descriptor and restart journal go to the store, one
    // message each (a name covers every descriptor of its message).
    let mut buf = [0u8; 512];
    let mut before_ready = Vec::new();
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no READY=1 on {notify_socket}: {e}\n{}", daemon.log()));
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text == "READY=1" {
            break;
        }
        before_ready.push(text);
        assert!(
            before_ready.len() <= 2,
            "unexpected notifications: {before_ready:?}"
        );
    }
    assert_eq!(
        before_ready,
        ["FDSTORE=1\nFDNAME=fuse", "FDSTORE=1\nFDNAME=state"],
        "notifications before READY=1"
    );
    // Ready means live: the mount is there and serves the right bytes right now.
    let live = mounts_at(&mp);
    assert!(
        live.iter().any(|m| m.fstype == "fuse.ston-fs"),
        "READY=1 arrived before the mount was live: {live:?}\n{}",
        daemon.log()
    );
    assert_file_matches(&mp.join("ready.bin"), &data, 256 * KIB);
    let status = daemon.signal_and_wait(libc::SIGTERM);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM: {}\n{}",
        describe_status(&status),
        daemon.log()
    );
    assert!(!is_mounted(&mp));
}

#[test]
fn notify_socket_path_hears_ready_only_once_the_mount_is_live() {
    common::require_mount!();
    let tmp = open_tempdir();
    let path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    notify_round_trip(socket, path.to_str().unwrap());

    // A mount that fails never says READY=1.
    let path = tmp.path().join("notify2.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    let missing = tmp.path().join("no-such-dir");
    let mut daemon = Daemon::spawn(
        &[os("--cache-dir"), tmp.path().join("c").as_os_str()],
        "http://127.0.0.1:9/",
        &missing,
        &[("NOTIFY_SOCKET", path.as_os_str())],
        &tmp.path().join("fail.log"),
    );
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match socket.recv(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!(
            "a failed mount notified: {:?}",
            other.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        ),
    }
}

#[test]
fn notify_socket_abstract_name_hears_ready_only_once_the_mount_is_live() {
    common::require_mount!();
    use std::os::linux::net::SocketAddrExt;
    let name = format!(
        "ston-fs-test-notify-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
    notify_round_trip(socket, &format!("@{name}"));
}

#[test]
fn sigterm_unmounts_cleanly_and_a_remount_serves_the_cache_with_zero_origin_requests() {
    let Some(origin) = mount_origin() else { return };
    let big = pattern(420, 5 * MIB + 321);
    let small = pattern(421, 999);
    origin.put("/media/big.bin", big.clone());
    origin.put("/small.txt", small.clone());
    let tmp = open_tempdir();
    let mp = mkdir(&tmp.path().join("mnt"));
    let cache = tmp.path().join("cache");
    let args = [
        os("--cache-dir"),
        cache.as_os_str(),
        os("-o"),
        os("block_size=256K"),
    ];

    let mut daemon = Daemon::spawn(&args, &origin.url(), &mp, &[], &tmp.path().join("1.log"));
    daemon.wait_mounted();
    assert_file_matches(&mp.join("media/big.bin"), &big, MIB);
    assert_file_matches(&mp.join("small.txt"), &small, 4096);
    assert_eq!(origin.bytes_sent_for("/media/big.bin"), big.len() as u64);
    let status = daemon.signal_and_wait(libc::SIGTERM);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM ended ston-fs with {}\n{}",
        describe_status(&status),
        daemon.log()
    );
    assert!(!is_mounted(&mp), "SIGTERM left the mount behind");
    let log = daemon.log();
    assert!(log.contains("unmounted"), "{log}");
    drop(daemon);

    origin.reset();
    let mut daemon = Daemon::spawn(&args, &origin.url(), &mp, &[], &tmp.path().join("2.log"));
    daemon.wait_mounted();
    assert_eq!(
        fs::metadata(mp.join("media/big.bin")).unwrap().len(),
        big.len() as u64
    );
    assert_file_matches(&mp.join("media/big.bin"), &big, MIB);
    assert_file_matches(&mp.join("small.txt"), &small, 4096);
    assert_eq!(
        origin.request_count(),
        0,
        "the remount must be served from the cache: {}",
        origin.describe_requests()
    );
    // SIGINT is the same clean stop.
    let status = daemon.signal_and_wait(libc::SIGINT);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGINT: {}\n{}",
        describe_status(&status),
        daemon.log()
    );
    assert!(!is_mounted(&mp));
}

// ===========================================================================
// Directory listings
// ===========================================================================

/// `ls -l` of `dir` on the mount shows the listing's names, kinds, sizes and times; no file
/// of that directory costs an origin request; then every file reads byte-exact.
fn check_listed_dir(nginx: &Nginx, mount: &Mount, tree: &Tree, dir: &str, what: &str) {
    let before = nginx.requests().len();
    let got = ls_l(&mount.path(dir));
    assert_ls_matches(&got, &expected_ls(tree, dir), what);
    // A second stat of every listed file: still from the listing.
    for (rel, size, mtime) in tree.files_in(dir) {
        let md = fs::metadata(mount.path(&rel)).unwrap();
        assert_eq!(md.len(), size, "{what}: stat size of {rel}");
        assert_eq!(
            md.modified().unwrap(),
            UNIX_EPOCH + Duration::from_secs(mtime),
            "{what}: stat mtime of {rel}"
        );
    }
    let new: Vec<_> = nginx.requests().split_off(before);
    let page = format!("{}/", url_path(dir).trim_end_matches('/'));
    let listing: Vec<_> = new.iter().filter(|r| r.uri == page).collect();
    assert_eq!(
        listing.len(),
        1,
        "{what}: one GET of the index page {page}\n{}",
        nginx.describe()
    );
    for (rel, _, _) in tree.files_in(dir) {
        let uri = url_path(&rel);
        assert!(
            new.iter().all(|r| r.uri != uri),
            "{what}: ls -l / stat of listed {rel} went to the origin\n{}",
            nginx.describe()
        );
    }
    for (rel, _, _) in tree.files_in(dir) {
        assert_file_matches(&mount.path(&rel), tree.data(&rel), 64 * KIB);
    }
}

#[test]
fn nginx_html_autoindex_gives_names_sizes_and_mtimes_and_find_walks_the_tree() {
    common::require_mount!();
    let tree = listing_tree(0);
    let nginx = Nginx::start(tree.root(), Autoindex::Html);
    let mount = Mount::builder(nginx.url()).opt("block_size=256K").mount();
    check_listed_dir(&nginx, &mount, &tree, "dir", "nginx html /dir");
    check_listed_dir(&nginx, &mount, &tree, "dir/sub", "nginx html /dir/sub");
    // The root listing and a full walk.
    assert_eq!(find_tree(mount.mountpoint()), expected_find(&tree));
    let root: Vec<String> = fs::read_dir(mount.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(root, ["dir", "top.txt"]);
    assert_file_matches(&mount.path("top.txt"), tree.data("top.txt"), 4096);
    mount.unmount();
}

#[test]
fn nginx_json_autoindex_gives_exact_sizes_and_second_mtimes() {
    common::require_mount!();
    // Times with seconds: the JSON index carries them exactly.
    let tree = listing_tree(37);
    let nginx = Nginx::start(tree.root(), Autoindex::Json);
    let mount = Mount::builder(nginx.url()).opt("block_size=256K").mount();
    check_listed_dir(&nginx, &mount, &tree, "dir", "nginx json /dir");
    check_listed_dir(&nginx, &mount, &tree, "dir/sub", "nginx json /dir/sub");
    assert_eq!(find_tree(mount.mountpoint()), expected_find(&tree));
    let top = ls_l(mount.mountpoint());
    assert_ls_matches(&top, &expected_ls(&tree, ""), "nginx json /");
    mount.unmount();
}

#[test]
fn manifest_listings_text_and_json() {
    let Some(origin) = mount_origin() else { return };
    let a = pattern(430, 4321);
    let b = pattern(431, 300_000);
    let c = pattern(432, 17);
    let ea = origin.put("/a.txt", a.clone());
    let eb = origin.put("/d/b.bin", b.clone());
    let ec = origin.put("/d/e/c.txt", c.clone());
    origin.put(
        "/manifest.txt",
        "# every file of the origin\n/a.txt\n/d/b.bin\n\n/d/e/c.txt\n",
    );
    let json = serde_json::json!([
        {"path": "/a.txt", "size": a.len(), "mtime": ea.mtime},
        {"path": "/d/b.bin", "size": b.len(), "mtime": eb.mtime},
        {"path": "d/e/c.txt", "size": c.len(), "mtime": ec.mtime},
    ]);
    origin.put("/manifest.json", json.to_string());
    let mut want_find = vec![
        "d d".to_string(),
        "d d/e".to_string(),
        format!("f {} a.txt", a.len()),
        format!("f {} d/b.bin", b.len()),
        format!("f {} d/e/c.txt", c.len()),
    ];
    want_find.sort();

    // One path per line: names and kinds come from the manifest; sizes need the origin.
    let mount = Mount::builder(origin.url())
        .opt("manifest=/manifest.txt")
        .mount();
    let names: BTreeSet<String> = fs::read_dir(mount.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, BTreeSet::from(["a.txt".into(), "d".into()]));
    assert_eq!(find_tree(mount.mountpoint()), want_find);
    assert!(origin.request_count_for("/manifest.txt") >= 1);
    assert!(
        origin.requests().iter().all(|r| !r.path.ends_with('/')),
        "with a manifest, no index page is asked for: {}",
        origin.describe_requests()
    );
    assert_file_matches(&mount.path("d/e/c.txt"), &c, 4096);
    assert_file_matches(&mount.path("d/b.bin"), &b, 64 * KIB);
    mount.unmount();

    // JSON with sizes and times: ls -l is exact and costs no request per file.
    origin.reset();
    let mount = Mount::builder(origin.url())
        .opt("manifest=/manifest.json")
        .mount();
    let got = ls_l(mount.mountpoint());
    let want = vec![
        ('-', "a.txt".to_string(), Some((a.len() as u64, ea.mtime))),
        ('d', "d".to_string(), None),
    ];
    assert_ls_matches(&got, &want, "json manifest /");
    let got = ls_l(&mount.path("d"));
    let want = vec![
        ('-', "b.bin".to_string(), Some((b.len() as u64, eb.mtime))),
        ('d', "e".to_string(), None),
    ];
    assert_ls_matches(&got, &want, "json manifest /d");
    assert_eq!(find_tree(mount.mountpoint()), want_find);
    for p in ["/a.txt", "/d/b.bin", "/d/e/c.txt", "/d", "/d/e"] {
        assert_eq!(
            origin.request_count_for(p),
            0,
            "listing and stat of {p} went to the origin: {}",
            origin.describe_requests()
        );
    }
    assert_file_matches(&mount.path("a.txt"), &a, 4096);
    assert_file_matches(&mount.path("d/b.bin"), &b, 64 * KIB);
    assert_file_matches(&mount.path("d/e/c.txt"), &c, 4096);
    mount.unmount();
}

#[test]
fn a_directory_without_an_index_lists_empty_and_its_files_stay_reachable() {
    let Some(origin) = mount_origin() else { return };
    let x = pattern(440, 200_000);
    let y = pattern(441, 77);
    origin.put("/plain/x.bin", x.clone());
    origin.put("/plain/y.txt", y.clone());
    origin.put("/gone/z.txt", y.clone());
    // /gone/ answers 404 instead of the test origin's 403.
    origin.add_fault(Fault::path("/gone/", FaultAction::Status(404)));
    let mount = Mount::new(origin.url());

    // 403 for the root and /plain/: empty listings, not errors.
    let root: Vec<_> = fs::read_dir(mount.mountpoint())
        .expect("readdir of the root")
        .collect();
    assert!(root.is_empty(), "root: {root:?}");
    let plain: Vec<_> = fs::read_dir(mount.path("plain"))
        .expect("readdir of a directory without index")
        .collect();
    assert!(plain.is_empty(), "plain: {plain:?}");
    assert_eq!(
        origin
            .requests_for("/plain/")
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [403]
    );
    assert_file_matches(&mount.path("plain/x.bin"), &x, 64 * KIB);
    assert_file_matches(&mount.path("plain/y.txt"), &y, 4096);

    // 404 for the index page: the same.
    let gone: Vec<_> = fs::read_dir(mount.path("gone"))
        .expect("readdir of a directory whose index is 404")
        .collect();
    assert!(gone.is_empty(), "gone: {gone:?}");
    assert_eq!(
        origin
            .requests_for("/gone/")
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [404]
    );
    assert_file_matches(&mount.path("gone/z.txt"), &y, 4096);
    // ls and find do not fail either.
    assert!(ls_l(&mount.path("plain")).is_empty());
    assert_eq!(
        find_tree(mount.mountpoint()),
        Vec::<String>::new(),
        "find of an index-less origin"
    );
    mount.unmount();

    // nginx with autoindex off (403 for directories): the same.
    let mut tree = Tree::new();
    tree.file("dir/f.bin", pattern(442, 90_000), T0);
    let nginx = Nginx::start(tree.root(), Autoindex::Off);
    let mount = Mount::new(nginx.url());
    assert!(ls_l(&mount.path("dir")).is_empty());
    assert_eq!(
        nginx
            .requests_for("/dir/")
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [403],
        "{}",
        nginx.describe()
    );
    assert_file_matches(&mount.path("dir/f.bin"), tree.data("dir/f.bin"), 64 * KIB);
    mount.unmount();
}

#[test]
fn dot_dir_answers_dotless_components_as_directories_without_origin_requests() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/a/b/c/file.bin", pattern(450, 123_456)).data;
    let mount = Mount::builder(origin.url()).opt("dot_dir=true").mount();
    for rel in ["a", "a/b", "a/b/c", "not-on-origin", "a/b/c/d/e"] {
        let md = fs::metadata(mount.path(rel)).unwrap_or_else(|e| panic!("stat {rel}: {e}"));
        assert!(md.is_dir(), "{rel} is a directory");
        assert_eq!(md.permissions().mode() & 0o777, 0o555, "{rel} mode");
    }
    assert_eq!(
        origin.request_count(),
        0,
        "dot_dir lookups went to the origin: {}",
        origin.describe_requests()
    );
    assert_file_matches(&mount.path("a/b/c/file.bin"), &data, 64 * KIB);
    let paths: BTreeSet<String> = origin.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        BTreeSet::from(["/a/b/c/file.bin".to_string()]),
        "{}",
        origin.describe_requests()
    );
    // A dotless directory that the origin does not know lists empty (404 index), no error.
    let empty: Vec<_> = fs::read_dir(mount.path("not-on-origin"))
        .expect("readdir")
        .collect();
    assert!(empty.is_empty());
    mount.unmount();
}

// ===========================================================================
// Apache serving a mount
// ===========================================================================

/// The `href`s of an Apache autoindex page that name children (no sort links, no parent).
fn apache_hrefs(page: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = page;
    while let Some(i) = rest.find("href=\"") {
        rest = &rest[i + 6..];
        let end = rest.find('"').unwrap();
        let href = &rest[..end];
        if !href.starts_with('?') && !href.starts_with('/') {
            out.insert(href.to_string());
        }
        rest = &rest[end..];
    }
    out
}

#[test]
fn apache_serves_a_mount_byte_exact_with_ranges_and_an_autoindex_page() {
    common::require_mount!();
    let mut tree = Tree::new();
    tree.file("movie.bin", pattern(460, 3 * MIB + 4321), T0);
    tree.file("notes.txt", pattern(461, 2500), T0 + 60);
    tree.file("sub/inner.txt", pattern(462, 10_000), T0 + 120);
    let nginx = Nginx::start(tree.root(), Autoindex::Html);
    let mount = Mount::builder(nginx.url())
        .opt("allow_other,block_size=256K")
        .mount();
    // Apache's workers run as www-data: they must reach the mount point.
    fs::set_permissions(mount.tmp_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut apache = Apache::start(mount.mountpoint());
    let logs = |apache: &Apache| format!("{}\n{}", apache.logs(), nginx.describe());

    // Whole files.
    for (rel, (data, _)) in &tree.files {
        let got = curl(&apache.url(&url_path(rel)), &[]);
        assert_eq!(got.code, 200, "GET {rel}\n{}", logs(&apache));
        assert_bytes_eq(&got.body, data, &format!("apache GET {rel}"));
    }

    // Apache, having served requests, runs as www-data: what it read went through
    // allow_other.
    let status = fs::read_to_string(format!("/proc/{}/status", apache.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let id = support::run_command(Command::new("id").args(["-u", "www-data"]), STEP_TIMEOUT);
    let www_data = id.stdout_text().trim().to_string();
    assert!(
        uid_line.split_whitespace().nth(1) == Some(www_data.as_str()),
        "apache2 -X runs as {uid_line:?}, not www-data"
    );

    // Ranges: inside a block, across a block boundary, a suffix, and one running past EOF.
    let movie = tree.data("movie.bin");
    let len = movie.len();
    let block = 256 * KIB;
    for (spec, a, b) in [
        ("100-199".to_string(), 100, 200),
        (
            format!("{}-{}", block - 50, block + 49),
            block - 50,
            block + 50,
        ),
        ("-1000".to_string(), len - 1000, len),
        (format!("{}-", len - 10), len - 10, len),
        (format!("{}-{}", len - 5, len + 100), len - 5, len),
    ] {
        let got = curl(&apache.url("/movie.bin"), &["-r", &spec]);
        assert_eq!(got.code, 206, "Range {spec}\n{}", logs(&apache));
        assert_bytes_eq(&got.body, &movie[a..b], &format!("apache Range {spec}"));
    }

    // The autoindex page lists what the origin's index page lists.
    let page = curl(&apache.url("/"), &[]);
    assert_eq!(page.code, 200, "{}", logs(&apache));
    let page = String::from_utf8_lossy(&page.body).into_owned();
    assert_eq!(
        apache_hrefs(&page),
        BTreeSet::from([
            "movie.bin".to_string(),
            "notes.txt".to_string(),
            "sub/".to_string()
        ]),
        "apache autoindex of /:\n{page}"
    );
    let page = curl(&apache.url("/sub/"), &[]);
    assert_eq!(page.code, 200, "{}", logs(&apache));
    let page = String::from_utf8_lossy(&page.body).into_owned();
    assert_eq!(
        apache_hrefs(&page),
        BTreeSet::from(["inner.txt".to_string()]),
        "apache autoindex of /sub/:\n{page}"
    );
    // A name that is not there is a 404, not a hang or a 500.
    assert_eq!(curl(&apache.url("/missing.bin"), &[]).code, 404);

    // Every block of movie.bin came from the origin at most once.
    let fetched: u64 = nginx
        .requests_for("/movie.bin")
        .iter()
        .map(|r| r.bytes)
        .sum();
    assert_eq!(
        fetched,
        len as u64,
        "origin bytes for movie.bin\n{}",
        nginx.describe()
    );
    let stopped = apache.stop();
    assert!(stopped.is_some(), "apache2 did not stop");
    mount.unmount();
}

// ===========================================================================
// Statistics, Prometheus endpoint, access log
// ===========================================================================

/// A file of three blocks read twice, one FUSE read per block each time.
struct KnownReads {
    origin: Origin,
    mount: Mount,
    data: Bytes,
    /// Stats after the cold pass and after the warm pass.
    cold: serde_json::Value,
    warm: serde_json::Value,
}

const BLOCK: usize = 64 * KIB;

fn known_reads(extra_opts: &[String]) -> KnownReads {
    let origin = Origin::start();
    let data = origin
        .put("/three.bin", pattern(470, 3 * BLOCK - 1234))
        .data;
    let mut builder =
        Mount::builder(origin.url()).opt("passthrough=false,readahead_max=0,block_size=64K");
    for o in extra_opts {
        builder = builder.opt(o.clone());
    }
    let mount = builder.mount();
    let file = File::open(mount.path("three.bin")).unwrap();
    fadvise(&file, libc::POSIX_FADV_RANDOM);
    assert_eq!(pread_pass(&file, &data, BLOCK), data.len() as u64);
    let cold = stats_json(mount.mountpoint());
    assert_eq!(pread_pass(&file, &data, BLOCK), data.len() as u64);
    let warm = stats_json(mount.mountpoint());
    drop(file);
    KnownReads {
        origin,
        mount,
        data,
        cold,
        warm,
    }
}

#[test]
fn stats_json_counts_a_known_sequence_of_reads_exactly() {
    common::require_mount!();
    let k = known_reads(&[]);
    let size = k.data.len() as u64;
    let (cold, warm) = (&k.cold, &k.warm);
    let ctx = |s: &serde_json::Value| format!("{s:#}\n{}", k.origin.describe_requests());

    // Cold pass: every block came from the origin exactly once (the first with the lookup).
    assert_eq!(num(cold, "/origin_bytes"), size, "{}", ctx(cold));
    assert_eq!(k.origin.bytes_sent(), size, "{}", ctx(cold));
    assert_eq!(
        num(cold, "/origin_requests/status_2xx"),
        k.origin.request_count(),
        "{}",
        ctx(cold)
    );
    assert!(k.origin.requests().iter().all(|r| r.status == 206));
    for class in ["1xx", "3xx", "4xx", "5xx"] {
        assert_eq!(
            num(cold, &format!("/origin_requests/status_{class}")),
            0,
            "{}",
            ctx(cold)
        );
    }
    assert_eq!(
        num(cold, "/bytes_from_origin") + num(cold, "/bytes_from_cache"),
        size,
        "bytes read in the cold pass\n{}",
        ctx(cold)
    );
    assert_eq!(
        num(cold, "/read_hits") + num(cold, "/read_misses"),
        3,
        "three FUSE reads\n{}",
        ctx(cold)
    );
    // Every block of a cold file came from the origin for these reads (block 0 with the
    // lookup): all three reads are misses, none is a hit.
    assert_eq!(num(cold, "/read_misses"), 3, "{}", ctx(cold));
    assert_eq!(num(cold, "/read_hits"), 0, "{}", ctx(cold));
    assert_eq!(num(cold, "/bytes_from_origin"), size, "{}", ctx(cold));
    assert_eq!(op_count(cold, "read"), 3, "{}", ctx(cold));
    assert_eq!(op_count(cold, "open"), 1, "{}", ctx(cold));
    assert_eq!(op_count(cold, "lookup"), 1, "{}", ctx(cold));

    // Warm pass: three hits, every byte from the cache, nothing new from the origin.
    let d = |p: &str| num(warm, p) - num(cold, p);
    assert_eq!(d("/read_hits"), 3, "{}", ctx(warm));
    assert_eq!(d("/read_misses"), 0, "{}", ctx(warm));
    assert_eq!(d("/bytes_from_cache"), size, "{}", ctx(warm));
    assert_eq!(d("/bytes_from_origin"), 0, "{}", ctx(warm));
    assert_eq!(d("/origin_bytes"), 0, "{}", ctx(warm));
    assert_eq!(d("/origin_requests/status_2xx"), 0, "{}", ctx(warm));
    assert_eq!(op_count(warm, "read"), 6, "{}", ctx(warm));
    assert_eq!(op_count(warm, "open"), 1, "{}", ctx(warm));

    // The cache: one object, at least its bytes; one healthy origin.
    assert_eq!(num(warm, "/cache_objects"), 1, "{}", ctx(warm));
    assert!(num(warm, "/cache_bytes") >= size, "{}", ctx(warm));
    let origins = warm["origins"].as_array().expect("origins[]");
    assert_eq!(origins.len(), 1, "{}", ctx(warm));
    assert_eq!(origins[0]["healthy"], true, "{}", ctx(warm));
    assert_eq!(origins[0]["origin"], k.origin.url(), "{}", ctx(warm));

    // The readable summary says the same.
    let text = ston_fs([os("stats"), k.mount.mountpoint().as_os_str()]);
    assert!(text.success(), "{}", text.describe());
    let hits = num(warm, "/read_hits");
    let misses = num(warm, "/read_misses");
    assert!(
        text.stdout_text()
            .contains(&format!("({hits} hits, {misses} misses)")),
        "{}",
        text.describe()
    );
    // stats of something that is not a ston-fs mount fails with a reason.
    let not = ston_fs([os("stats"), os("/proc")]);
    assert!(!not.success(), "{}", not.describe());
    k.mount.unmount();
}

/// The value of the first sample whose line starts with `name` (a full name, or a name with
/// the start of its labels).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !name.contains('{') && !rest.starts_with(' ') {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

#[test]
fn metrics_endpoint_and_access_log_agree_with_the_stats() {
    common::require_mount!();
    let port = free_port();
    let logdir = open_tempdir();
    let access_log = logdir.path().join("access.log");
    let k = known_reads(&[
        format!("metrics_addr=127.0.0.1:{port}"),
        format!("access_log={}", access_log.display()),
    ]);
    let size = k.data.len() as u64;
    let stats = &k.warm;

    // Prometheus text: every figure under stonfs_, equal to the JSON.
    let mut answer = None;
    for _ in 0..100 {
        let out = support::run_command(
            Command::new("curl").args([
                "-sS",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                &format!("http://127.0.0.1:{port}/metrics"),
            ]),
            STEP_TIMEOUT,
        );
        if out.success() {
            answer = Some(out.stdout_text());
            break;
        }
        std::thread::sleep(Duration::from_millis(50)); // not listening yet
    }
    let answer = answer.expect("/metrics never answered");
    let (body, code) = answer.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{answer}");
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(line.starts_with("stonfs_"), "metric without prefix: {line}");
    }
    let pairs = [
        ("stonfs_read_hits_total", "/read_hits"),
        ("stonfs_read_misses_total", "/read_misses"),
        ("stonfs_read_bytes_from_cache_total", "/bytes_from_cache"),
        ("stonfs_read_bytes_from_origin_total", "/bytes_from_origin"),
        ("stonfs_origin_bytes_total", "/origin_bytes"),
        ("stonfs_cache_objects", "/cache_objects"),
    ];
    for (name, pointer) in pairs {
        assert_eq!(
            metric(body, name),
            num(stats, pointer) as f64,
            "{name} vs stats {pointer}\n{body}"
        );
    }
    assert_eq!(metric(body, "stonfs_origin_bytes_total"), size as f64);
    assert_eq!(
        metric(body, "stonfs_origin_requests_total{class=\"2xx\"}"),
        num(stats, "/origin_requests/status_2xx") as f64
    );
    assert_eq!(
        metric(body, "stonfs_operations_total{op=\"read\"}"),
        op_count(stats, "read") as f64
    );
    assert_eq!(metric(body, "stonfs_origin_healthy{site="), 1.0, "{body}");
    let other = curl(&format!("http://127.0.0.1:{port}/other"), &[]);
    assert_eq!(other.code, 404);

    // Access log: one line per call; READ lines carry HIT/MISS and the bytes.
    let log = fs::read_to_string(&access_log).unwrap();
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split('\t').collect()).collect();
    for l in &lines {
        assert_eq!(l.len(), 6, "access log line {l:?}");
        assert!(["ATTR", "OPEN", "READ"].contains(&l[1]), "{l:?}");
        assert!(["HIT", "MISS"].contains(&l[5]), "{l:?}");
        assert!(l[4].ends_with("us"), "{l:?}");
    }
    let reads: Vec<&Vec<&str>> = lines.iter().filter(|l| l[1] == "READ").collect();
    assert_eq!(reads.len() as u64, op_count(stats, "read"), "{log}");
    assert!(reads.iter().all(|l| l[2] == "/three.bin"), "{log}");
    let hit_lines = reads.iter().filter(|l| l[5] == "HIT").count() as u64;
    let miss_lines = reads.iter().filter(|l| l[5] == "MISS").count() as u64;
    assert_eq!(hit_lines, num(stats, "/read_hits"), "{log}");
    assert_eq!(miss_lines, num(stats, "/read_misses"), "{log}");
    let read_bytes: u64 = reads.iter().map(|l| l[3].parse::<u64>().unwrap()).sum();
    assert_eq!(read_bytes, 2 * size, "{log}");
    let miss_bytes: u64 = reads
        .iter()
        .filter(|l| l[5] == "MISS")
        .map(|l| l[3].parse::<u64>().unwrap())
        .sum();
    assert_eq!(miss_bytes, num(stats, "/bytes_from_origin"), "{log}");
    let opens = lines.iter().filter(|l| l[1] == "OPEN").count() as u64;
    assert_eq!(opens, op_count(stats, "open"), "{log}");
    let attrs = lines.iter().filter(|l| l[1] == "ATTR").count() as u64;
    assert_eq!(
        attrs,
        op_count(stats, "lookup") + op_count(stats, "getattr"),
        "{log}"
    );
    k.mount.unmount();
}

// ===========================================================================
// ston-fs warm
// ===========================================================================

#[test]
fn warm_prefetches_a_subtree_so_reading_it_costs_zero_origin_requests() {
    common::require_mount!();
    let mut tree = Tree::new();
    tree.file("media/a.bin", pattern(480, 3 * MIB + 11), T0);
    tree.file("media/b.txt", pattern(481, 4000), T0);
    tree.file("media/sub/c.bin", pattern(482, 700_000), T0);
    tree.file("other/d.bin", pattern(483, 500_000), T0);
    let nginx = Nginx::start(tree.root(), Autoindex::Html);
    let mount = Mount::builder(nginx.url()).opt("block_size=256K").mount();

    let out = ston_fs([os("warm"), mount.path("media").as_os_str()]);
    assert!(out.success(), "warm failed:\n{}", out.describe());
    let warmed: u64 = tree
        .files
        .iter()
        .filter(|(rel, _)| rel.starts_with("media/"))
        .map(|(_, (d, _))| d.len() as u64)
        .sum();
    assert_eq!(
        out.stdout_text().trim(),
        format!("warmed 3 file(s), {warmed} byte(s); 0 failed"),
        "{}",
        out.describe()
    );
    // Every warmed byte came from the origin once; nothing outside the subtree was fetched.
    for rel in ["media/a.bin", "media/b.txt", "media/sub/c.bin"] {
        let got: u64 = nginx
            .requests_for(&url_path(rel))
            .iter()
            .map(|r| r.bytes)
            .sum();
        assert_eq!(
            got,
            tree.data(rel).len() as u64,
            "{rel}\n{}",
            nginx.describe()
        );
    }
    assert!(nginx.requests_for("/other/d.bin").is_empty());

    let before = nginx.requests().len();
    let stats_before = stats_json(mount.mountpoint());
    for rel in ["media/a.bin", "media/b.txt", "media/sub/c.bin"] {
        let file = File::open(mount.path(rel)).unwrap();
        fadvise(&file, libc::POSIX_FADV_DONTNEED);
        drop(file);
        assert_file_matches(&mount.path(rel), tree.data(rel), MIB);
    }
    let after = nginx.requests();
    assert_eq!(
        after.len(),
        before,
        "reading warmed files went to the origin\n{}",
        nginx.describe()
    );
    let stats_after = stats_json(mount.mountpoint());
    assert_eq!(
        num(&stats_after, "/read_misses"),
        num(&stats_before, "/read_misses"),
        "{stats_after:#}"
    );
    assert_eq!(
        num(&stats_after, "/origin_bytes"),
        num(&stats_before, "/origin_bytes")
    );
    // A file outside the warmed subtree still costs its fetch.
    assert_file_matches(&mount.path("other/d.bin"), tree.data("other/d.bin"), MIB);
    assert!(!nginx.requests_for("/other/d.bin").is_empty());
    mount.unmount();
}
