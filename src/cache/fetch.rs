//! Block fetcher: one range request per run of missing blocks; each block goes to its waiters
//! the moment it is complete, then to the write-behind queue of its cache file.
//!
//! Only whole blocks at their checked offsets are ever handed out: a body that ends early,
//! runs long, or comes from another version fails the blocks it did not complete.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::blocks::Delivered;
use super::object::Object;
use super::object::{Run, UnpinnedRun};
use super::readahead::{Budget, BudgetHold};
use super::writer::{self, PendingWrite, WriteBehind};
use crate::base::flight::Flight;
use crate::base::{FsError, FsResult, SiteId};
use crate::config::Origin;
use crate::origin::health::backoff;
use crate::origin::{OriginClient, RangeBody, Site};

const ATTEMPTS: u32 = 2;

/// What a fetch needs from the cache that runs it. The fetcher owns this interface, so it
/// never names the cache itself.
pub trait FetchHost: Send + Sync + 'static {
    fn origin(&self) -> &OriginClient;
    fn site(&self, id: SiteId) -> &Site;
    /// The deadline of one file-system call that needs the origin.
    fn request_timeout(&self) -> Duration;
    fn readahead_budget(&self) -> Arc<Budget>;
    fn write_behind(&self) -> &WriteBehind;
    /// The origin has another version of `object`: it leaves the cache.
    fn version_changed(&self, object: &Arc<Object>);
}

/// Owns a run's flights until each is handed on (to its readers and the writer): any flight
/// still owned when the fetch ends is failed, so no reader can wait forever, and its block is
/// released for the next reader to fetch.
struct RunGuard {
    object: Arc<Object>,
    first: u64,
    /// `None` once the block is handed on (or if it was never this run's).
    flights: Vec<Option<Arc<Flight<Delivered>>>>,
    /// Read-ahead budget still held, one block per prefetched block not yet handed on.
    budget: Option<Arc<Budget>>,
    budget_blocks: u64,
    /// A fetch of a version without validators, and the blocks it holds back until its
    /// answer has been compared up to `compare_end`.
    unpinned: Option<UnpinnedRun>,
    held: Vec<(u64, Arc<Flight<Delivered>>, Vec<Bytes>)>,
    /// Origins whose answer broke off: a retry asks another one first.
    broken: Vec<Origin>,
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
                Some(BudgetHold::adopt(budget, self.object.block_size()))
            }
            _ => None,
        };
        Some((flight, hold))
    }

    /// Whether `block` lies between the run's first and last blocks.
    fn spans(&self, block: u64) -> bool {
        (self.first..self.first + self.flights.len() as u64).contains(&block)
    }

    fn first_unfinished(&self) -> Option<u64> {
        let open = self.flights.iter().position(Option::is_some)?;
        Some(self.first + open as u64)
    }

    fn is_complete(&self) -> bool {
        self.flights.iter().all(Option::is_none) && self.held.is_empty()
    }

    /// Fails every flight still owned, so no reader waits for it; its block can be fetched
    /// again by the next reader.
    fn fail_open_flights(&mut self, error: &FsError) {
        let held = std::mem::take(&mut self.held).into_iter();
        let held = held.map(|(block, flight, _)| (block, flight));
        let open = self.flights.iter_mut().enumerate();
        let open = open.filter_map(|(i, slot)| Some((self.first + i as u64, slot.take()?)));
        for (block, flight) in held.chain(open.collect::<Vec<_>>()) {
            self.object.abandon(block, &flight);
            flight.finish(Err(error.clone()));
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.fail_open_flights(&FsError::Io("fetch cancelled".into()));
        if let Some(budget) = &self.budget {
            budget.give_back(std::mem::take(&mut self.budget_blocks) * self.object.block_size());
        }
        if let Some(run) = self.unpinned.take() {
            self.object.end_unpinned_fetch(&run.gate);
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
            let block = self.position / object.block_size();
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
///
/// The run must make progress before its deadline (the reader's), which moves forward by
/// `request_timeout` whenever a block arrives: a stalled origin fails the run within one
/// deadline, over every attempt, while a long stream that keeps delivering is never cut short.
pub async fn fetch_run<H: FetchHost>(cache: Arc<H>, object: Arc<Object>, run: Run) {
    let budget_blocks = if run.prefetch { run.owned() as u64 } else { 0 };
    let mut deadline = run
        .deadline
        .unwrap_or_else(|| Instant::now() + cache.request_timeout());
    let unpinned_end = run.unpinned.as_ref().map(|u| u.request_end);
    let mut guard = RunGuard {
        object: object.clone(),
        first: run.first,
        flights: run.flights,
        budget: run.prefetch.then(|| cache.readahead_budget()),
        budget_blocks,
        unpinned: run.unpinned,
        held: Vec::new(),
        broken: Vec::new(),
    };
    let last = guard.first + guard.flights.len() as u64 - 1;
    let run_end = unpinned_end.unwrap_or(object.block_range(last).end);
    let mut result = Ok(());
    let mut attempt = 0;
    // A retry asks only for what is still missing: blocks already handed out stay.
    while let Some(first_open) = guard.first_unfinished() {
        let start = match unpinned_end {
            Some(_) => 0,
            None => object.block_range(first_open).start,
        };
        result = transfer(&cache, &mut guard, start..run_end, &mut deadline).await;
        let progressed = guard
            .first_unfinished()
            .is_none_or(|next| next > first_open);
        match &result {
            // A legal shorter answer: ask for the rest. Each round hands on a block at
            // least, so this ends.
            Ok(()) if progressed => continue,
            Ok(()) => {
                result = Err(FsError::BadAnswer(format!(
                    "an answer for bytes {start}.. delivered no whole block"
                )));
                break;
            }
            Err(FsError::VersionChanged) => break,
            Err(e) if attempt + 1 < ATTEMPTS && Instant::now() < deadline => {
                tracing::debug!(path = %object.path(), "fetch interrupted ({e}); retrying the rest");
                attempt += 1;
                tokio::time::sleep(backoff(attempt as usize)).await;
            }
            Err(_) => break,
        }
    }
    if let Err(error) = result {
        let start = object.block_range(guard.first).start;
        tracing::warn!(path = %object.path(), start, end = run_end, "fetch failed: {error}");
        if matches!(error, FsError::VersionChanged) {
            cache.version_changed(&object);
        }
        guard.fail_open_flights(&error);
    }
}

/// One request: streams the body into blocks, delivering and storing them.
async fn transfer<H: FetchHost>(
    cache: &Arc<H>,
    guard: &mut RunGuard,
    range: Range<u64>,
    deadline: &mut Instant,
) -> FsResult<()> {
    let object = guard.object.clone();
    let mut body = cache
        .origin()
        .fetch(
            cache.site(object.site()),
            object.path(),
            range.clone(),
            object.version(),
            *deadline,
            &guard.broken,
        )
        .await?;
    let result = stream_body(cache, guard, &mut body, range, deadline).await;
    if result.is_err() {
        guard.broken.push(body.origin().clone());
    }
    result
}

async fn stream_body<H: FetchHost>(
    cache: &Arc<H>,
    guard: &mut RunGuard,
    body: &mut RangeBody<'_>,
    range: Range<u64>,
    deadline: &mut Instant,
) -> FsResult<()> {
    let mut assembler = BlockAssembler::new(body.body_start);
    let end = body.body_end;
    stream_blocks(cache, guard, body, &mut assembler, end, deadline).await?;
    if assembler.position < end && !guard.is_complete() {
        body.failed();
        return Err(FsError::BadAnswer(format!(
            "body ended at byte {} of {}..{end}",
            assembler.position, range.start
        )));
    }
    if assembler.position == end {
        body.expect_end().await?;
    }
    body.succeeded();
    Ok(())
}

async fn stream_blocks<H: FetchHost>(
    cache: &Arc<H>,
    guard: &mut RunGuard,
    body: &mut RangeBody<'_>,
    assembler: &mut BlockAssembler,
    end: u64,
    deadline: &mut Instant,
) -> FsResult<()> {
    while assembler.position < end {
        let next = tokio::time::timeout_at((*deadline).into(), body.chunk()).await;
        let Some(chunk) = next.map_err(|_| FsError::Timeout)?? else {
            return Ok(());
        };
        for (block, pieces) in assembler.push(&guard.object, chunk) {
            deliver(cache, guard, block, pieces).await?;
            *deadline = Instant::now() + cache.request_timeout();
        }
        // An origin that ignored Range sends everything; stop once the run is served and
        // the blocks passing by are already cached.
        if guard.is_complete() && guard.unpinned.is_none() && body.whole_object {
            let next = assembler.position / guard.object.block_size();
            if guard.object.has_cached_block(next) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Hands a block to the readers waiting for it, then to the writer. Without waiters the block
/// goes to the writer whole (its pieces, never copied into one buffer), and the writer
/// finishes the flight.
async fn deliver<H: FetchHost>(
    cache: &Arc<H>,
    guard: &mut RunGuard,
    block: u64,
    pieces: Vec<Bytes>,
) -> FsResult<()> {
    if guard.unpinned.is_some() {
        return deliver_unpinned(cache, guard, block, pieces).await;
    }
    let owned = guard.hand_on(block);
    if owned.is_none() && guard.spans(block) {
        // A cached block that read-ahead fetched again only to make one request of two
        // (see `plan`), or one this run handed on before a retry: readers keep getting the
        // cached copy, so these bytes are not stored twice.
        return Ok(());
    }
    hand_out(cache, &guard.object, block, pieces, owned).await;
    Ok(())
}

async fn hand_out<H: FetchHost>(
    cache: &Arc<H>,
    object: &Arc<Object>,
    block: u64,
    mut pieces: Vec<Bytes>,
    owned: Option<(Arc<Flight<Delivered>>, Option<BudgetHold>)>,
) {
    let (flight, budget) = match owned {
        Some((flight, budget)) => (Some(flight), budget),
        None => (None, None),
    };
    if let Some(flight) = flight.as_ref().filter(|f| f.has_waiters()) {
        let bytes = writer::concat(&pieces);
        flight.finish(Ok(Delivered::Data(bytes.clone())));
        pieces = vec![bytes];
    }
    let write = PendingWrite {
        object: Arc::downgrade(object),
        block,
        pieces,
        flight,
        _budget: budget,
    };
    writer::queue(cache.write_behind(), object, write).await;
}

/// A block of a version without validators: compared with everything the version handed out
/// before; held back (owned) or skipped (not owned) until the answer passes `compare_end`.
async fn deliver_unpinned<H: FetchHost>(
    cache: &Arc<H>,
    guard: &mut RunGuard,
    block: u64,
    pieces: Vec<Bytes>,
) -> FsResult<()> {
    let object = guard.object.clone();
    let bytes = writer::concat(&pieces);
    if !object.agrees_unpinned(block, &bytes) {
        return Err(FsError::VersionChanged);
    }
    let compare_end = guard.unpinned.as_ref().map_or(0, |u| u.compare_end);
    let owned = guard.hand_on(block).map(|(flight, _)| flight);
    if block + 1 < compare_end {
        if let Some(flight) = owned {
            guard.held.push((block, flight, vec![bytes]));
        }
        return Ok(());
    }
    for (held_block, flight, held_pieces) in std::mem::take(&mut guard.held) {
        hand_out(
            cache,
            &object,
            held_block,
            held_pieces,
            Some((flight, None)),
        )
        .await;
    }
    hand_out(cache, &object, block, vec![bytes], owned.map(|f| (f, None))).await;
    Ok(())
}
