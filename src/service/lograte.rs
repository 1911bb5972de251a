//! A cap on repeated log lines: each place in the code may write a few lines a minute.
//!
//! A full disk, an origin that keeps failing, or a user who loops over a call that fails
//! would otherwise write the same warning thousands of times, and the log would push out
//! everything worth reading. The cap sits in the writer, so it holds for every line, ours and
//! the libraries', and the first line after a quiet spell says how many were dropped.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::callsite::Identifier;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Lines one call site may write per window, before the rest are counted instead.
pub const LINES_PER_WINDOW: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);

/// What one call site has written in its current window.
struct Window {
    started: Instant,
    written: u32,
    dropped: u64,
}

/// What the cap decided about one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Write { dropped_before: u64 },
    Drop,
}

/// Counts lines per call site (their number is fixed by the code, so the map is bounded).
#[derive(Default)]
pub struct Limiter {
    windows: Mutex<HashMap<Identifier, Window>>,
}

impl Limiter {
    pub fn judge(&self, site: Identifier, now: Instant) -> Verdict {
        let mut windows = self.windows.lock();
        let window = windows.entry(site).or_insert(Window {
            started: now,
            written: 0,
            dropped: 0,
        });
        let mut dropped_before = 0;
        if now.duration_since(window.started) >= WINDOW {
            dropped_before = std::mem::take(&mut window.dropped);
            window.started = now;
            window.written = 0;
        }
        if window.written >= LINES_PER_WINDOW {
            window.dropped += 1;
            return Verdict::Drop;
        }
        window.written += 1;
        Verdict::Write { dropped_before }
    }
}

/// Wraps a writer maker so that lines at INFO and above obey the cap; DEBUG and TRACE,
/// asked for on purpose, are never dropped.
pub struct RateLimited<M> {
    inner: M,
    limiter: Limiter,
}

impl<M> RateLimited<M> {
    pub fn new(inner: M) -> RateLimited<M> {
        RateLimited {
            inner,
            limiter: Limiter::default(),
        }
    }
}

/// A line that may carry, after it, the count of lines dropped before it.
pub struct CappedLine<W: Write> {
    line: Option<W>,
    dropped_before: u64,
}

impl<W: Write> Write for CappedLine<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match &mut self.line {
            Some(line) => line.write(bytes),
            None => Ok(bytes.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.line {
            Some(line) => line.flush(),
            None => Ok(()),
        }
    }
}

impl<W: Write> Drop for CappedLine<W> {
    fn drop(&mut self) {
        if let (Some(line), n @ 1..) = (&mut self.line, self.dropped_before) {
            let _ = writeln!(
                line,
                "  ({n} more lines from the same place were dropped in the last {} s)",
                WINDOW.as_secs()
            );
        }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RateLimited<M> {
    type Writer = CappedLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        CappedLine {
            line: Some(self.inner.make_writer()),
            dropped_before: 0,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        if *meta.level() > Level::INFO {
            return CappedLine {
                line: Some(self.inner.make_writer_for(meta)),
                dropped_before: 0,
            };
        }
        match self.limiter.judge(meta.callsite(), Instant::now()) {
            Verdict::Write { dropped_before } => CappedLine {
                line: Some(self.inner.make_writer_for(meta)),
                dropped_before,
            },
            Verdict::Drop => CappedLine {
                line: None,
                dropped_before: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not zero-sized: two statics must have two addresses, which is what tells sites apart.
    struct Site(#[allow(dead_code)] u8);
    impl tracing::callsite::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!("the limiter never asks")
        }
    }
    static FIRST: Site = Site(1);
    static SECOND: Site = Site(2);

    #[test]
    fn each_site_writes_a_few_lines_a_window_then_reports_what_it_dropped() {
        let limiter = Limiter::default();
        let start = Instant::now();
        let first = || Identifier(&FIRST);
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(
                limiter.judge(first(), start),
                Verdict::Write { dropped_before: 0 }
            );
        }
        for _ in 0..500 {
            assert_eq!(limiter.judge(first(), start), Verdict::Drop);
        }
        // Another site is not held back by the first.
        assert_eq!(
            limiter.judge(Identifier(&SECOND), start),
            Verdict::Write { dropped_before: 0 }
        );
        let later = start + WINDOW;
        assert_eq!(
            limiter.judge(first(), later),
            Verdict::Write {
                dropped_before: 500
            }
        );
        assert_eq!(
            limiter.judge(first(), later),
            Verdict::Write { dropped_before: 0 }
        );
    }

    #[test]
    fn a_dropped_line_writes_nothing_and_a_reported_one_says_how_many() {
        let mut sink = Vec::new();
        {
            let mut line = CappedLine {
                line: Some(&mut sink),
                dropped_before: 7,
            };
            line.write_all(b"WARN disk full\n").unwrap();
        }
        let text = String::from_utf8(sink).unwrap();
        assert!(
            text.starts_with("WARN disk full\n  (7 more lines"),
            "{text}"
        );
        let mut dropped = CappedLine::<Vec<u8>> {
            line: None,
            dropped_before: 0,
        };
        assert_eq!(dropped.write(b"anything").unwrap(), 8);
    }
}
