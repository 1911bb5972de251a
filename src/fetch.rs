//! Block fetcher: one range request per run of missing blocks; each block goes to its waiters
//! the moment it is complete, then into the block store.
//!
//! Only whole blocks at their checked offsets are ever handed out: a body that ends early,
//! runs long, or comes from another version fails the blocks it did not complete.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::cache::Cache;
use crate::error::{FsError, FsResult};
use crate::object::{Flight, Object, Run};
use crate::origin::RangeBody;

/// Blocks stored since the last `fdatasync` before they are made durable together.
const PERSIST_BATCH: usize = 16;
const ATTEMPTS: u32 = 2;

/// Owns a run's flights: any flight still open when the fetch ends is failed, so no reader
/// can wait forever, and its block is released for the next reader to fetch.
struct RunGuard {
    object: Arc<Object>,
    first: u64,
    flights: Vec<Arc<Flight<Bytes>>>,
}

impl RunGuard {
    fn flight(&self, block: u64) -> Option<&Arc<Flight<Bytes>>> {
        block
            .checked_sub(self.first)
            .and_then(|i| self.flights.get(i as usize))
    }

    fn is_complete(&self) -> bool {
        self.flights.iter().all(|f| f.is_finished())
    }

    fn fail_open_flights(&self, error: &FsError) {
        for (i, flight) in self.flights.iter().enumerate() {
            if !flight.is_finished() {
                self.object.abandon(self.first + i as u64, flight);
                flight.finish(Err(error.clone()));
            }
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.fail_open_flights(&FsError::Io("fetch cancelled".into()));
    }
}

/// Cuts a body that starts at `position` into whole blocks of the object.
struct BlockAssembler {
    position: u64,
    pending: BytesMut,
}

impl BlockAssembler {
    /// Appends a chunk and returns the blocks it completed, with their numbers.
    fn push(&mut self, object: &Object, mut chunk: Bytes) -> Vec<(u64, Bytes)> {
        let mut complete = Vec::new();
        while !chunk.is_empty() {
            let block = self.position / object.block_size;
            let block_range = object.block_range(block);
            if block_range.is_empty() {
                break; // past the end of the object
            }
            let start = self.position;
            let take = ((block_range.end - start) as usize).min(chunk.len());
            let piece = chunk.split_to(take);
            self.position += take as u64;
            if self.pending.is_empty()
                && start == block_range.start
                && self.position == block_range.end
            {
                complete.push((block, piece)); // the chunk held the whole block: no copy
                continue;
            }
            self.pending.extend_from_slice(&piece);
            if self.position == block_range.end {
                let bytes = std::mem::take(&mut self.pending).freeze();
                if bytes.len() as u64 == block_range.end - block_range.start {
                    complete.push((block, bytes));
                }
            }
        }
        complete
    }
}

/// Fetches one run of blocks and publishes each to its flight; runs as its own task.
pub async fn fetch_run(cache: Arc<Cache>, object: Arc<Object>, run: Run) {
    let guard = RunGuard {
        object: object.clone(),
        first: run.first,
        flights: run.flights,
    };
    let last = guard.first + guard.flights.len() as u64 - 1;
    let range = object.block_range(guard.first).start..object.block_range(last).end;
    let mut result = Err(FsError::Io("not attempted".into()));
    for attempt in 0..ATTEMPTS {
        result = transfer(&cache, &guard, range.clone()).await;
        match &result {
            Err(e)
                if e.is_transient()
                    && !guard.flights[0].is_finished()
                    && attempt + 1 < ATTEMPTS =>
            {
                tracing::debug!(path = %object.path, "retrying after: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => break,
        }
    }
    if let Err(error) = result {
        tracing::warn!(path = %object.path, start = range.start, end = range.end, "fetch failed: {error}");
        if matches!(error, FsError::VersionChanged) {
            cache.version_changed(&object);
        }
        guard.fail_open_flights(&error);
    }
}

/// One request: streams the body into blocks, delivering and storing them.
async fn transfer(cache: &Arc<Cache>, guard: &RunGuard, range: Range<u64>) -> FsResult<()> {
    let object = &guard.object;
    let site = cache.site(object.site);
    let mut body = cache
        .origin
        .fetch(site, &object.path, range.clone(), &object.version)
        .await?;
    // A 200 (origin ignoring Range) streams the whole object: keep all of it.
    let whole_object = body.body_start != range.start;
    let end = if whole_object {
        object.version.size
    } else {
        range.end
    };
    let mut assembler = BlockAssembler {
        position: body.body_start,
        pending: BytesMut::new(),
    };
    let mut stored = Vec::new();
    let streamed = stream_blocks(cache, guard, &mut body, &mut assembler, end, &mut stored).await;
    persist(object, stored).await;
    streamed?;
    if guard.is_complete() {
        Ok(())
    } else {
        Err(FsError::BadAnswer(format!(
            "body ended at byte {} of {}..{}",
            assembler.position, range.start, end
        )))
    }
}

async fn stream_blocks(
    cache: &Cache,
    guard: &RunGuard,
    body: &mut RangeBody,
    assembler: &mut BlockAssembler,
    end: u64,
    stored: &mut Vec<(u64, u32)>,
) -> FsResult<()> {
    while assembler.position < end {
        let Some(chunk) = body.chunk().await? else {
            return Ok(());
        };
        for (block, bytes) in assembler.push(&guard.object, chunk) {
            deliver(cache, guard, block, bytes, stored).await;
        }
    }
    Ok(())
}

async fn deliver(
    cache: &Cache,
    guard: &RunGuard,
    block: u64,
    bytes: Bytes,
    stored: &mut Vec<(u64, u32)>,
) {
    let object = &guard.object;
    let claim = guard.flight(block);
    if let Some(flight) = claim {
        flight.finish(Ok(bytes.clone()));
    }
    let stored_crc = object.store_block(&cache.index, block, &bytes, claim);
    match (stored_crc, claim) {
        (Some(crc), _) => stored.push((block, crc)),
        (None, Some(flight)) => object.abandon(block, flight),
        (None, None) => {}
    }
    if stored.len() >= PERSIST_BATCH {
        persist(object, std::mem::take(stored)).await;
    }
}

/// `fdatasync` and journal records happen off the async workers.
async fn persist(object: &Arc<Object>, blocks: Vec<(u64, u32)>) {
    if blocks.is_empty() {
        return;
    }
    let object = object.clone();
    let _ = tokio::task::spawn_blocking(move || object.persist_blocks(&blocks)).await;
}
