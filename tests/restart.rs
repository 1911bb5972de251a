//! The mount outlives its daemon: `kill -9` of the process that serves it, an in-place
//! upgrade, and a systemd-style descriptor store, with real FUSE, real origins (the
//! in-process test origin, nginx) and a real Apache; exact bytes everywhere.
//!
//! A daemonized mount runs a supervisor and a worker (`--worker`); the worker is the one
//! killed. Every process and mount is stopped and detached by its guard, by pid.

mod common;
#[path = "media/support.rs"]
mod media_support;
#[path = "service/support.rs"]
mod support;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mount::{force_unmount_all, is_mounted, tail, umount2, wait_timeout, Mount, BIN};
use common::mount_origin;
use common::nginx::{Autoindex, Nginx};
use common::origin::pattern;
use common::{assert_bytes_eq, pread_full, Rng, KIB, MIB};
use support::{ston_fs_pids_with_arg, wait_gone, workers, Apache, STEP_TIMEOUT};

/// Longest any single step may take before the test gives up.
const BOUND: Duration = Duration::from_secs(60);

fn tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    // Apache's workers run as www-data and must reach the mount point.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn errno<T>(result: &std::io::Result<T>) -> Option<i32> {
    result.as_ref().err().and_then(|e| e.raw_os_error())
}

/// Waits (bounded) until `check` holds; panics with `what` and `context()` otherwise.
#[track_caller]
fn wait_until(what: &str, mut check: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + BOUND;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {BOUND:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// A daemonized (supervised) mount
// ---------------------------------------------------------------------------

/// `BIN --cache-dir C -o OPTS,log_file=L ORIGIN MP` without `-f`: it returns once the mount
/// is live, leaving a supervisor and its worker. Dropping it unmounts and stops both.
struct Supervised {
    mountpoint: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Supervised {
    fn mount(bin: &Path, origin: &str, opts: &str) -> Supervised {
        let tmp = tempdir("ston-fs-restart-");
        let mountpoint = tmp.path().join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        let log = tmp.path().join("daemon.log");
        let mut all = format!("log_file={}", log.display());
        if !opts.is_empty() {
            all = format!("{all},{opts}");
        }
        let out = support::run_command(
            Command::new(bin)
                .arg("--cache-dir")
                .arg(tmp.path().join("cache"))
                .arg("-o")
                .arg(&all)
                .arg(origin)
                .arg(&mountpoint),
            BOUND,
        );
        let mounted = Supervised {
            mountpoint,
            log,
            _tmp: tmp,
        };
        assert!(
            out.success(),
            "daemonized mount failed:\n{}\n{}",
            out.describe(),
            mounted.log()
        );
        assert!(
            is_mounted(&mounted.mountpoint),
            "returned before the mount was live"
        );
        mounted
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    fn log(&self) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), 24000).to_string()
    }

    fn pids(&self) -> Vec<i32> {
        ston_fs_pids_with_arg(&self.mountpoint)
    }

    /// The one worker serving the mount (waits while one is being started).
    fn worker(&self) -> i32 {
        let mut found = Vec::new();
        wait_until(
            "exactly one worker",
            || {
                found = workers(&self.pids());
                found.len() == 1
            },
            || self.log(),
        );
        found[0]
    }

    fn supervisor(&self) -> i32 {
        let all = self.pids();
        let workers = workers(&all);
        let others: Vec<i32> = all.into_iter().filter(|p| !workers.contains(p)).collect();
        assert_eq!(
            others.len(),
            1,
            "one supervisor: {others:?}\n{}",
            self.log()
        );
        others[0]
    }

    fn takeovers(&self) -> usize {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("took the live mount over")
            .count()
    }

    /// `kill -9` of the worker; waits until a new worker has taken the mount over.
    /// Returns how long the killed process took to die, and the kill to the takeover line
    /// (both measured by polling every 20 ms).
    fn kill_worker(&self) -> (Duration, Duration) {
        let before = self.takeovers();
        let pid = self.worker();
        let killed = Instant::now();
        // SAFETY: kill of a pid this test found serving its own mount.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert!(
            wait_gone(pid, STEP_TIMEOUT),
            "worker {pid} survived SIGKILL"
        );
        let died = killed.elapsed();
        wait_until("a takeover", || self.takeovers() > before, || self.log());
        (died, killed.elapsed())
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let pids = self.pids();
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_mounted(&self.mountpoint) && Instant::now() < deadline {
            if umount2(&self.mountpoint, 0).is_err() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        force_unmount_all(&self.mountpoint);
        // The supervisor goes first, so that it cannot start another worker.
        let serving = workers(&pids);
        let supervisors: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|p| !serving.contains(p))
            .collect();
        for pid in supervisors.iter().chain(pids.iter()) {
            if !wait_gone(*pid, Duration::from_secs(5)) {
                // SAFETY: kill of a pid this test started (found by its mount point).
                unsafe { libc::kill(*pid, libc::SIGKILL) };
                wait_gone(*pid, Duration::from_secs(5));
            }
        }
        force_unmount_all(&self.mountpoint);
        if std::thread::panicking() {
            eprintln!("--- ston-fs log ---\n{}", self.log());
        }
    }
}

// ---------------------------------------------------------------------------
// A reader that measures its stalls
// ---------------------------------------------------------------------------

/// What a paced reader saw: the bytes, or the error, and its longest single read.
struct ReadOutcome {
    result: std::io::Result<Vec<u8>>,
    longest: Duration,
}

/// Reads `path` start to end in `chunk`-byte reads, one every `pace`.
fn paced_read(path: PathBuf, chunk: usize, pace: Duration) -> std::thread::JoinHandle<ReadOutcome> {
    std::thread::spawn(move || {
        let mut longest = Duration::ZERO;
        let result = (|| {
            let mut file = File::open(&path)?;
            let mut out = Vec::new();
            let mut buffer = vec![0u8; chunk];
            loop {
                let started = Instant::now();
                let n = file.read(&mut buffer)?;
                longest = longest.max(started.elapsed());
                if n == 0 {
                    return Ok(out);
                }
                out.extend_from_slice(&buffer[..n]);
                std::thread::sleep(pace);
            }
        })();
        ReadOutcome { result, longest }
    })
}

// ---------------------------------------------------------------------------
// 1. kill -9 while Apache serves 8 downloads
// ---------------------------------------------------------------------------

/// One rate-limited download through Apache.
struct Download {
    name: String,
    data: Bytes,
    output: PathBuf,
    child: Child,
}

#[test]
fn kill_9_five_times_during_8_apache_downloads_every_download_completes_byte_exact() {
    let Some(origin) = mount_origin() else { return };
    let sizes_mib = [64usize, 96, 128, 160, 192, 224, 256, 80];
    let files: Vec<(String, Bytes)> = sizes_mib
        .iter()
        .enumerate()
        .map(|(i, mib)| {
            (
                format!("/media/clip{i}.bin"),
                pattern(1200 + i as u64, mib * MIB + 12_345 * i),
            )
        })
        .collect();
    for (path, data) in &files {
        origin.put(path, data.clone());
    }
    let direct = origin
        .put("/media/direct.bin", pattern(1299, 64 * MIB))
        .data;
    let mount = Supervised::mount(Path::new(BIN), &origin.url(), "allow_other");
    let log = mount.log();
    assert_eq!(
        log.matches("restart protection on").count(),
        1,
        "one line says the mount outlives its process:\n{log}"
    );
    let mut apache = Apache::start_with_workers(&mount.mountpoint, 10);
    let scratch = tempdir("ston-fs-downloads-");

    // Each download takes about 20 s at its rate, so all are mid-flight at every kill.
    let mut downloads: Vec<Download> = files
        .iter()
        .enumerate()
        .map(|(i, (path, data))| {
            let output = scratch.path().join(format!("out{i}"));
            let rate = data.len() / 20;
            let child = Command::new("curl")
                .args(["-sS", "--max-time", "120", "--limit-rate"])
                .arg(rate.to_string())
                .arg("-o")
                .arg(&output)
                .args(["-w", "%{http_code} %{size_download}"])
                .arg(apache.url(path))
                .stdin(Stdio::null())
                .stdout(File::create(scratch.path().join(format!("status{i}"))).unwrap())
                .stderr(File::create(scratch.path().join(format!("err{i}"))).unwrap())
                .spawn()
                .expect("curl");
            Download {
                name: path.clone(),
                data: data.clone(),
                output,
                child,
            }
        })
        .collect();
    // A program reading the mount directly (direct I/O: every read reaches the daemon).
    let reader = paced_read(
        mount.path("media/direct.bin"),
        256 * KIB,
        Duration::from_millis(60),
    );

    // `mountpoint` must say "is a mountpoint" throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let not_a_mount = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (stop, not_a_mount, dir) =
            (stop.clone(), not_a_mount.clone(), mount.mountpoint.clone());
        std::thread::spawn(move || {
            let mut checks = 0;
            while !stop.load(Ordering::Relaxed) && checks < 2000 {
                let out = support::run_command(
                    Command::new("mountpoint").arg("-q").arg(&dir),
                    STEP_TIMEOUT,
                );
                if !out.success() {
                    not_a_mount.lock().unwrap().push(out.describe());
                }
                checks += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            checks
        })
    };

    // Kill the worker five times while the downloads run.
    let started = Instant::now();
    let mut kills = Vec::new();
    let kill_at: Vec<Duration> = (0..5)
        .map(|k| Duration::from_millis(2500 + 2500 * k))
        .collect();
    while started.elapsed() < Duration::from_secs(150) {
        let mut running = 0;
        for download in downloads.iter_mut() {
            if download.child.try_wait().unwrap().is_none() {
                running += 1;
            }
        }
        if running == 0 {
            break;
        }
        if kills.len() < kill_at.len() && started.elapsed() >= kill_at[kills.len()] {
            kills.push(mount.kill_worker());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let checks = watcher.join().unwrap();
    assert_eq!(
        kills.len(),
        5,
        "five kills during the downloads:\n{}",
        mount.log()
    );

    let mut complete = 0;
    for (i, download) in downloads.iter_mut().enumerate() {
        let status = wait_timeout(&mut download.child, BOUND).expect("curl finished");
        let said =
            fs::read_to_string(scratch.path().join(format!("status{i}"))).unwrap_or_default();
        let err = fs::read_to_string(scratch.path().join(format!("err{i}"))).unwrap_or_default();
        assert!(
            status.success(),
            "curl of {} failed: {said} {err}\n{}",
            download.name,
            apache.logs()
        );
        assert_eq!(
            said,
            format!("200 {}", download.data.len()),
            "{}\n{}",
            download.name,
            apache.logs()
        );
        let got = fs::read(&download.output).unwrap();
        assert_bytes_eq(&got, &download.data, &download.name);
        complete += 1;
    }
    let direct_read = reader.join().unwrap();
    let got = direct_read.result.expect("the direct reader saw no error");
    assert_bytes_eq(&got, &direct, "direct reader");

    let apache_logs = apache.logs();
    let error_log = apache_logs
        .split("--- apache access.log ---")
        .next()
        .unwrap_or_default();
    assert!(
        !error_log.contains("error]"),
        "Apache logged an error:\n{apache_logs}"
    );
    let failures = not_a_mount.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "`mountpoint` said the path was not a mount {} time(s) of {checks}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(mount.takeovers(), 5, "{}", mount.log());
    eprintln!(
        "RESTART FIGURE: kill -9 during 8 Apache downloads: {complete} of {} complete byte-exact \
         (5 kills); longest stall of a program reading the mount: {} ms; kill to exit: {:?} ms; \
         kill to takeover: {:?} ms",
        downloads.len(),
        direct_read.longest.as_millis(),
        kills.iter().map(|k| k.0.as_millis()).collect::<Vec<_>>(),
        kills.iter().map(|k| k.1.as_millis()).collect::<Vec<_>>()
    );
    let timeline: Vec<String> = mount
        .log()
        .lines()
        .filter(|l| {
            l.contains("supervisor") || l.contains("took the live") || l.contains("index loaded")
        })
        .map(str::to_string)
        .collect();
    eprintln!("--- restarts ---\n{}", timeline.join("\n"));
    apache.stop();
}

// ---------------------------------------------------------------------------
// 2. Upgrade in place while a download runs
// ---------------------------------------------------------------------------

/// Installs a copy of the binary at `dest` the way an installer does: a new file renamed
/// over the old one (the running process keeps the old, now deleted, file).
fn install_copy(dest: &Path) {
    let fresh = dest.with_extension("new");
    fs::copy(BIN, &fresh).unwrap();
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&fresh, dest).unwrap();
}

#[test]
fn ston_fs_restart_swaps_in_the_installed_binary_while_a_download_runs() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/big.bin", pattern(1301, 48 * MIB + 777)).data;
    let bindir = tempdir("ston-fs-bin-");
    let installed = bindir.path().join("ston-fs");
    install_copy(&installed);
    let mount = Supervised::mount(&installed, &origin.url(), "");
    let pid = mount.worker();
    let supervisor = mount.supervisor();
    let reader = paced_read(mount.path("big.bin"), 256 * KIB, Duration::from_millis(25));
    std::thread::sleep(Duration::from_millis(1500));

    install_copy(&installed);
    let old_exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        old_exe.to_string_lossy().ends_with("(deleted)"),
        "the running binary was replaced on disk: {old_exe:?}"
    );
    let out = support::run_command(
        Command::new(&installed)
            .arg("restart")
            .arg(&mount.mountpoint),
        BOUND,
    );
    assert!(out.success(), "ston-fs restart, log:\n{}", mount.log());
    out.assert_printed("incarnation 2");

    assert_eq!(mount.worker(), pid, "the upgrade keeps the pid");
    assert_eq!(mount.supervisor(), supervisor);
    let running = fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    let on_disk = fs::metadata(&installed).unwrap();
    assert_eq!(
        (running.dev(), running.ino()),
        (on_disk.dev(), on_disk.ino()),
        "the worker now runs the installed file"
    );
    let outcome = reader.join().unwrap();
    let got = outcome.result.expect("the download saw no error");
    assert_bytes_eq(&got, &data, "download across the upgrade");
    let log = mount.log();
    assert!(log.contains("upgrading in place"), "{log}");
    assert_eq!(mount.takeovers(), 1, "{log}");
    eprintln!(
        "RESTART FIGURE: ston-fs restart during a download: byte-exact; longest read {} ms",
        outcome.longest.as_millis()
    );

    // The new image can be upgraded again.
    let out = support::run_command(
        Command::new(&installed)
            .arg("restart")
            .arg(&mount.mountpoint),
        BOUND,
    );
    out.assert_printed("incarnation 3");
    assert_bytes_eq(
        &fs::read(mount.path("big.bin")).unwrap(),
        &data,
        "read after two upgrades",
    );
}

// ---------------------------------------------------------------------------
// 3. A version gone while the mount was being taken over
// ---------------------------------------------------------------------------

#[test]
fn a_file_whose_version_changed_across_a_restart_answers_eio_and_never_other_bytes() {
    let Some(origin) = mount_origin() else { return };
    let old = pattern(1401, 6 * MIB);
    let new = pattern(1402, 6 * MIB);
    origin.put("/v.bin", old.clone());
    // Direct I/O for this size, and no read-ahead: every read of the open file reaches
    // the daemon, so nothing cached in the kernel answers for it.
    let mount = Supervised::mount(
        Path::new(BIN),
        &origin.url(),
        "ttl=1,readahead_max=0,block_size=1M,direct_io_min_size=1M,zero_message_opens=false",
    );
    let file = File::open(mount.path("v.bin")).unwrap();
    let mut first = vec![0u8; 2 * MIB];
    file.read_exact_at(&mut first, 0).unwrap();
    assert_bytes_eq(&first, &old[..2 * MIB], "before the change");

    // The origin changes; the daemon learns it (a stat after the TTL), while the file that
    // is open keeps the old version.
    origin.put("/v.bin", new.clone());
    std::thread::sleep(Duration::from_millis(1300));
    let _ = fs::metadata(mount.path("v.bin")).unwrap();
    let mut second = vec![0u8; MIB];
    file.read_exact_at(&mut second, MIB as u64).unwrap();
    assert_bytes_eq(
        &second,
        &old[MIB..2 * MIB],
        "the open file keeps its version",
    );

    mount.kill_worker();
    for offset in [0, 2 * MIB as u64, 5 * MIB as u64] {
        let mut buffer = vec![0u8; MIB];
        let result = file.read_at(&mut buffer, offset);
        assert_eq!(
            errno(&result),
            Some(libc::EIO),
            "a read at {offset} of a file whose version is gone: {result:?}\n{}",
            mount.log()
        );
    }
    // A new open sees the new version.
    assert_bytes_eq(&fs::read(mount.path("v.bin")).unwrap(), &new, "a new open");
    drop(file);
    assert!(mount.log().contains("cannot be read on"), "{}", mount.log());
}

/// Which of `versions` a chunk read at `offset` is wholly of, if any.
fn version_of(
    chunk: &[u8],
    offset: usize,
    versions: &[(&'static str, &[u8])],
) -> Option<&'static str> {
    versions
        .iter()
        .find(|(_, bytes)| bytes.get(offset..offset + chunk.len()) == Some(chunk))
        .map(|(name, _)| *name)
}

/// With `zero_message_opens` the kernel keeps a file's pages across opens without telling
/// the daemon, so the pages a killed process made are still there when the next one takes
/// over. The origin changes the file while the old process does not know (it has no reason
/// to ask before it dies); after the takeover a file held open since before is read through:
/// every read is EIO or of one version, never old pages and new ones mixed, and a new open
/// gets the new version whole. A file that did not change reads on byte-exact.
#[test]
fn zero_message_opens_never_mix_pages_of_two_versions_across_a_restart() {
    let Some(origin) = mount_origin() else { return };
    let old = pattern(2201, 4 * MIB);
    let new = pattern(2202, 4 * MIB);
    let same = pattern(2203, 3 * MIB);
    origin.put("/z.bin", old.clone());
    origin.put("/same.bin", same.clone());
    let mount = Supervised::mount(
        Path::new(BIN),
        &origin.url(),
        "zero_message_opens=true,ttl=2,block_size=1M",
    );
    // Part of the file in the kernel's page cache, made by this process.
    let file = File::open(mount.path("z.bin")).unwrap();
    let mut head = vec![0u8; 512 * KIB];
    file.read_exact_at(&mut head, 0).unwrap();
    assert_bytes_eq(&head, &old[..512 * KIB], "before the change");
    assert_bytes_eq(
        &fs::read(mount.path("same.bin")).unwrap(),
        &same,
        "same.bin",
    );

    origin.put("/z.bin", new.clone());
    // Past the freshness of what the process holds: the next process must ask the origin.
    std::thread::sleep(Duration::from_millis(2300));
    mount.kill_worker();
    // The kernel asks the new process for the attributes of the file it holds open: the
    // origin's new version is found, but this inode's pages are of the old one.
    let _ = file.metadata();

    let versions: [(&'static str, &[u8]); 2] = [("old", &old), ("new", &new)];
    let mut seen: Vec<(usize, &'static str)> = Vec::new();
    for offset in (0..4 * MIB).step_by(256 * KIB) {
        match pread_full(&file, offset as u64, 256 * KIB) {
            Ok(chunk) if chunk.len() == 256 * KIB => match version_of(&chunk, offset, &versions) {
                Some(version) => seen.push((offset, version)),
                None => panic!(
                    "the read at {offset} is of neither version (mixed within one read)\n{}",
                    mount.log()
                ),
            },
            Ok(chunk) => panic!(
                "short read of {} bytes at {offset}\n{}",
                chunk.len(),
                mount.log()
            ),
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(libc::EIO),
                "a read at {offset}: {e}\n{}",
                mount.log()
            ),
        }
    }
    eprintln!("chunks read after the takeover: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].1 == w[1].1),
        "one open file read two versions: {seen:?}\n{}",
        mount.log()
    );
    drop(file);

    // A new open gets the new version, whole (a new inode: the old one keeps its version).
    let mut fresh = Vec::new();
    wait_until(
        "a new open to read the new version",
        || {
            fresh = fs::read(mount.path("z.bin")).unwrap_or_default();
            fresh.len() == new.len() && fresh[..MIB] == new[..MIB]
        },
        || mount.log(),
    );
    assert_bytes_eq(&fresh, &new, "a new open after the restart");
    assert_bytes_eq(
        &fs::read(mount.path("same.bin")).unwrap(),
        &same,
        "an unchanged file after the restart",
    );
    let log = mount.log();
    assert!(
        log.contains("pages of files carried over a restart"),
        "the takeover says what it did with the kernel's pages\n{log}"
    );
}

/// An MP4 presented header first and a clip of it are views, not the origin's bytes: a
/// process that takes the mount over must serve their open files through the same views.
#[test]
fn open_mp4_views_and_clips_read_on_across_kill_9_with_the_presented_bytes() {
    let Some(origin) = mount_origin() else { return };
    let original = media_support::Sample::BFrames.bytes().to_vec();
    origin.put("/film.mp4", original.clone());
    let (whole, is_view) = media_support::expected_whole(&original);
    assert!(is_view, "the sample has its moov at the end");
    let (clip, _) = media_support::expected_clip(&original, Some(2.0), Some(5.0)).expect("a clip");
    // Direct I/O and no read-ahead: every read reaches the daemon, before and after.
    let mount = Supervised::mount(
        Path::new(BIN),
        &origin.url(),
        "readahead_max=0,block_size=64K,direct_io_min_size=64K",
    );
    let clip_name = "film.mp4?start=2&end=5";
    let opened = [
        (
            File::open(mount.path("film.mp4")).unwrap(),
            &whole,
            "header first",
        ),
        (
            File::open(mount.path(clip_name)).unwrap(),
            &clip,
            "the clip",
        ),
    ];
    for (file, want, what) in &opened {
        let half = want.len() / 2;
        let got = pread_full(file, 0, half).unwrap();
        assert_bytes_eq(&got, &want[..half], &format!("{what}, before the kill"));
    }

    mount.kill_worker();
    for (file, want, what) in &opened {
        let half = want.len() / 2;
        let got = pread_full(file, half as u64, want.len() - half).unwrap_or_else(|e| {
            panic!("{what}: the open file after the kill: {e}\n{}", mount.log())
        });
        assert_bytes_eq(
            &got,
            &want[half..],
            &format!("{what}, read on after the kill"),
        );
    }
    // Names looked up again after the takeover present the same files.
    assert_eq!(
        fs::metadata(mount.path("film.mp4")).unwrap().len(),
        whole.len() as u64
    );
    assert_bytes_eq(
        &fs::read(mount.path(clip_name)).unwrap(),
        &clip,
        "the clip, opened again",
    );
}

// ---------------------------------------------------------------------------
// 4. systemd's protocol: a descriptor store the test holds itself
// ---------------------------------------------------------------------------

/// Stands in for systemd: a NOTIFY_SOCKET that keeps the descriptors the worker stores,
/// and starts workers with them (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID).
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
    stored: Vec<(String, OwnedFd)>,
    child: Option<Child>,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl FakeSystemd {
    fn new(dir: &Path, mountpoint: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        FakeSystemd {
            socket,
            path,
            stored: Vec::new(),
            child: None,
            mountpoint: mountpoint.to_path_buf(),
            log: dir.join("worker.log"),
        }
    }

    /// Starts `BIN -f ARGS` the way systemd does, with what the store holds.
    fn start(&mut self, args: &[&OsStr]) {
        let fds: Vec<RawFd> = self.stored.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let names: Vec<&str> = self.stored.iter().map(|(n, _)| n.as_str()).collect();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new("sh");
        // LISTEN_PID must be the pid of the process that reads it: the shell's, which exec
        // keeps.
        command
            .arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
            .arg(BIN)
            .arg("-f")
            .args(args)
            .env("NOTIFY_SOCKET", &self.path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if !fds.is_empty() {
            command
                .env("LISTEN_FDS", fds.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        // SAFETY: between fork and exec only fcntl and dup2 run, on descriptors we own.
        unsafe {
            command.pre_exec(move || {
                let mut high = Vec::new();
                for fd in &fds {
                    high.push(libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100));
                }
                for (i, fd) in high.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        self.child = Some(command.spawn().unwrap());
    }

    /// Receives notifications (keeping stored descriptors) until READY=1.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + BOUND;
        loop {
            assert!(Instant::now() < deadline, "no READY=1\n{}", self.log_text());
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the worker exited with {status}\n{}", self.log_text());
                }
            }
            let Some((text, fds)) = receive(&self.socket) else {
                continue;
            };
            for line in text.lines() {
                if line == "READY=1" {
                    return;
                }
            }
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_string();
            if text.contains("FDSTORE=1") {
                self.stored
                    .extend(fds.into_iter().map(|fd| (name.clone(), fd)));
            }
        }
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().expect("a worker");
        child.kill().unwrap();
        assert!(wait_timeout(&mut child, STEP_TIMEOUT).is_some());
    }

    fn stored(&self, name: &str) -> &OwnedFd {
        &self.stored.iter().find(|(n, _)| n == name).expect(name).1
    }

    fn log_text(&self) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), 24000).to_string()
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) && umount2(&self.mountpoint, 0).is_err() {
            force_unmount_all(&self.mountpoint);
        }
        if let Some(mut child) = self.child.take() {
            if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                let _ = wait_timeout(&mut child, Duration::from_secs(5));
            }
        }
        self.stored.clear();
        force_unmount_all(&self.mountpoint);
        if std::thread::panicking() {
            eprintln!("--- ston-fs log ---\n{}", self.log_text());
        }
    }
}

/// One datagram and the descriptors it carried (recvmsg with SCM_RIGHTS).
fn receive(socket: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    let mut data = [0u8; 4096];
    let mut control = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr pointing at live buffers; the kernel fills them.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = control.len() as _;
    // SAFETY: see above; the socket has a read timeout, so this returns.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return None;
    }
    let mut fds = Vec::new();
    // SAFETY: walks the control messages the kernel wrote.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    let fd = libc::CMSG_DATA(header)
                        .cast::<RawFd>()
                        .add(i)
                        .read_unaligned();
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Some((
        String::from_utf8_lossy(&data[..n as usize]).into_owned(),
        fds,
    ))
}

/// `(name, inode, size, mtime)` of a directory's entries, sorted.
fn listing(dir: &Path) -> Vec<(String, u64, u64, i64)> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                md.ino(),
                md.len(),
                md.mtime(),
            )
        })
        .collect();
    entries.sort();
    entries
}

/// Names read through an open directory descriptor (getdents on a dup of it).
fn names_via(dir: &File) -> std::io::Result<Vec<String>> {
    // SAFETY: dup of a descriptor we hold; fdopendir takes the duplicate over.
    let stream = unsafe {
        let fd = libc::dup(dir.as_raw_fd());
        libc::lseek(fd, 0, libc::SEEK_SET);
        libc::fdopendir(fd)
    };
    if stream.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: errno is thread-local; readdir on a live stream.
        unsafe { *libc::__errno_location() = 0 };
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let error = std::io::Error::last_os_error();
            // SAFETY: closes the stream fdopendir made.
            unsafe { libc::closedir(stream) };
            return match error.raw_os_error() {
                Some(0) | None => {
                    names.sort();
                    Ok(names)
                }
                _ => Err(error),
            };
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        let name = name.to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
}

/// `fstatat(dir, name)`.
fn stat_at(dir: &File, name: &str) -> std::io::Result<u64> {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a zeroed stat buffer and a NUL-terminated name.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, 0) };
    match rc {
        0 => Ok(st.st_ino),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[test]
fn under_a_systemd_style_store_inodes_open_files_and_directory_handles_survive_kill_9() {
    common::require_mount!();
    let tmp = tempdir("ston-fs-fdstore-");
    let root = tmp.path().join("www");
    let (a, b, pt) = (
        pattern(1501, 3 * MIB + 5),
        pattern(1502, 2 * MIB),
        pattern(1503, MIB + 3),
    );
    fs::create_dir_all(root.join("dir")).unwrap();
    fs::write(root.join("dir/a.bin"), &a).unwrap();
    fs::write(root.join("dir/b.bin"), &b).unwrap();
    fs::write(root.join("pt.bin"), &pt).unwrap();
    // Whole minutes: nginx's listing shows minutes, so listing and file agree on the time.
    for (i, rel) in ["dir/a.bin", "dir/b.bin", "pt.bin"].iter().enumerate() {
        let when = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_040 + 60 * i as u64);
        File::options()
            .write(true)
            .open(root.join(rel))
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    let nginx = Nginx::start(&root, Autoindex::Html);
    let mountpoint = tmp.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let cache = tmp.path().join("cache");
    let args_owned = [
        OsStr::new("-v").to_os_string(),
        "--cache-dir".into(),
        cache.into_os_string(),
        "-o".into(),
        // Open handles and passthrough are what this carries over: opens reach the daemon.
        "direct_io_min_size=0,ttl=1,block_size=256K,zero_message_opens=false".into(),
        nginx.url().into(),
        mountpoint.clone().into_os_string(),
    ];
    let args: Vec<&OsStr> = args_owned.iter().map(|a| a.as_os_str()).collect();
    let mut systemd = FakeSystemd::new(tmp.path(), &mountpoint);
    systemd.start(&args);
    systemd.wait_ready();
    let names: Vec<&str> = systemd.stored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["fuse", "state"], "what the worker stored");

    // pt.bin, read whole once, opens in passthrough the next time.
    assert_bytes_eq(&fs::read(mountpoint.join("pt.bin")).unwrap(), &pt, "pt.bin");
    let dir = File::open(mountpoint.join("dir")).unwrap();
    let file = File::open(mountpoint.join("dir/a.bin")).unwrap();
    let mut head = vec![0u8; MIB];
    file.read_exact_at(&mut head, 0).unwrap();
    // Its blocks are verified in the background after the first read: open until an open
    // is served in passthrough.
    let mut tries = 0;
    let passthrough = loop {
        let candidate = File::open(mountpoint.join("pt.bin")).unwrap();
        if systemd.log_text().contains("open: passthrough") {
            break candidate;
        }
        drop(candidate);
        tries += 1;
        assert!(
            tries < 200,
            "pt.bin never opened in passthrough\n{}",
            systemd.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let before = listing(&mountpoint.join("dir"));
    systemd.kill9();
    // With no daemon at all, a passthrough file still reads: the kernel reads the cache file.
    let mut all = vec![0u8; pt.len()];
    passthrough.read_exact_at(&mut all, 0).unwrap();
    assert_bytes_eq(&all, &pt, "passthrough read with no daemon");
    systemd.start(&args);
    systemd.wait_ready();
    let log = systemd.log_text();
    assert!(log.contains("took the live mount over"), "{log}");
    assert!(log.contains("passthrough_kept=1"), "{log}");

    // Same inode numbers, sizes and times.
    assert_eq!(
        listing(&mountpoint.join("dir")),
        before,
        "ls -l before and after"
    );
    let mut rest = vec![0u8; a.len() - MIB];
    file.read_exact_at(&mut rest, MIB as u64).unwrap();
    assert_bytes_eq(&rest, &a[MIB..], "a file open across the restart");
    assert_eq!(
        names_via(&dir).unwrap(),
        ["a.bin", "b.bin"],
        "an open directory handle"
    );
    assert_eq!(stat_at(&dir, "b.bin").unwrap(), before[1].1);
    // A new open of the passthrough file shares the old registration (a new one would be
    // refused by the kernel while the old handle is open).
    assert_bytes_eq(
        &fs::read(mountpoint.join("pt.bin")).unwrap(),
        &pt,
        "reopened pt.bin",
    );
    drop(passthrough);

    // Now a journal that lost everything: inodes and handles from before answer ESTALE
    // (or EIO through the page cache), paths heal, and no byte is wrong.
    let unread = File::open(mountpoint.join("dir/b.bin")).unwrap();
    systemd.kill9();
    let state = systemd.stored("state");
    // SAFETY: fstat of a descriptor we hold.
    let size = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(state.as_raw_fd(), &mut st);
        st.st_size as usize
    };
    let mut rng = Rng::new(1504);
    let garbage: Vec<u8> = (0..size - 4096).map(|_| rng.next_u64() as u8).collect();
    let state_file = File::from(state.try_clone().unwrap());
    state_file.write_all_at(&garbage, 4096).unwrap();
    systemd.start(&args);
    systemd.wait_ready();
    std::thread::sleep(Duration::from_millis(1200)); // attributes and entries time out

    let mut buffer = vec![0u8; 64 * KIB];
    let read = unread.read_at(&mut buffer, 0);
    assert!(
        matches!(errno(&read), Some(libc::ESTALE | libc::EIO)),
        "a handle the journal lost: {read:?}"
    );
    assert_eq!(
        errno(&unread.metadata()),
        Some(libc::ESTALE),
        "fstat of a lost inode"
    );
    assert_eq!(
        errno(&stat_at(&dir, "a.bin")),
        Some(libc::ESTALE),
        "lookup under a lost directory"
    );
    let healed = fs::metadata(mountpoint.join("dir/a.bin")).unwrap();
    assert_eq!(healed.len(), a.len() as u64);
    assert_bytes_eq(
        &fs::read(mountpoint.join("dir/b.bin")).unwrap(),
        &b,
        "a path after amnesia",
    );
    drop((unread, file, dir));
    let log = systemd.log_text();
    assert!(log.contains("took the live mount over"), "{log}");
}

// ---------------------------------------------------------------------------
// 5. Where it cannot work
// ---------------------------------------------------------------------------

#[test]
fn without_supervisor_or_systemd_one_line_says_so_and_the_mount_dies_with_its_process() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/f.bin", pattern(1601, 300 * KIB)).data;
    let mut mount = Mount::builder(origin.url()).mount();
    assert_bytes_eq(
        &fs::read(mount.path("f.bin")).unwrap(),
        &data,
        "plain mount",
    );
    let log = mount.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("restart protection"))
        .collect();
    assert_eq!(lines.len(), 1, "one line at mount time:\n{log}");
    assert!(
        lines[0].contains("restart protection off")
            && lines[0].contains("no supervisor and no systemd"),
        "{}",
        lines[0]
    );
    let out = support::ston_fs([OsStr::new("restart"), mount.mountpoint().as_os_str()]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("cannot be restarted in place"),
        "{}",
        out.describe()
    );
    // Today's behaviour: the mount dies with its process.
    mount.kill9();
    let dead = fs::read_dir(mount.mountpoint());
    assert_eq!(errno(&dead), Some(libc::ENOTCONN), "{:?}", dead.map(|_| ()));
}
