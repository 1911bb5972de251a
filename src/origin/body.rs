//! Reading an answer's body: chunk by chunk, under the low-speed rule, with every byte counted.
//!
//! An origin that trickles its body (one byte a second) never trips a read timeout, yet holds
//! every reader of the object. The low-speed rule, like curl's `--speed-limit`, turns that
//! into a failure: fewer than `limit × time` bytes in any window of `time` ends the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::health::{Member, Traffic};
use crate::base::stats::Stats;
use crate::base::{FsError, FsResult};

use super::failure::map_reqwest_error;

/// Bytes a second an answer must keep up over each window; `limit == 0` turns the rule off.
#[derive(Debug, Clone, Copy)]
pub struct SpeedRule {
    pub limit: u64,
    pub window: Duration,
}

/// A body being read, with the speed rule's window.
pub struct BodyReader {
    response: reqwest::Response,
    rule: SpeedRule,
    window_start: Instant,
    window_bytes: u64,
    stats: Arc<Stats>,
    /// The counters of the origin that sends this body.
    traffic: Arc<Traffic>,
}

impl BodyReader {
    pub fn new(
        response: reqwest::Response,
        rule: SpeedRule,
        stats: Arc<Stats>,
        traffic: Arc<Traffic>,
    ) -> BodyReader {
        BodyReader {
            response,
            rule,
            window_start: Instant::now(),
            window_bytes: 0,
            stats,
            traffic,
        }
    }

    pub fn response(&self) -> &reqwest::Response {
        &self.response
    }

    /// The next piece of the body, or `None` at its end.
    pub async fn chunk(&mut self) -> FsResult<Option<Bytes>> {
        loop {
            let next = if self.rule.limit == 0 {
                Ok(self.response.chunk().await)
            } else {
                let window_end = self.window_start + self.rule.window;
                // `chunk` is cancel-safe: a frame is taken only when it is ready.
                tokio::time::timeout_at(window_end.into(), self.response.chunk()).await
            };
            match next {
                Ok(Ok(chunk)) => {
                    let len = chunk.as_ref().map_or(0, |c| c.len() as u64);
                    self.stats.record_origin_bytes(len);
                    self.traffic.record_bytes(len);
                    self.window_bytes += len;
                    self.roll_window()?;
                    return Ok(chunk);
                }
                Ok(Err(e)) => return Err(map_reqwest_error(e)),
                Err(_) => self.roll_window()?,
            }
        }
    }

    /// At the end of a window: too few bytes is a failure, else a new window starts.
    fn roll_window(&mut self) -> FsResult<()> {
        let elapsed = self.window_start.elapsed();
        if elapsed < self.rule.window || self.rule.limit == 0 {
            return Ok(());
        }
        let needed = (self.rule.limit as f64 * elapsed.as_secs_f64()) as u64;
        if self.window_bytes < needed {
            return Err(FsError::TooSlow(format!(
                "{} bytes in {:.1} s, below low_speed_limit {} bytes/s",
                self.window_bytes,
                elapsed.as_secs_f64(),
                self.rule.limit
            )));
        }
        self.window_start = Instant::now();
        self.window_bytes = 0;
        Ok(())
    }

    /// Checks that the body ends here: more bytes than the answer promised is a lie, never
    /// something to cut off silently.
    pub async fn expect_end(&mut self) -> FsResult<()> {
        match self.chunk().await? {
            Some(extra) if !extra.is_empty() => Err(FsError::BadAnswer(
                "the body runs past the range it announced".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// A range answer whose headers passed the checks; its body starts at `body_start`.
pub struct RangeBody<'s> {
    pub(super) reader: BodyReader,
    pub(super) member: &'s Member,
    pub(super) policy: &'s crate::config::HealthPolicy,
    pub body_start: u64,
    /// Where the body ends: the range asked for, or the object's end for a whole answer.
    pub body_end: u64,
    /// The origin ignored Range and sends the whole object.
    pub whole_object: bool,
}

impl RangeBody<'_> {
    /// The next piece of the body, or `None` at its end. A body that breaks off counts
    /// against the origin that sent it.
    pub async fn chunk(&mut self) -> FsResult<Option<Bytes>> {
        let chunk = self.reader.chunk().await;
        if chunk.is_err() {
            self.failed();
        }
        chunk
    }

    /// Checks that nothing follows the announced end of the body.
    pub async fn expect_end(&mut self) -> FsResult<()> {
        let end = self.reader.expect_end().await;
        if end.is_err() {
            self.failed();
        }
        end
    }

    /// The origin that sent this answer.
    pub fn origin(&self) -> &crate::config::Origin {
        &self.member.origin
    }

    /// The answer turned out wrong (short, long, inconsistent): mark its origin.
    pub fn failed(&self) {
        self.member.record_failure(self.policy);
    }

    /// The whole answer arrived as asked: its origin is working.
    pub fn succeeded(&self) {
        self.member.record_success();
    }
}
