//! Reading an object's bytes: cached blocks from disk, missing ones from fetches that hand
//! them over in memory, and read-ahead for sequential readers.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::blocks::Delivered;
use super::fetch::fetch_run;
use super::object::{BlockSource, Object};
use super::Cache;
use crate::base::flight::Waiter;
use crate::base::{FsError, FsResult};

/// Read attempts: a corrupt cached block, a block that reached the cache while the read
/// waited for it, or another fetch that had to end first makes the read plan again; past
/// this many it gives up with EIO.
const READ_ATTEMPTS: usize = 6;

/// How long past its deadline a caller waits for the work it started, which stops at the
/// deadline: the work's own outcome then reaches the caller.
pub(super) const WAIT_GRACE: Duration = Duration::from_millis(200);

/// A read's source for one block, with flights already waited for.
enum Pending {
    Disk {
        file: Arc<std::fs::File>,
        crc: u32,
        verified: bool,
    },
    Flight(Waiter<Delivered>),
    Gate(Waiter<()>),
    Gone,
}

impl From<BlockSource> for Pending {
    fn from(source: BlockSource) -> Pending {
        match source {
            BlockSource::Disk {
                file,
                crc,
                verified,
                ..
            } => Pending::Disk {
                file,
                crc,
                verified,
            },
            BlockSource::Flight(flight) => Pending::Flight(flight.waiter()),
            BlockSource::Wait(gate) => Pending::Gate(gate.waiter()),
            BlockSource::Gone => Pending::Gone,
        }
    }
}

impl Cache {
    /// Starts fetching absent blocks ahead of a sequential reader, as far as the global
    /// read-ahead budget allows. Returns at once; callable from any thread.
    pub fn prefetch(self: &Arc<Self>, object: &Arc<Object>, blocks: Range<u64>) {
        let block_size = object.block_size();
        let granted = self
            .readahead
            .take((blocks.end - blocks.start) * block_size, block_size)
            / block_size;
        if granted == 0 {
            return;
        }
        let runs = object.claim_absent(blocks.start..blocks.start + granted);
        let claimed: u64 = runs.iter().map(|r| r.owned() as u64).sum();
        self.readahead.give_back((granted - claimed) * block_size);
        for mut run in runs {
            run.prefetch = true;
            self.runtime
                .spawn(fetch_run(self.clone(), object.clone(), run));
        }
    }

    /// Reads `range` of `object`, fetching only the blocks that are missing. Also says
    /// whether the cache alone answered (no block had to come from the origin).
    pub async fn read(
        self: &Arc<Self>,
        object: &Arc<Object>,
        range: Range<u64>,
        deadline: Instant,
    ) -> FsResult<(Bytes, bool)> {
        let range = range.start.min(object.size())..range.end.min(object.size());
        if range.is_empty() {
            return Ok((Bytes::new(), true));
        }
        if let Some(bytes) = object.small_bytes() {
            let within = range.start as usize..range.end as usize;
            return Ok((bytes.slice(within), object.take_small_hit()));
        }
        let blocks = range.start / object.block_size()..(range.end - 1) / object.block_size() + 1;
        for _ in 0..READ_ATTEMPTS {
            let (sources, runs) = object.plan(blocks.clone());
            let from_cache = sources
                .iter()
                .all(|s| matches!(s, BlockSource::Disk { fresh: false, .. }));
            for mut run in runs {
                run.deadline = Some(deadline);
                tokio::spawn(fetch_run(self.clone(), object.clone(), run));
            }
            // A little past the deadline: the fetch gives up at the deadline, and its own
            // error says more than "timed out".
            let gathered = self.gather(object, &range, blocks.start, sources);
            let result =
                match tokio::time::timeout_at((deadline + WAIT_GRACE).into(), gathered).await {
                    Ok(result) => result,
                    Err(_) => Err(FsError::Timeout),
                };
            match result {
                Err(e @ (FsError::Corrupt | FsError::Replan)) => {
                    tracing::trace!(path = %object.path(), "read plans again: {e}");
                    continue;
                }
                result => {
                    object.take_fresh(blocks.clone());
                    return result.map(|data| (data, from_cache));
                }
            }
        }
        Err(FsError::Corrupt)
    }

    /// Collects the read's bytes from disk and from flights, in order. Every flight is
    /// waited for from the start, so the fetch hands each block over in memory rather than
    /// through the cache file. A read within one fetched block is a slice of it, no copy.
    async fn gather(
        &self,
        object: &Object,
        range: &Range<u64>,
        first_block: u64,
        sources: Vec<BlockSource>,
    ) -> FsResult<Bytes> {
        let pending: Vec<Pending> = sources.into_iter().map(Pending::from).collect();
        let mut pieces = Vec::with_capacity(pending.len());
        for (i, source) in pending.into_iter().enumerate() {
            let block = first_block + i as u64;
            let block_range = object.block_range(block);
            let within = range.start.max(block_range.start) - block_range.start
                ..range.end.min(block_range.end) - block_range.start;
            let piece = match source {
                Pending::Disk {
                    file,
                    crc,
                    verified,
                } => Bytes::from(object.read_from_disk(block, &file, crc, verified, within)?),
                Pending::Flight(waiter) => match waiter.wait().await? {
                    Delivered::Data(bytes) if within.end as usize <= bytes.len() => {
                        bytes.slice(within.start as usize..within.end as usize)
                    }
                    Delivered::Data(_) => return Err(FsError::BadAnswer("short block".into())),
                    // It reached the cache before this read began to wait: read it there.
                    Delivered::Stored => match object.read_block(block, within) {
                        Some(Ok(bytes)) => Bytes::from(bytes),
                        _ => return Err(FsError::Replan),
                    },
                },
                Pending::Gate(waiter) => {
                    let _ = waiter.wait().await;
                    return Err(FsError::Replan);
                }
                Pending::Gone => return Err(FsError::VersionChanged),
            };
            pieces.push(piece);
        }
        if pieces.len() == 1 {
            return Ok(pieces.swap_remove(0));
        }
        Ok(Bytes::from(pieces.concat()))
    }
}
