//! What a failed HTTP exchange means to the file system: a timeout, or an unreachable origin
//! with the whole chain of causes.

use crate::base::FsError;

/// The error a request or a body read failed with, without its URL (which may carry
/// credentials in its query).
pub(super) fn map_reqwest_error(err: reqwest::Error) -> FsError {
    let err = err.without_url();
    if err.is_timeout() {
        FsError::Timeout
    } else {
        FsError::Unreachable(error_chain(&err))
    }
}

/// An error and each of its causes, as one line.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
