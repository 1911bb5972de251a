//! The `ston-fs` processes of a test: found by their command line, waited for until gone.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Processes (not zombies) whose argv[0] ends in `ston-fs` and that have `arg` among their
/// arguments.
pub fn ston_fs_pids_with_arg(arg: &Path) -> Vec<i32> {
    let wanted = arg.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_ston = args.first().is_some_and(|a0| a0.ends_with(b"ston-fs"));
        if is_ston && args.contains(&wanted) && is_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// The daemons among `pids` that serve the mount: a daemonized mount runs a supervisor,
/// and the worker it starts has `--worker` on its command line.
pub fn workers(pids: &[i32]) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"--worker"))
        })
        .collect()
}

/// Running (exists and is not a zombie).
pub fn is_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits (bounded) until `pid` is no longer running.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A memory figure of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...) in bytes.
pub fn memory_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib * 1024
}
