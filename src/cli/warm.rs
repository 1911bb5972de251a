//! `ston-fs warm PATH...`: pre-fetches files and subtrees into the cache by reading them
//! through the mount, with a progress bar on a terminal and a summary at the end.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};

/// Readers working at once: enough to overlap origin round trips without flooding it.
const PARALLEL_FILES: usize = 4;

/// What a warm-up did.
#[derive(Default)]
struct Summary {
    files: u64,
    bytes: u64,
    failures: Vec<String>,
}

pub fn run(paths: &[PathBuf]) -> ExitCode {
    // Warming anything else would only read local files and claim a success.
    for path in paths {
        if crate::service::control::mount_of(path).is_none() {
            eprintln!("ston-fs warm: {} is not on a ston-fs mount", path.display());
            return ExitCode::from(1);
        }
    }
    let mut failures = Vec::new();
    let files = collect_files(paths, &mut failures);
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let progress = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = warm_files(&files, &progress);
    progress.finish_and_clear();
    summary.failures.splice(0..0, failures);
    println!(
        "warmed {} file(s), {} byte(s); {} failed",
        summary.files,
        summary.bytes,
        summary.failures.len()
    );
    for failure in &summary.failures {
        eprintln!("ston-fs warm: {failure}");
    }
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Every regular file under the given paths (directories are walked through their listings).
/// Paths that cannot be read are added to `failures`.
fn collect_files(paths: &[PathBuf], failures: &mut Vec<String>) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    let mut pending: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = pending.pop() {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                if let Ok(children) = std::fs::read_dir(&path) {
                    pending.extend(children.flatten().map(|c| c.path()));
                }
            }
            Ok(meta) => files.push((path, meta.len())),
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    files.sort();
    files
}

fn warm_files(files: &[(PathBuf, u64)], progress: &ProgressBar) -> Summary {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let summary = parking_lot::Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_FILES {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((path, _)) = files.get(i) else { break };
                progress.set_message(path.display().to_string());
                let result = read_through(path, progress);
                let mut summary = summary.lock();
                match result {
                    Ok(bytes) => {
                        summary.files += 1;
                        summary.bytes += bytes;
                    }
                    Err(e) => summary.failures.push(format!("{}: {e}", path.display())),
                }
            });
        }
    });
    summary.into_inner()
}

/// Reads a file to the end (which caches it), then lets the page cache forget it: warming
/// must fill ston-fs's cache, not crowd out what the machine is using.
fn read_through(path: &Path, progress: &ProgressBar) -> std::io::Result<u64> {
    let mut file = File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        total += read as u64;
        progress.inc(read as u64);
    }
    // SAFETY: fadvise only advises the kernel about a descriptor we own.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(total)
}
