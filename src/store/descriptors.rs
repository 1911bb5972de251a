//! A process-wide bound on the cache files held open between reads, and the open-file limit.
//!
//! An open file keeps its cache file's descriptor so that each read is one `pread`. With no
//! bound, a thousand open files (or a thousand lookups waiting on a slow origin) would take
//! every descriptor the process has, and then origin connections and cache writes fail too.
//! At most half of the soft limit is held this way; past it a read opens its file for itself.

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Files held open now, and how many may be (until [`raise_open_file_limit`] sets it).
static HELD: AtomicUsize = AtomicUsize::new(0);
static HOLD_LIMIT: AtomicUsize = AtomicUsize::new(512);

/// A cache file kept open between reads; gives its slot back when dropped.
#[derive(Debug)]
pub struct HeldFile(Arc<File>);

impl HeldFile {
    /// Keeps `file` open if the bound allows; `None` says to open it per read instead.
    pub fn try_hold(file: &Arc<File>) -> Option<HeldFile> {
        let limit = HOLD_LIMIT.load(Ordering::Relaxed);
        let taken = HELD.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            (held < limit).then_some(held + 1)
        });
        taken.ok().map(|_| HeldFile(file.clone()))
    }

    /// Keeps `file` open whatever the bound: it is the only way left to a version whose
    /// files were removed while readers still had it open.
    pub fn hold_anyway(file: Arc<File>) -> HeldFile {
        HELD.fetch_add(1, Ordering::AcqRel);
        HeldFile(file)
    }

    pub fn file(&self) -> &Arc<File> {
        &self.0
    }
}

impl Drop for HeldFile {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Files held open now (for statistics and tests).
pub fn held_files() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Raises the soft open-file limit to the hard one (systemd starts services at 1,024), and
/// bounds held cache files to half of it: the rest stays for connections, the journal and
/// files opened per read. Returns the soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one valid rlimit; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let soft = limit.rlim_cur;
    set_hold_limit((soft / 2).clamp(16, 1 << 20) as usize);
    soft
}

/// Sets the bound directly (tests, and the start-up above).
pub fn set_hold_limit(files: usize) {
    HOLD_LIMIT.store(files, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_files_stay_within_the_bound_and_give_their_slot_back() {
        let file = Arc::new(File::open("/dev/null").unwrap());
        let before = held_files();
        set_hold_limit(before + 3);
        let held: Vec<_> = (0..10).filter_map(|_| HeldFile::try_hold(&file)).collect();
        assert_eq!(held.len(), 3, "only three slots were free");
        let forced = HeldFile::hold_anyway(file.clone());
        assert_eq!(held_files(), before + 4, "a forced hold is still counted");
        drop(held);
        drop(forced);
        assert_eq!(held_files(), before);
        assert!(HeldFile::try_hold(&file).is_some());
        set_hold_limit(512);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let soft = raise_open_file_limit();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the valid struct it is given.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(rc, 0);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(soft, limit.rlim_cur);
        set_hold_limit(512);
    }
}
