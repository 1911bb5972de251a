//! Block fetcher: one range request per run of missing blocks; each block goes to its waiters
//! the moment it is complete, then to the write-behind queue of its cache file.
//!
//! Only whole blocks at their checked offsets are ever handed out: a body that ends early,
//! runs long, or comes from another version fails the blocks it did not complete.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::cache::Cache;
use crate::error::{FsError, FsResult};
use crate::health::backoff;
use crate::object::{Delivered, Flight, Object, Run};
use crate::origin::RangeBody;
use crate::readahead::{Budget, BudgetHold};
use crate::writer::{self, PendingWrite};

const ATTEMPTS: u32 = 2;

/// Owns a run's flights until each is handed on (to its readers and the writer): any flight
/// still owned when the fetch ends is failed, so no reader can wait forever, and its block is
/// released for the next reader to fetch.
struct RunGuard {
    object: Arc<Object>,
    first: u64,
    /// `None` once the block is handed on.
    flights: Vec<Option<Arc<Flight<Delivered>>>>,
    /// Read-ahead budget still held, one block per prefetched block not yet handed on.
    budget: Option<Arc<Budget>>,
    budget_blocks: u64,
}

impl RunGuard {
    /// Takes over the block's flight, and its share of the read-ahead budget.
    fn hand_on(&mut self, block: u64) -> Option<(Arc<Flight<Delivered>>, Option<BudgetHold>)> {
        let slot = block
            .checked_sub(self.first)
            .and_then(|i| self.flights.get_mut(i as usize))?;
        let flight = slot.take()?;
        let hold = match &self.budget {
            Some(budget) if self.budget_blocks > 0 => {
                self.budget_blocks -= 1;
                Some(BudgetHold::adopt(budget, self.object.block_size))
            }
            _ => None,
        };
        Some((flight, hold))
    }

    fn first_unfinished(&self) -> Option<u64> {
        let open = self.flights.iter().position(Option::is_some)?;
        Some(self.first + open as u64)
    }

    fn is_complete(&self) -> bool {
        self.flights.iter().all(Option::is_none)
    }

    fn fail_open_flights(&mut self, error: &FsError) {
        for (i, slot) in self.flights.iter_mut().enumerate() {
            if let Some(flight) = slot.take() {
                self.object.abandon(self.first + i as u64, &flight);
                flight.finish(Err(error.clone()));
            }
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.fail_open_flights(&FsError::Io("fetch cancelled".into()));
        if let Some(budget) = &self.budget {
            budget.give_back(std::mem::take(&mut self.budget_blocks) * self.object.block_size);
        }
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

/// Fetches one run of blocks and publishes each to its flight; runs as its own task.
pub async fn fetch_run(cache: Arc<Cache>, object: Arc<Object>, run: Run) {
    let budget_blocks = if run.prefetch {
        run.flights.len() as u64
    } else {
        0
    };
    let mut guard = RunGuard {
        object: object.clone(),
        first: run.first,
        flights: run.flights.into_iter().map(Some).collect(),
        budget: run.prefetch.then(|| cache.readahead.clone()),
        budget_blocks,
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
        result = transfer(&cache, &mut guard, range).await;
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
async fn transfer(cache: &Arc<Cache>, guard: &mut RunGuard, range: Range<u64>) -> FsResult<()> {
    let object = guard.object.clone();
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
    cache: &Arc<Cache>,
    guard: &mut RunGuard,
    body: &mut RangeBody<'_>,
    assembler: &mut BlockAssembler,
    end: u64,
) -> FsResult<()> {
    while assembler.position < end {
        let Some(chunk) = body.chunk().await? else {
            return Ok(());
        };
        for (block, pieces) in assembler.push(&guard.object, chunk) {
            deliver(cache, guard, block, pieces).await;
        }
    }
    Ok(())
}

/// Hands a block to the readers waiting for it, then to the writer. Without waiters the block
/// goes to the writer whole (its pieces, never copied into one buffer), and the writer
/// finishes the flight.
async fn deliver(cache: &Arc<Cache>, guard: &mut RunGuard, block: u64, mut pieces: Vec<Bytes>) {
    let object = guard.object.clone();
    let (flight, budget) = match guard.hand_on(block) {
        Some((flight, budget)) => (Some(flight), budget),
        None => (None, None),
    };
    if let Some(flight) = flight.as_ref().filter(|f| f.has_waiters()) {
        let bytes = writer::concat(&pieces);
        flight.finish(Ok(Delivered::Data(bytes.clone())));
        pieces = vec![bytes];
    }
    let write = PendingWrite {
        object: Arc::downgrade(&object),
        block,
        pieces,
        flight,
        budget,
    };
    writer::queue(cache, &object, write).await;
}
