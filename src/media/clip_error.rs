//! Why an MP3 or FLV clip could not be cut: one line each, for the single log line per clip.

/// Why a clip of an MP3 or FLV file could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClipError {
    /// The file contradicts itself or is not the format its name says.
    #[error("malformed {0}")]
    Malformed(String),
    /// A size or count read from the file is above what a clip may cost.
    #[error("{what} is {value}, above the limit of {limit}")]
    TooLarge {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// The start lies at or past the end of the media.
    #[error("start {start}s is at or past the end of the media ({duration}s)")]
    StartPastEnd { start: f64, duration: f64 },
    /// The interval holds nothing to play.
    #[error("the interval holds no frames")]
    Empty,
}

impl ClipError {
    pub(crate) fn malformed(what: impl Into<String>) -> ClipError {
        ClipError::Malformed(what.into())
    }

    /// Bounds a count or size read from the file, before it sizes anything.
    pub(crate) fn check(what: &'static str, value: u64, limit: u64) -> Result<(), ClipError> {
        match value <= limit {
            true => Ok(()),
            false => Err(ClipError::TooLarge { what, value, limit }),
        }
    }

    /// True for errors about the requested interval rather than the file.
    pub fn is_empty_interval(&self) -> bool {
        matches!(self, ClipError::StartPastEnd { .. } | ClipError::Empty)
    }
}
