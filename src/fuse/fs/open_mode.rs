//! When `zero_message_opens = auto` stops sending opens to the daemon: once small files are
//! opened at a rate where the round trips are what their readers wait on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::base::ZeroMessageOpens;

/// Opens of small files within one second that switch zero-message opens on. An open is a
/// round trip of about 30 µs on the bench VM, so at this rate the daemon spends 3% of a
/// core on opens alone, and a reader of 4 KiB files waits several times longer on its
/// opens than on its bytes. Apache serving images opens thousands a second; a server of
/// big media files, a handful.
pub(super) const SWITCH_OPENS_PER_SECOND: u64 = 1000;

/// Largest file whose opens count: the size up to which the round trip outweighs what
/// passthrough and direct I/O save on the reads (see README, "Hot small files").
pub(super) const SMALL_FILE: u64 = 1 << 20;

/// Whether opens go to the daemon, and for `auto` the rate that decides it.
///
/// Must hold: once on, on for good (the kernel remembers the first ENOSYS for the life of
/// the connection).
pub(super) struct OpenMode {
    setting: ZeroMessageOpens,
    on: AtomicBool,
    started: Instant,
    /// The second (since `started`) that `count` is counting.
    second: AtomicU64,
    count: AtomicU64,
}

impl OpenMode {
    pub(super) fn new(setting: ZeroMessageOpens) -> OpenMode {
        OpenMode {
            setting,
            on: AtomicBool::new(setting == ZeroMessageOpens::On),
            started: Instant::now(),
            second: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(super) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Counts an open of a file of `size` bytes; true for the one open that switches
    /// zero-message opens on.
    pub(super) fn note_open(&self, size: u64) -> bool {
        let second = self.started.elapsed().as_secs();
        self.note_open_at(size, second)
    }

    fn note_open_at(&self, size: u64, second: u64) -> bool {
        if self.setting != ZeroMessageOpens::Auto || size > SMALL_FILE || self.is_on() {
            return false;
        }
        // Racing threads at a second's turn may lose a few counts: a rate, not a tally.
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.count.store(0, Ordering::Relaxed);
        }
        let opens = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        opens >= SWITCH_OPENS_PER_SECOND && !self.on.swap(true, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opens(mode: &OpenMode, n: u64, size: u64, second: u64) -> u64 {
        (0..n).filter(|_| mode.note_open_at(size, second)).count() as u64
    }

    #[test]
    fn auto_switches_once_at_the_rate_and_stays_on() {
        let mode = OpenMode::new(ZeroMessageOpens::Auto);
        assert!(!mode.is_on());
        assert_eq!(opens(&mode, SWITCH_OPENS_PER_SECOND - 1, 4096, 0), 0);
        assert!(!mode.is_on());
        assert_eq!(opens(&mode, 5, 4096, 0), 1, "exactly one open switches");
        assert!(mode.is_on());
        assert_eq!(opens(&mode, 5, 4096, 9), 0);
        assert!(mode.is_on(), "never off again");
    }

    #[test]
    fn a_slower_rate_or_big_files_never_switch() {
        let mode = OpenMode::new(ZeroMessageOpens::Auto);
        for second in 0..10 {
            opens(&mode, SWITCH_OPENS_PER_SECOND / 2, 4096, second);
        }
        opens(&mode, 10 * SWITCH_OPENS_PER_SECOND, SMALL_FILE + 1, 10);
        assert!(!mode.is_on());
    }

    #[test]
    fn fixed_settings_never_change() {
        let off = OpenMode::new(ZeroMessageOpens::Off);
        let on = OpenMode::new(ZeroMessageOpens::On);
        opens(&off, 10 * SWITCH_OPENS_PER_SECOND, 1, 0);
        opens(&on, 10, 1, 0);
        assert!(!off.is_on());
        assert!(on.is_on());
    }
}
