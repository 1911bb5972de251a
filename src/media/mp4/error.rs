//! Error types: one line each, because the caller logs a single line per file.

/// Why a file could not be parsed or rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mp4Error {
    /// The data ends before a structure it announces.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A structure contradicts itself or the file around it.
    #[error("malformed {0}")]
    Malformed(String),
    /// A size or count is above a configured limit.
    #[error("{what} is {value}, above the limit of {limit}")]
    TooLarge {
        /// What was measured.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The configured limit.
        limit: u64,
    },
    /// Valid MP4 that this library deliberately does not rewrite.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The caller passed arguments that do not describe one file.
    #[error("bad argument: {0}")]
    BadArgument(String),
    /// A persisted [`super::Presented`] failed validation.
    #[error("invalid presented-file encoding: {0}")]
    BadEncoding(&'static str),
}

impl Mp4Error {
    pub(crate) fn malformed(msg: impl Into<String>) -> Self {
        Mp4Error::Malformed(msg.into())
    }
}

/// Why a trimmed view could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrimError {
    /// A start or end that is not a finite, non-negative number of seconds.
    #[error("invalid time {0}: expected a finite number of seconds >= 0")]
    InvalidTime(f64),
    /// `end <= start`.
    #[error("end {end}s is not after start {start}s")]
    EndNotAfterStart {
        /// Requested start, seconds.
        start: f64,
        /// Requested end, seconds.
        end: f64,
    },
    /// The start lies at or beyond the last sample of the reference track.
    #[error("start {start}s is at or past the end of the media ({duration}s)")]
    StartPastEnd {
        /// Requested start, seconds.
        start: f64,
        /// Duration of the reference track, seconds.
        duration: f64,
    },
    /// Nothing to play in the interval.
    #[error("the interval holds no samples")]
    NoSamples,
    /// The source could not be parsed or rewritten.
    #[error("cannot trim: {0}")]
    Parse(#[from] Mp4Error),
}

impl TrimError {
    /// True for errors about the requested interval rather than the file.
    pub fn is_empty_interval(&self) -> bool {
        !matches!(self, TrimError::Parse(_))
    }
}
