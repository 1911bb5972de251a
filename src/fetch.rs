//! Block fetcher: one range request per run of missing blocks; each block goes to its waiters
//! the moment it is complete, then into the block store.
//!
//! Only whole blocks at their checked offsets are ever handed out: a body that ends early,
//! runs long, or comes from another version fails the blocks it did not complete.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::cache::Cache;
use crate::error::{FsError, FsResult};
use crate::health::backoff;
use crate::object::{Delivered, Flight, Object, Run};
use crate::origin::RangeBody;

const ATTEMPTS: u32 = 2;

/// Owns a run's flights: any flight still open when the fetch ends is failed, so no reader
/// can wait forever, and its block is released for the next reader to fetch.
struct RunGuard {
    cache: Arc<Cache>,
    object: Arc<Object>,
    first: u64,
    flights: Vec<Arc<Flight<Delivered>>>,
    /// Read-ahead budget still held, in blocks: one per prefetched block not yet stored.
    budget_blocks: AtomicU64,
}

impl RunGuard {
    fn flight(&self, block: u64) -> Option<&Arc<Flight<Delivered>>> {
        block
            .checked_sub(self.first)
            .and_then(|i| self.flights.get(i as usize))
    }

    fn first_unfinished(&self) -> Option<u64> {
        let open = self.flights.iter().position(|f| !f.is_finished())?;
        Some(self.first + open as u64)
    }

    fn is_complete(&self) -> bool {
        self.flights.iter().all(|f| f.is_finished())
    }

    /// A prefetched block left memory (stored or handed over): its budget goes back.
    fn release_one_block(&self) {
        let released =
            self.budget_blocks
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    held.checked_sub(1)
                });
        if released.is_ok() {
            self.cache.readahead.give_back(self.object.block_size);
        }
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
        let held = self.budget_blocks.swap(0, Ordering::AcqRel);
        self.cache
            .readahead
            .give_back(held * self.object.block_size);
    }
}

/// Cuts a body that starts at `position` into whole blocks of the object. A block is kept as
/// the received pieces (slices of the body, no copy) until someone needs it in one piece.
struct BlockAssembler {
    position: u64,
    pending: Vec<Bytes>,
    pending_len: u64,
}

impl BlockAssembler {
    fn new(position: u64) -> BlockAssembler {
        BlockAssembler {
            position,
            pending: Vec::new(),
            pending_len: 0,
        }
    }

    /// Appends a chunk and returns the blocks it completed, with their numbers.
    fn push(&mut self, object: &Object, mut chunk: Bytes) -> Vec<(u64, Vec<Bytes>)> {
        let mut complete = Vec::new();
        while !chunk.is_empty() {
            let block = self.position / object.block_size;
            let block_range = object.block_range(block);
            if block_range.is_empty() {
                break; // past the end of the object
            }
            let start = self.position;
            let take = ((block_range.end - start) as usize).min(chunk.len());
            self.pending.push(chunk.split_to(take));
            self.pending_len += take as u64;
            self.position += take as u64;
            if self.position == block_range.end {
                let pieces = std::mem::take(&mut self.pending);
                let whole =
                    std::mem::take(&mut self.pending_len) == block_range.end - block_range.start;
                if whole {
                    complete.push((block, pieces));
                }
            }
        }
        complete
    }
}

fn concat(pieces: &[Bytes]) -> Bytes {
    match pieces {
        [one] => one.clone(),
        many => Bytes::from(many.concat()),
    }
}

/// Fetches one run of blocks and publishes each to its flight; runs as its own task.
pub async fn fetch_run(cache: Arc<Cache>, object: Arc<Object>, run: Run) {
    let budget_blocks = if run.prefetch {
        run.flights.len() as u64
    } else {
        0
    };
    let guard = RunGuard {
        cache: cache.clone(),
        object: object.clone(),
        first: run.first,
        flights: run.flights,
        budget_blocks: AtomicU64::new(budget_blocks),
    };
    let last = guard.first + guard.flights.len() as u64 - 1;
    let run_end = object.block_range(last).end;
    let mut result = Ok(());
    for attempt in 0..ATTEMPTS {
        // A retry asks only for what is still missing: blocks already handed out stay.
        let Some(first_open) = guard.first_unfinished() else {
            result = Ok(());
            break;
        };
        let range = object.block_range(first_open).start..run_end;
        result = transfer(&cache, &guard, range).await;
        match &result {
            Ok(()) | Err(FsError::VersionChanged) => break,
            Err(e) if attempt + 1 < ATTEMPTS => {
                tracing::debug!(path = %object.path, "fetch interrupted ({e}); retrying the rest");
                tokio::time::sleep(backoff(attempt as usize + 1)).await;
            }
            Err(_) => {}
        }
    }
    let range = object.block_range(guard.first).start..run_end;
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
    let end = if body.whole_object {
        object.version.size
    } else {
        range.end
    };
    let mut assembler = BlockAssembler::new(body.body_start);
    stream_blocks(cache, guard, &mut body, &mut assembler, end).await?;
    if guard.is_complete() {
        body.succeeded();
        Ok(())
    } else {
        body.failed();
        Err(FsError::BadAnswer(format!(
            "body ended at byte {} of {}..{}",
            assembler.position, range.start, end
        )))
    }
}

async fn stream_blocks(
    cache: &Cache,
    guard: &RunGuard,
    body: &mut RangeBody<'_>,
    assembler: &mut BlockAssembler,
    end: u64,
) -> FsResult<()> {
    while assembler.position < end {
        let Some(chunk) = body.chunk().await? else {
            return Ok(());
        };
        for (block, pieces) in assembler.push(&guard.object, chunk) {
            deliver(cache, guard, block, pieces);
        }
    }
    Ok(())
}

/// Hands a block to the readers waiting for it, and to the block store. With readers waiting,
/// they get it first; without, it goes straight to the cache file (written from the received
/// pieces, never copied into one buffer) and late readers read it from there.
fn deliver(cache: &Cache, guard: &RunGuard, block: u64, pieces: Vec<Bytes>) {
    let object = &guard.object;
    let Some(flight) = guard.flight(block) else {
        object.store_block(&cache.index, block, &pieces, None);
        return;
    };
    if flight.has_waiters() {
        let bytes = concat(&pieces);
        flight.finish(Ok(Delivered::Data(bytes.clone())));
        if object
            .store_block(
                &cache.index,
                block,
                std::slice::from_ref(&bytes),
                Some(flight),
            )
            .is_none()
        {
            object.abandon(block, flight);
        }
    } else if object
        .store_block(&cache.index, block, &pieces, Some(flight))
        .is_some()
    {
        flight.finish(Ok(Delivered::Stored));
    } else {
        flight.finish(Ok(Delivered::Data(concat(&pieces))));
        object.abandon(block, flight);
    }
    guard.release_one_block();
}
